"""
What several test modules need: a real store with a local node on it, an
Argon2 hasher cheap enough for a test suite, and a whole node started in
this process with an HTTP client that talks to it over loopback.
"""

import os

from argon2 import PasswordHasher
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.web.client import Agent, HTTPConnectionPool

from stalwart_tw.cluster.node import LocalNode
from stalwart_tw.config import load_settings
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


def node_settings(test, **overrides):
    """Settings of a test node: its own data folder, ephemeral port, no shell."""
    values = {
        "db-path": os.path.abspath(test.mktemp()),
        "jmap-port": "0",
        "manhole-port": "0",
        "admin-secret": "the-service-secret",
        # Parsing in worker processes has tests of its own; the rest parse
        # on threads rather than spawn two interpreters per test.
        "worker-processes": "0",
    }
    values.update(overrides)
    return load_settings(None, values, {})


class NodeServiceMixin:
    """
    Start a node in this process, with cheap Argon2, stopped when the test
    ends; talk to it with a client that keeps no connection open.
    """

    @inlineCallbacks
    def start(self, settings, extensions=None):
        from stalwart_tw.service import EXTENSIONS, NodeService

        service = NodeService(settings, extensions=EXTENSIONS if extensions is None else extensions)
        # Argon2 at production cost makes the suite slow and proves nothing more.
        service.directory._hasher = cheap_hasher()
        service.privilegedStartService()
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        yield service.opened
        self.assertTrue(service.ready)
        return service

    def client(self, policy=None):
        pool = HTTPConnectionPool(reactor, persistent=False)
        if policy is None:
            return HTTPClient(Agent(reactor, pool=pool))
        return HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))

    @inlineCallbacks
    def start_with_client(self, extensions=None, **overrides):
        """Start a node with these settings; C{self.base} is its URL."""
        self.service = yield self.start(node_settings(self, **overrides), extensions)
        self.base = f"http://127.0.0.1:{self.service.ports['JMAP'].getHost().port}"
        self.http = self.client()
        return self.service

    @inlineCallbacks
    def request(self, method, path, headers=None, data=None):
        response = yield self.http.request(method, self.base + path, headers=headers, data=data)
        body = yield response.content()
        return response, body

    def header(self, response, name):
        values = response.headers.getRawHeaders(name)
        return values[0] if values else None
