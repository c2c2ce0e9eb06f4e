"""
Tests of FileStreamer: a file sent a chunk at a time, as the transport
asks for it.
"""

import io

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from stalwart_tw.http.streaming import FileStreamer


class FakeRequest:
    def __init__(self):
        self.written = []
        self.producer = None
        self.cut = False

    def registerProducer(self, producer, streaming):
        assert streaming
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        self.written.append(data)

    def loseConnection(self):
        self.cut = True


class PendingReads:
    """Reads run when the test says, as a thread pool would finish them."""

    def __init__(self):
        self.pending = []

    def __call__(self, function, *args):
        reading = defer.Deferred()
        self.pending.append((reading, function, args))
        return reading

    def finish_one(self):
        reading, function, args = self.pending.pop(0)
        try:
            result = function(*args)
        except Exception as error:
            reading.errback(error)
        else:
            reading.callback(result)


class FileStreamerTests(TestCase):
    def setUp(self):
        self.file = io.BytesIO(b"abcdefghij")
        self.request = FakeRequest()
        self.reads = PendingReads()
        self.streamer = FileStreamer(self.file, self.request, self.reads, chunk_size=4)

    def test_whole_file_in_chunks(self):
        """Chunks go out one read at a time; the end fires done with True and closes the file."""
        done = self.streamer.start()
        while self.reads.pending:
            self.assertEqual(len(self.reads.pending), 1)
            self.reads.finish_one()
        self.assertEqual(self.request.written, [b"abcd", b"efgh", b"ij"])
        self.assertTrue(self.successResultOf(done))
        self.assertTrue(self.file.closed)
        self.assertIsNone(self.request.producer)

    def test_paused_reads_nothing(self):
        """While the transport is full, no chunk is read; resuming reads on."""
        done = self.streamer.start()
        self.streamer.pauseProducing()
        self.reads.finish_one()
        self.assertEqual((self.request.written, self.reads.pending), ([b"abcd"], []))
        self.streamer.resumeProducing()
        while self.reads.pending:
            self.reads.finish_one()
        self.assertEqual(b"".join(self.request.written), b"abcdefghij")
        self.assertTrue(self.successResultOf(done))

    def test_client_leaves_mid_read(self):
        """
        The client leaving stops the stream (the read in progress closes
        the file); the route's caller, told of it, cancels done.
        """
        done = self.streamer.start()
        self.streamer.stopProducing()
        self.assertNoResult(done)
        self.assertFalse(self.file.closed)
        self.reads.finish_one()
        self.assertEqual(self.request.written, [])
        self.assertTrue(self.file.closed)
        done.cancel()
        self.assertFalse(self.successResultOf(done))

    def test_known_size_ends_without_another_read(self):
        """With the size given, the last byte written ends the stream."""
        streamer = FileStreamer(self.file, self.request, self.reads, size=8, chunk_size=4)
        done = streamer.start()
        self.reads.finish_one()
        self.reads.finish_one()
        self.assertEqual(self.reads.pending, [])
        self.assertTrue(self.successResultOf(done))
        self.assertTrue(self.file.closed)

    def test_cancel_stops(self):
        """Cancelling done (the route's caller left) stops the stream too."""
        done = self.streamer.start()
        self.reads.finish_one()
        done.cancel()
        self.assertFalse(self.successResultOf(done))
        self.reads.finish_one()
        self.assertEqual(self.request.written, [b"abcd"])
        self.assertTrue(self.file.closed)

    def test_read_failure_cuts_the_connection(self):
        """A failed read is logged and the connection cut: the client sees a short body."""
        self.file.close()
        done = self.streamer.start()
        self.reads.finish_one()
        self.assertFalse(self.successResultOf(done))
        self.assertTrue(self.request.cut)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
