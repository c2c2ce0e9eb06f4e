"""
Transcript tests of the Raft core, in the style of etcd's raft tests: each
file in transcripts/ is a readable script of what goes in (ticks, messages,
proposals...) and, after each command, every action that came out, one
per line. The test replays each script and compares.

Commands (one per line; `#` starts a comment):
  cluster n1 n2 n3 [learners n4]   fresh cores (election timeout 1.0,
                                   random source seeded with the node's name)
  tick NODE TIME                   the node's clock reads TIME
  deliver [NODE...]                deliver every message sent so far (only
                                   those to the named nodes, if any), in order
  drop [NODE...]                   lose the messages in flight (to those nodes)
  propose NODE TEXT | read NODE CONTEXT | transfer NODE TARGET
  add-learner NODE PEER | promote NODE PEER | remove NODE PEER
  crash NODE / restart NODE        a restart keeps only what was persisted
  state NODE                       role, term, vote, leader, last, commit, applied
  step NODE MESSAGE                a message given literally (Python syntax)

Actions print as `NODE: Action(...)`; a Persist prints in full, messages
print as `NODE: Send TYPE SOURCE->TARGET term=T ...` for readability.

TRANSCRIPT_UPDATE=1 rewrites the expected output from the current code (then
read the diff: the transcripts are reviewed, not trusted).
"""

import os
import random

from twisted.trial.unittest import TestCase

from stalwart_tw.cluster import raft
from stalwart_tw.cluster.log import Entry, HardState
from stalwart_tw.cluster.raft import Config, NotLeader, Persist, RaftCore, Send

HERE = os.path.dirname(os.path.abspath(__file__))
TRANSCRIPTS = os.path.join(HERE, "transcripts")
TIMEOUT = 1.0


def _message_text(message):
    fields = dict(vars(message))
    kind = type(message).__name__
    source, target, term = fields.pop("source"), fields.pop("target"), fields.pop("term")
    if "entries" in fields:
        fields["entries"] = [f"{e.index}/{e.term}:{e.data!r}" for e in fields["entries"]]
    rest = " ".join(f"{name}={value}" for name, value in fields.items()
                    if value not in (False, None, 0, (), []) or name in ("granted", "success"))
    return f"Send {kind} {source}->{target} term={term} {rest}".rstrip()


def _action_text(action):
    if isinstance(action, Send):
        return _message_text(action.message)
    if isinstance(action, Persist):
        parts = []
        if action.hard_state is not None:
            parts.append(f"term={action.hard_state.term} vote={action.hard_state.vote}")
        if action.truncate_from is not None:
            parts.append(f"truncate_from={action.truncate_from}")
        if action.append:
            parts.append("append=" + ",".join(
                f"{e.index}/{e.term}:{e.data!r}" for e in action.append))
        return "Persist " + " ".join(parts)
    return repr(action)


class Transcript:
    def __init__(self):
        self.cores, self.durable, self.in_flight, self.config = {}, {}, [], None

    def run(self, line):
        words = line.split()
        command, args = words[0], words[1:]
        handler = getattr(self, "do_" + command.replace("-", "_"))
        return handler(line, *args)

    def _core(self, node, now=0.0):
        hard_state, entries = self.durable.get(node, (HardState(0, None), []))
        return RaftCore(node, self.config, random.Random(node), TIMEOUT, now=now,
                        hard_state=hard_state, entries=list(entries), batch_max=4096)

    def _take(self, node, actions):
        lines = []
        for action in actions:
            if isinstance(action, Send):
                self.in_flight.append(action.message)
            elif isinstance(action, Persist):
                hard_state, entries = self.durable.get(node, (HardState(0, None), []))
                if action.hard_state is not None:
                    hard_state = action.hard_state
                entries = list(entries)
                if action.truncate_from is not None:
                    del entries[action.truncate_from - 1:]
                entries.extend(action.append)
                self.durable[node] = (hard_state, entries)
            lines.append(f"{node}: {_action_text(action)}")
        return lines

    def do_cluster(self, line, *names):
        names = list(names)
        learners = []
        if "learners" in names:
            position = names.index("learners")
            names, learners = names[:position], names[position + 1:]
        self.config = Config(frozenset(names), frozenset(learners))
        self.durable, self.in_flight = {}, []
        self.cores = {name: self._core(name) for name in names + learners}
        return []

    def do_tick(self, line, node, time):
        return self._take(node, self.cores[node].tick(float(time)))

    def do_deliver(self, line, *only):
        lines = []
        pending, self.in_flight = self.in_flight, []
        for message in pending:
            if only and message.target not in only:
                self.in_flight.append(message)
                continue
            core = self.cores.get(message.target)
            if core is not None:
                lines += self._take(message.target, core.step(message))
        return lines

    def do_drop(self, line, *only):
        self.in_flight = [m for m in self.in_flight if only and m.target not in only]
        return []

    def do_propose(self, line, node, text):
        try:
            index, actions = self.cores[node].propose(text.encode())
        except NotLeader as refused:
            return [f"{node}: NotLeader(leader={refused.leader})"]
        return [f"{node}: proposed at {index}"] + self._take(node, actions)

    def do_read(self, line, node, context):
        return self._take(node, self.cores[node].read_index(context))

    def do_transfer(self, line, node, target):
        return self._take(node, self.cores[node].transfer_leadership(target))

    def _membership(self, node, **change):
        try:
            index, actions = self.cores[node].change_membership(**change)
        except (NotLeader, ValueError) as refused:
            return [f"{node}: refused: {refused}"]
        return [f"{node}: config change at {index}"] + self._take(node, actions)

    def do_add_learner(self, line, node, peer):
        self.cores.setdefault(peer, self._core(peer, self.cores[node].now))
        return self._membership(node, add_learner=peer)

    def do_promote(self, line, node, peer):
        return self._membership(node, promote=peer)

    def do_remove(self, line, node, peer):
        return self._membership(node, remove=peer)

    def do_crash(self, line, node):
        self.cores[node] = None
        return []

    def do_restart(self, line, node, time="0"):
        self.cores[node] = self._core(node, float(time))
        return []

    def do_state(self, line, node):
        c = self.cores[node]
        return [f"{node}: {c.role} term={c.term} vote={c.vote} leader={c.leader} "
                f"last={c.last_index} commit={c.commit_index} applied={c.applied_index} "
                f"voters={','.join(sorted(c.config.voters))}"
                + (f" learners={','.join(sorted(c.config.learners))}"
                   if c.config.learners else "")]

    def do_step(self, line, node, *rest):
        namespace = {name: getattr(raft, name) for name in dir(raft)}
        namespace.update(Entry=Entry)
        message = eval(line.split(None, 2)[2], namespace)  # a test script, not input
        return self._take(node, self.cores[node].step(message))


def replay(text):
    """@return: the transcript with every command's output as the code gives it."""
    transcript, out = Transcript(), []
    for raw in text.splitlines():
        if raw.startswith("  "):
            continue  # the expected output of a command: produced again below
        out.append(raw)
        line = raw.split("#", 1)[0].strip()
        if line:
            out.extend("  " + produced for produced in transcript.run(line))
    return "\n".join(out).rstrip("\n") + "\n"


class TranscriptTests(TestCase):
    def _check(self, name):
        path = os.path.join(TRANSCRIPTS, name + ".txt")
        with open(path, encoding="utf-8") as source:
            expected = source.read()
        actual = replay(expected)
        if os.environ.get("TRANSCRIPT_UPDATE"):
            with open(path, "w", encoding="utf-8") as target:
                target.write(actual)
            return
        self.assertEqual(actual, expected)

    def test_election(self):
        self._check("election")

    def test_prevote(self):
        self._check("prevote")

    def test_check_quorum(self):
        self._check("check_quorum")

    def test_log_conflict(self):
        self._check("log_conflict")

    def test_membership(self):
        self._check("membership")

    def test_read_index(self):
        self._check("read_index")

    def test_transfer(self):
        self._check("transfer")
