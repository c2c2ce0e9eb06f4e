"""
Rate limits (rate-limit-auth, rate-limit-anonymous, rate-limit-authenticated)
and the client address they are kept by.

A L{RateLimit} counts events per key in fixed windows of the setting's
length: at most C{count} events a window, and the caller learns how long to
wait once a key has used them up. Windows are cheap to keep (a start and a
count per key) and forgotten once over; the table is bounded, so a flood of
addresses cannot grow it without end. Time comes from an injected clock.

The client address is the TCP peer's; with C{use-forwarded-header} it is
the right-most address of the last C{Forwarded: for=} header, or without
one of the last C{X-Forwarded-For}: the one the proxy right in front of
the server added, which the operator trusts by turning the setting on.
Addresses further left were written by whoever sent the request and prove
nothing. A port is dropped; a value that is no IP address counts as none
(the peer's address is used).
"""

import ipaddress
import itertools
import math
import re

from stalwart_tw.logs import LogThrottle

# Keys kept at most; past that, windows that are over go first, then the
# oldest.
MAX_KEYS = 100_000

_FORWARDED_FOR = re.compile(r'for="?(\[[^\]]*\](?::\d+)?|[^";,\s]+)', re.IGNORECASE)


class RateLimit:
    """
    At most C{rate.count} events per key every C{rate.seconds}.

    @param rate: a L{stalwart_tw.setting_kinds.Rate}.
    @param clock: an IReactorTime.
    """

    def __init__(self, rate, clock, max_keys=MAX_KEYS):
        self.rate = rate
        self._clock = clock
        self._max_keys = max_keys
        # key -> [window start, events in it], oldest first.
        self._windows = {}

    def retry_after(self, key):
        """
        @return: seconds (a whole number, at least 1) to wait before the
            next event of C{key} is allowed, or C{None} when it is allowed
            now. Counts nothing.
        """
        window = self._window(key)
        if window is None or window[1] < self.rate.count:
            return None
        return max(1, math.ceil(window[0] + self.rate.seconds - self._clock.seconds()))

    def hit(self, key):
        """
        Count one event of C{key}.
        """
        window = self._window(key)
        if window is None:
            if len(self._windows) >= self._max_keys:
                self._make_room()
            self._windows[key] = [self._clock.seconds(), 1]
        else:
            window[1] += 1

    def take(self, key):
        """
        Count one event of C{key} if it is allowed.

        @return: C{None} when it was, else the seconds to wait (and nothing
            was counted).
        """
        wait = self.retry_after(key)
        if wait is None:
            self.hit(key)
        return wait

    def _window(self, key):
        window = self._windows.get(key)
        if window is not None and self._clock.seconds() - window[0] >= self.rate.seconds:
            del self._windows[key]
            return None
        return window

    def _make_room(self):
        # Once per tenth of the table, not per new key: windows that are
        # over go, then, if still full, the oldest tenth (keys are kept in
        # the order their windows opened).
        now = self._clock.seconds()
        self._windows = {
            key: window for key, window in self._windows.items()
            if now - window[0] < self.rate.seconds
        }
        if len(self._windows) >= self._max_keys:
            drop = max(1, self._max_keys // 10)
            for key in list(itertools.islice(self._windows, drop)):
                del self._windows[key]


def client_address(request, use_forwarded_header):
    """
    @param request: a twisted.web request.
    @return: the client's address as text, by the rule of this module.
    """
    if use_forwarded_header:
        forwarded = _right_most_forwarded(request)
        if forwarded:
            return forwarded
    peer = request.getClientAddress()
    return getattr(peer, "host", None) or "unknown"


def _right_most_forwarded(request):
    # The standard header first: a proxy that writes it may pass a
    # client's own X-Forwarded-For through untouched.
    headers = request.requestHeaders
    values = headers.getRawHeaders(b"Forwarded")
    if values:
        found = _FORWARDED_FOR.findall(values[-1].decode("latin-1"))
        return _ip(found[-1]) if found else None
    values = headers.getRawHeaders(b"X-Forwarded-For")
    if values:
        return _ip(values[-1].decode("latin-1").split(",")[-1])
    return None


def _ip(text):
    # An address, its port and brackets dropped; anything else is None (the
    # peer's address counts then), so no invented text becomes a new key.
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


class FailedLogins:
    """
    The throttle and the log of failed logins, for the HTTP routes and the
    admin shell alike: failures count per client address and per login
    name (so a botnet guessing one account is throttled too), successes
    not at all; a login over either limit is refused before any password
    check. One log line per address per window says who failed, with how
    many more failures it had since the last line; never the password.

    @param rate: rate-limit-auth.
    @param clock: an IReactorTime.
    @param log: the L{Logger} the lines go to.
    @param where: what is logged into (C{"JMAP"}, C{"admin shell"}).
    """

    def __init__(self, rate, clock, log, where, max_keys=MAX_KEYS):
        self._by_address = RateLimit(rate, clock, max_keys)
        self._by_login = RateLimit(rate, clock, max_keys)
        self._lines = LogThrottle(clock, rate.seconds)
        self._log = log
        self._where = where

    def retry_after(self, address, login):
        """
        @return: the seconds to wait when C{address} or C{login} has used up
            its failures, else C{None}.
        """
        waits = [
            wait for wait in (
                self._by_address.retry_after(address),
                self._by_login.retry_after(_login_key(login)),
            ) if wait is not None
        ]
        return max(waits) if waits else None

    def busy(self, address):
        """
        Count a login refused unchecked because every password check was
        taken: against its address (not its login name), so an address
        that keeps knocking while the checks are full is throttled too.
        """
        self._by_address.hit(address)

    def failed(self, address, login, shown=None):
        """
        Count a failed login (a wrong password, an unknown login).

        @param shown: how the log line names the client (its port too,
            say); C{address} by default.
        """
        self._by_address.hit(address)
        self._by_login.hit(_login_key(login))
        told = self._lines.admit(address)
        if told is None:
            return
        more = told - 1
        self._log.warn(
            "{where}: failed login for {login!r} from {address}{more}",
            where=self._where, login=str(login)[:100],
            address=address if shown is None else shown,
            more=f" (and {more} more from there since the last line)" if more else "",
        )


def _login_key(login):
    # Logins are compared without case, as the directory does.
    return str(login).lower()
