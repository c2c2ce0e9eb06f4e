"""
The cluster simulator in CI: at least 1,000 schedules across 3, 5 and 7
nodes without a violation, and every deliberately broken core caught.
SIM_RUNS=100000 runs more when asked.
"""

import io
import os
import subprocess
import sys

from twisted.trial.unittest import TestCase

from tests.cluster.sim import BUGS, Simulation, Violation, run_many

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNS = int(os.environ.get("SIM_RUNS", "1000"))


class SimulatorTests(TestCase):
    timeout = 600

    def test_schedules_hold(self):
        """RUNS schedules (1,000 by default) across 3, 5 and 7 nodes: no violation."""
        out = io.StringIO()
        self.assertEqual(run_many(RUNS, 1, None, 300, out=out), 0, out.getvalue())
        self.assertEqual(out.getvalue().splitlines()[-1], f"{RUNS} schedules, 0 violations")

    def test_every_injected_bug_caught(self):
        """Each broken core is caught within the default 1,000 runs."""
        for bug in sorted(BUGS):
            out = io.StringIO()
            self.assertEqual(run_many(1000, 1, None, 300, bug, out=out, shrink_failures=False), 1,
                             bug)
            self.assertIn("violation with seed", out.getvalue(), bug)

    def test_seed_reproduces(self):
        """A failing seed fails the same way again: the seed is the whole story."""
        out = io.StringIO()
        run_many(1000, 1, None, 300, "stale-read", out=out, shrink_failures=False)
        first = out.getvalue().splitlines()[0]
        seed = int(first.split("seed ")[1].split()[0])
        nodes = int(first.split("(")[1].split()[0])
        messages = []
        for _ in range(2):
            try:
                Simulation(seed, nodes, 300, "stale-read").run()
            except Violation as violation:
                messages.append(str(violation))
        self.assertEqual(len(messages), 2)
        self.assertEqual(messages[0], messages[1])
        self.assertIn(messages[0], first)

    def test_command_line(self):
        """The command exits 0 with its summary line, and 1 with the seed and schedule."""
        def run(*arguments):
            return subprocess.run(
                [sys.executable, "-m", "tests.cluster.sim", *arguments],
                cwd=REPOSITORY, capture_output=True, text=True, timeout=300,
                env=dict(os.environ, PYTHONPATH=REPOSITORY),
            )

        good = run("--runs", "20", "--seed", "3", "--nodes", "3", "--steps", "200")
        self.assertEqual((good.returncode, good.stdout.splitlines()[-1]),
                         (0, "20 schedules, 0 violations"))
        bad = run("--runs", "20", "--seed", "1", "--nodes", "3", "--inject",
                  "no-prevote-term-check")
        self.assertEqual(bad.returncode, 1)
        self.assertIn("violation with seed 1", bad.stdout)
        self.assertIn("schedule:", bad.stdout)
        self.assertTrue(bad.stdout.splitlines()[-1].endswith("1 violations"))
