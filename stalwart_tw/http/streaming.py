"""
Sending a file as a response body a chunk at a time.

Each chunk is read on a thread, never on the reactor, and the next one only
once the transport wants more (a push producer that the transport pauses
and resumes), so a download costs one chunk of memory however large the
blob and however slow the client.
"""

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from stalwart_tw.logs import Logger
from stalwart_tw.store.blobs import STREAM_CHUNK


@implementer(IPushProducer)
class FileStreamer:
    """
    Writes an open binary file to a request, then closes the file.

    @param read_in_thread: C{read_in_thread(function, *args)} runs a
        function off the reactor and returns a Deferred of its result.
    @param size: the bytes to send, when known: the stream ends as soon as
        they are written, without one more read to find the end.
    @ivar done: fires with C{True} once the whole file was written, or
        C{False} after a read failed (logged, the connection cut). A client
        that leaves stops the stream; the route's caller then cancels
        C{done} (Klein does), which fires it with C{False}.
    """

    log = Logger()

    def __init__(self, blob_file, request, read_in_thread, size=None, chunk_size=STREAM_CHUNK):
        self._file = blob_file
        self._request = request
        self._read_in_thread = read_in_thread
        self._remaining = size
        self._chunk_size = chunk_size
        self._paused = False
        self._reading = False
        self._ended = False
        self.done = Deferred(self._cancelled)

    def start(self):
        """
        @return: L{done}.
        """
        self._request.registerProducer(self, True)
        if self._remaining == 0:
            self._end(True)
        else:
            self._read_next()
        return self.done

    def _read_next(self):
        if self._paused or self._reading or self._ended:
            return
        self._reading = True
        reading = self._read_in_thread(self._file.read, self._chunk_size)
        reading.addCallbacks(self._read, self._read_failed)

    def _read(self, chunk):
        self._reading = False
        if self._ended:
            self._file.close()
            return
        if not chunk:
            self._end(True)
            return
        if self._remaining is not None:
            self._remaining -= len(chunk)
        # May pause us at once, when the transport's buffer is full.
        self._request.write(chunk)
        if self._remaining is not None and self._remaining <= 0:
            self._end(True)
        else:
            self._read_next()

    def _read_failed(self, failure):
        self._reading = False
        self.log.failure("reading a blob for a download failed", failure)
        if self._ended:
            self._file.close()
            return
        # The length was announced: only a cut connection tells the client.
        self._end(False)
        self._request.loseConnection()

    def _end(self, complete):
        self._stop()
        self._request.unregisterProducer()
        self.done.callback(complete)

    def _stop(self):
        self._ended = True
        # A read in progress closes the file when it returns.
        if not self._reading:
            self._file.close()

    def _cancelled(self, done):
        if not self._ended:
            self._stop()
        done.callback(False)

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        self._read_next()

    def stopProducing(self):
        # The connection is going; its request's finish is not ours to call.
        if not self._ended:
            self._stop()
