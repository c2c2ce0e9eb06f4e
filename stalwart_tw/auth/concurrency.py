"""
Per-account limits on work in progress (maxConcurrentRequests,
maxConcurrentUpload): a slot is taken when a request starts and given back
when it ends, however it ends.
"""

from contextlib import contextmanager


class LimitReached(Exception):
    """
    The account already has as many requests in progress as allowed.
    """


class ConcurrencyLimit:
    """
    At most C{limit} operations in progress per key (an account id).
    Used on the reactor thread only.
    """

    def __init__(self, limit):
        self.limit = limit
        self._in_progress = {}

    def in_progress(self, key):
        return self._in_progress.get(key, 0)

    @contextmanager
    def slot(self, key):
        """
        Hold one slot of C{key} for the duration of a block.

        @raise LimitReached: every slot of C{key} is taken.
        """
        count = self._in_progress.get(key, 0)
        if count >= self.limit:
            raise LimitReached(key)
        self._in_progress[key] = count + 1
        try:
            yield
        finally:
            remaining = self._in_progress[key] - 1
            if remaining:
                self._in_progress[key] = remaining
            else:
                del self._in_progress[key]
