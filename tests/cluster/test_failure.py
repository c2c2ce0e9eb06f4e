"""
Tests of the phi accrual failure detector.
"""

import random

from twisted.trial.unittest import TestCase

from stalwart_tw.cluster.failure import (
    ALIVE,
    OFFLINE,
    SUSPECTED,
    PhiAccrual,
    state_of,
)


def beat(detector, times):
    for now in times:
        detector.heartbeat(now)


class PhiAccrualTests(TestCase):
    def test_no_heartbeat_yet(self):
        """Before any heartbeat there is nothing to be surprised by."""
        self.assertEqual(PhiAccrual(0.5).phi(1000.0), 0.0)

    def test_regular_heartbeats_stay_alive(self):
        """Heartbeats every 0.5 s: phi stays low just after each one."""
        detector = PhiAccrual(0.5)
        beat(detector, [n * 0.5 for n in range(200)])
        last = 199 * 0.5
        self.assertLess(detector.phi(last + 0.5), 1.0)
        self.assertEqual(detector.state(last + 0.6), ALIVE)
        self.assertAlmostEqual(detector.mean(), 0.5)
        self.assertEqual(detector.std(), 0.5)  # the floor

    def test_stopped_heartbeats(self):
        """Silence after regular heartbeats: suspected, then offline, within a few seconds."""
        detector = PhiAccrual(0.5)
        beat(detector, [n * 0.5 for n in range(100)])
        last = 99 * 0.5
        states = [(t / 10, detector.state(last + t / 10)) for t in range(0, 80)]
        first_suspected = next(t for t, state in states if state == SUSPECTED)
        first_offline = next(t for t, state in states if state == OFFLINE)
        self.assertTrue(1.5 < first_suspected < first_offline < 4.0,
                        (first_suspected, first_offline))
        phis = [detector.phi(last + t / 10) for t in range(0, 80)]
        self.assertEqual(phis, sorted(phis))

    def test_jittery_heartbeats_tolerated(self):
        """Intervals of 0.2 to 1.5 s: a 1.5 s gap is not even suspected."""
        detector = PhiAccrual(0.5)
        rng = random.Random(7)
        now = 0.0
        for _ in range(300):
            now += rng.uniform(0.2, 1.5)
            detector.heartbeat(now)
        self.assertGreater(detector.std(), 0.3)
        self.assertEqual(detector.state(now + 1.5), ALIVE)
        self.assertEqual(detector.state(now + 30.0), OFFLINE)

    def test_window_forgets(self):
        """Old intervals leave the window: a peer that speeds up is judged by its new pace."""
        detector = PhiAccrual(5.0, window=10, min_std=0.1)
        beat(detector, [n * 5.0 for n in range(20)])
        start = 19 * 5.0
        beat(detector, [start + n * 0.2 for n in range(1, 21)])
        self.assertAlmostEqual(detector.mean(), 0.2)
        self.assertEqual(detector.state(start + 20 * 0.2 + 2.0), OFFLINE)

    def test_repeated_or_backwards_heartbeat_ignored(self):
        """A heartbeat at the same time (or earlier) adds no interval."""
        detector = PhiAccrual(1.0)
        beat(detector, [0.0, 1.0, 1.0, 0.5])
        self.assertAlmostEqual(detector.mean(), 1.0)
        self.assertEqual(detector.last_heartbeat, 1.0)

    def test_thresholds(self):
        """Alive below 5, suspected from 5 to 9, offline above 9."""
        self.assertEqual([state_of(p) for p in (0, 4.99, 5, 9, 9.01, 100)],
                         [ALIVE, ALIVE, SUSPECTED, SUSPECTED, OFFLINE, OFFLINE])

    def test_bad_parameters(self):
        for arguments in ((0,), (1, 1), (1, 10, 0)):
            self.assertRaises(ValueError, PhiAccrual, *arguments)
