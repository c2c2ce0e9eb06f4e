"""
Tests for per-account concurrency limits.
"""

from twisted.trial.unittest import TestCase

from stalwart_tw.auth.concurrency import ConcurrencyLimit, LimitReached


class ConcurrencyLimitTests(TestCase):
    """
    Slots are per key and always given back.
    """

    def test_limit_and_release(self):
        """The limit holds per key, and a slot returns when its block ends."""
        limit = ConcurrencyLimit(2)
        with limit.slot("a"), limit.slot("a"):
            self.assertRaises(LimitReached, limit.slot("a").__enter__)
            with limit.slot("b"):
                self.assertEqual(limit.in_progress("b"), 1)
        self.assertEqual(limit.in_progress("a"), 0)

    def test_released_on_error(self):
        """A block that raises still gives its slot back."""
        limit = ConcurrencyLimit(1)
        with self.assertRaises(ValueError):
            with limit.slot("a"):
                raise ValueError()
        self.assertEqual(limit.in_progress("a"), 0)
