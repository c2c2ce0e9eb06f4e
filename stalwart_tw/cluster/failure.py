"""
Phi accrual failure detection (Hayashibara et al., 2004).

Rather than a yes/no timeout, the detector says how surprised it would be
that a peer is still alive given how long it has been silent: phi is
-log10 of the probability that a heartbeat comes this late, under a normal
distribution fitted to the recent intervals between heartbeats. The node
maps phi to a state: alive below 5, suspected from 5 to 9, offline above 9.

The mean and variance are kept incrementally over a sliding window, so a
heartbeat costs the same however long the window; a floor on the standard
deviation keeps a very regular peer from being suspected after one late
packet.
"""

import math
from collections import deque

ALIVE = "alive"
SUSPECTED = "suspected"
OFFLINE = "offline"

SUSPECT_PHI = 5.0
OFFLINE_PHI = 9.0
# Larger than any phi the arithmetic reaches (the tail underflows first).
PHI_MAX = 100.0


def state_of(phi):
    """
    @return: L{ALIVE}, L{SUSPECTED} or L{OFFLINE} for a phi value.
    """
    if phi < SUSPECT_PHI:
        return ALIVE
    if phi <= OFFLINE_PHI:
        return SUSPECTED
    return OFFLINE


class PhiAccrual:
    """
    The detector of one peer. Times are seconds from one clock.

    @param expected_interval: the heartbeat interval to assume before any
        has been measured (the first heartbeat seeds the window with it).
    @param window: how many intervals the estimate is drawn from.
    @param min_std: the least standard deviation assumed, in seconds.
    """

    def __init__(self, expected_interval, window=100, min_std=0.5):
        if expected_interval <= 0 or window < 2 or min_std <= 0:
            raise ValueError("the interval, window and minimum deviation must be positive")
        self._expected = float(expected_interval)
        self._intervals = deque()
        self._window = window
        self._min_std = float(min_std)
        self._sum = 0.0
        self._squares = 0.0
        self.last_heartbeat = None

    def heartbeat(self, now):
        """
        A sign of life arrived at C{now}.
        """
        if self.last_heartbeat is None:
            # A plausible history, so the first silence is judged sensibly:
            # the expected interval, give or take a quarter.
            for interval in (self._expected * 0.75, self._expected * 1.25):
                self._add(interval)
        elif now > self.last_heartbeat:
            self._add(now - self.last_heartbeat)
        else:
            # Two signs at once (or a clock step back): nothing to learn.
            return
        self.last_heartbeat = now

    def _add(self, interval):
        self._intervals.append(interval)
        self._sum += interval
        self._squares += interval * interval
        if len(self._intervals) > self._window:
            old = self._intervals.popleft()
            self._sum -= old
            self._squares -= old * old

    def mean(self):
        return self._sum / len(self._intervals) if self._intervals else self._expected

    def std(self):
        count = len(self._intervals)
        if count < 2:
            return self._min_std
        mean = self._sum / count
        variance = max(self._squares / count - mean * mean, 0.0)
        return max(math.sqrt(variance), self._min_std)

    def phi(self, now):
        """
        @return: phi at C{now}: 0 before the first heartbeat and right
            after one, growing with the silence.
        """
        if self.last_heartbeat is None:
            return 0.0
        elapsed = max(now - self.last_heartbeat, 0.0)
        y = (elapsed - self.mean()) / self.std()
        # The logistic approximation of the normal tail (error under 1e-4),
        # computed on the side that does not cancel.
        exponent = -y * (1.5976 + 0.070566 * y * y)
        if exponent > 700:
            return 0.0
        if exponent < -700:
            return PHI_MAX
        e = math.exp(exponent)
        if elapsed > self.mean():
            probability_later = e / (1.0 + e)
        else:
            probability_later = 1.0 - 1.0 / (1.0 + e)
        if probability_later <= 0.0:
            return PHI_MAX
        return min(-math.log10(probability_later), PHI_MAX)

    def state(self, now):
        return state_of(self.phi(now))
