"""
What several test modules need: a real store with a local node on it, and
an Argon2 hasher cheap enough for a test suite.
"""

from argon2 import PasswordHasher
from twisted.internet.defer import inlineCallbacks

from stalwart_tw.cluster.node import LocalNode
from stalwart_tw.store.engine import Store


def cheap_hasher():
    """Argon2id at the lowest cost: real hashes, without the production wait."""
    return PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@inlineCallbacks
def open_store_and_node(test, path=None, reader_threads=4):
    """
    Open a store on a fresh folder (or C{path}) and start a local node on
    it; both are stopped, node first, when the test ends.

    @return: a Deferred firing with C{(store, node)}.
    """
    store = Store(path if path is not None else test.mktemp(), reader_threads=reader_threads)
    yield store.open()
    test.addCleanup(store.close)
    node = LocalNode(store)
    yield node.startService()
    test.addCleanup(lambda: node.stopService() if node.running else None)
    return store, node
