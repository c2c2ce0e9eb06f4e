"""
The connection-level defences of the JMAP site: what a client that never
finishes its request, opens connections without end, or announces a body
larger than the server takes meets before any route runs.

 - A request's headers must arrive within C{http-header-timeout} seconds
   of the connection opening (or of the previous response ending): the
   idle timeout alone is reset by every byte, so a client that sends one
   header line every few seconds (slowloris) would hold the connection
   for ever. Past the deadline the client gets a 408 and the connection
   closes.
 - At most C{max-connections} connections are open at once, and at most
   C{max-connections-per-address} from one address (not counted with
   C{use-forwarded-header}: then every client shares the proxy's); one more is answered
   with a 503 and closed at once. The total defaults to what the process's
   file-descriptor limit leaves after a reserve for the database, blob
   files and the cluster, so the server refuses politely instead of
   running into EMFILE (where every refused accept would be logged).
 - A client that closes its sending side after its requests (a
   half-close) still gets every answer; then the connection closes.
 - A request with a body and credentials not verified moments ago has
   them checked (and rate-limited) before any of its body is read, so a
   bogus login never gets a body spooled to disk; a failed one is answered
   at once, the body unread.
 - A body sent without credentials is refused at its headers (its answer
   is a 401 whatever it holds). C{100 Continue} goes out only once a body's
   size and credentials have passed.
 - A body announced (Content-Length) or found (chunked) larger than the
   site's largest limit is refused as soon as that is known: no
   C{100 Continue}, nothing more of it read, the route's C{limit} problem
   document, then the connection closes.
"""

import resource
from contextlib import suppress

import orjson
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from zope.interface import implementer

# Descriptors kept back from the connection cap: the database and its WAL,
# blob files being read or written, the cluster's sockets, logs.
DESCRIPTOR_RESERVE = 128


def default_max_connections():
    """
    @return: the connection cap the file-descriptor limit allows, after
        raising the soft limit to the hard one where the system lets us.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        # Where the system refuses, the soft limit is what we have.
        with suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    if soft == resource.RLIM_INFINITY:
        soft = 65536
    return max(16, soft - DESCRIPTOR_RESERVE)


def _raw_problem(status, reason, detail, headers=()):
    body = orjson.dumps(
        {"type": "about:blank", "status": status, "title": reason, "detail": detail}
    )
    extra = b"".join(b"%s: %s\r\n" % (name, value) for name, value in headers)
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: application/problem+json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n%s\r\n"
        % (status, reason.encode("ascii"), len(body), extra)
    ) + body


@implementer(IHalfCloseableProtocol)
class JmapChannel(HTTPChannel):
    """
    An HTTP/1.1 connection of the JMAP site (C{site} is a
    L{ConnectionLimits}-carrying site, see L{make_site}).
    """

    # The client will send nothing more.
    _read_closed = False

    # The pending header deadline, or None while a request is handled.
    _header_deadline = None
    # The request whose body was refused before it was all read.
    _refused = None
    # Whether this connection was counted against the caps.
    _counted = False

    def connectionMade(self):
        super().connectionMade()
        limits = self.site.connection_limits
        # Behind a proxy every client comes from its address: the cap per
        # address would be one budget for everyone.
        address = None if limits.behind_proxy else self._address()
        refusal = limits.admit(address)
        if refusal is not None:
            self.transport.write(_raw_problem(503, "Service Unavailable", refusal))
            self.transport.loseConnection()
            return
        self._counted = True
        self._arm_header_deadline()

    def connectionLost(self, reason):
        if self._counted:
            self._counted = False
            limits = self.site.connection_limits
            limits.release(None if limits.behind_proxy else self._address())
        self._disarm_header_deadline()
        super().connectionLost(reason)

    def _address(self):
        peer = self.transport.getPeer()
        return getattr(peer, "host", None) or str(peer)

    # The header deadline.

    def _arm_header_deadline(self):
        self._disarm_header_deadline()
        timeout = self.site.connection_limits.header_timeout
        if timeout:
            self._header_deadline = self.callLater(timeout, self._headers_too_slow)

    def _disarm_header_deadline(self):
        if self._header_deadline is not None and self._header_deadline.active():
            self._header_deadline.cancel()
        self._header_deadline = None

    def _headers_too_slow(self):
        self._header_deadline = None
        if self._handlingRequest:
            # A pipelined request is being answered: it is not late.
            return
        if self.requests:
            # A request began and its headers never finished.
            self.transport.write(_raw_problem(
                408, "Request Timeout", "The request's headers did not arrive in time."
            ))
        # An idle kept-alive connection just closes: a 408 could be read as
        # the answer to a request the client sends at that moment.
        self.transport.loseConnection()

    def allHeadersReceived(self):
        self._disarm_header_deadline()
        self._continue_wanted = False
        super().allHeadersReceived()
        request = self.requests[-1]
        has_body = self.length != 0
        if getattr(request, "body_too_large", False) or (
            has_body and getattr(request, "body_discarded", False)
        ):
            # Too large, or sent without credentials (a 401 whatever it
            # holds): answered now, nothing of the body read.
            self.refuse_body(request)
            return
        if not (has_body and self._check_login_first(request)):
            self._continue_if_wanted()

    def _continue_if_wanted(self):
        if self._continue_wanted:
            self._continue_wanted = False
            super()._send100Continue()

    def _check_login_first(self, request):
        # A body follows: nothing of it is read (nor spooled to disk)
        # until its credentials are known good.
        check = getattr(self.site, "check_login", None)
        checking = None if check is None else check(request)
        if checking is None:
            return False
        self.paused = True
        self.transport.pauseProducing()
        checking.addBoth(self._login_checked, request)
        return True

    def _login_checked(self, outcome, request):
        if request not in self.requests or getattr(request, "channel", None) is not self:
            # The client left while its login was checked.
            return
        if isinstance(outcome, Failure) or outcome is None:
            # A failed login or a limit: answered now, the body unread.
            self.refuse_body(request)
        else:
            # Only now may the client send the body it asked leave for.
            self._continue_if_wanted()
        self.paused = False
        transport = self.transport
        if transport is not None and transport.connected and not transport.disconnecting:
            if not self._waitingForTransport:
                # Else the client is not reading its answers: Twisted's own
                # back-pressure resumes reading once it does.
                transport.resumeProducing()
            if not self._busyReceiving:
                self.dataReceived(b"")

    # Whether the client asked to be told to send its body (Expect:
    # 100-continue): told once its size and credentials pass.
    _continue_wanted = False

    def _send100Continue(self):
        self._continue_wanted = True

    def refuse_body(self, request):
        """
        Stop reading the body of C{request} (the latest one): it is handled
        now, with what it has, and the connection closes after its answer.
        """
        if self._refused is request:
            return
        self._refused = request
        self.persistent = False
        self.allContentReceived()

    def allContentReceived(self):
        # Once a body is refused, the end of the request may still be
        # reported (by the decoder call that refused it, or the header
        # parser seeing no length left): it is handled already, and the
        # connection takes no other.
        if self._refused is not None and not hasattr(self, "_command"):
            return
        super().allContentReceived()

    def _respondToBadRequestAndDisconnect(self):
        if self._refused is not None:
            # The request was answered (or is being) already; what the
            # client sends after it is not read.
            self.loseConnection()
            return
        # Broken framing (two Content-Lengths, a negative one, both it and
        # Transfer-Encoding, a bad chunk, a header Twisted refuses): Twisted
        # answers an empty 400; a web client gets a document it can read.
        origin = method = None
        if self.requests:
            last = self.requests[-1]
            origin, method = last.requestHeaders.getRawHeaders(b"Origin", [None])[0], last.method
        cors = self.site.cors.headers(origin, method)
        self.transport.write(_raw_problem(
            400, "Bad Request", "The request is not well-formed HTTP/1.1.", cors
        ))
        self.loseConnection()

    def requestDone(self, request):
        super().requestDone(request)
        if self._read_closed and not self._handlingRequest:
            # Every request the client sent before closing is answered.
            self.transport.loseConnection()
        elif (
            self.persistent and not self._handlingRequest
            and self.transport is not None and self.transport.connected
        ):
            # Waiting for the next request (a pipelined one already being
            # handled has its headers).
            self._arm_header_deadline()

    # IHalfCloseableProtocol

    def readConnectionLost(self):
        self._read_closed = True
        self._disarm_header_deadline()
        if not self._handlingRequest:
            # Nothing is being answered; a request cut short never will be.
            self.transport.loseConnection()

    def writeConnectionLost(self):
        # No answer can reach the client any more.
        self.transport.loseConnection()


class ConnectionLimits:
    """
    The open connections of a site, counted in total and per address.

    @param total: the most open at once.
    @param per_address: the most open at once from one address.
    @param header_timeout: seconds a request's headers may take (0: no
        deadline).
    """

    def __init__(self, total, per_address, header_timeout, behind_proxy=False):
        self.total = total
        self.per_address = per_address
        self.header_timeout = header_timeout
        # With use-forwarded-header only the total counts.
        self.behind_proxy = behind_proxy
        self.open = 0
        # address -> open connections from it
        self.by_address = {}

    def admit(self, address):
        """
        Count a new connection, if it may stay.

        @return: C{None} when admitted, else why not.
        """
        if self.open >= self.total:
            return "The server has as many connections open as it takes; try again shortly."
        if address is not None and self.by_address.get(address, 0) >= self.per_address:
            return "Too many connections from this address are open."
        self.open += 1
        if address is not None:
            self.by_address[address] = self.by_address.get(address, 0) + 1
        return None

    def release(self, address):
        """
        A counted connection closed.
        """
        self.open -= 1
        if address is None:
            return
        remaining = self.by_address.get(address, 1) - 1
        if remaining:
            self.by_address[address] = remaining
        else:
            self.by_address.pop(address, None)
