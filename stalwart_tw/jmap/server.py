"""
The JMAP server: the method engine, the Session and push, assembled from
extensions.

An L{Extension} is one capability of the server (core, principals; mail,
sieve... later): the capability's objects in the Session, its methods, and
the data types it owns. C{service.py} hands the list of extensions to
L{JmapServer}; adding a type touches its own module and that list, never
this package's engine nor the HTTP layer, which receives the finished
server and only moves bytes, credentials and limits.
"""

from stalwart_tw.jmap.dispatch import MethodRegistry, run_request
from stalwart_tw.jmap.push import SharedStateBus
from stalwart_tw.jmap.session import CORE_CAPABILITY, SessionCache
from stalwart_tw.store.directory import changes_directory


class Extension:
    """
    One capability of the server. Subclasses set C{capability} and
    override what they offer.

    @cvar capability: the capability URI the methods belong to (the one a
        request must name in C{using}).
    @cvar shared_states: account number -> names of the types whose state
        is kept once in that account for everyone (the directory's
        principals), announced by push under every account a subscriber
        watches.
    """

    capability = CORE_CAPABILITY
    shared_states = {}

    def session_capability(self, principal):
        """
        @return: C{(Session object, account object or None)} of the
            capability for C{principal}, or C{None} to leave it out of the
            Session (core's own object is the server's, not an extension's).
        """
        return None

    def methods(self):
        """
        @return: method name -> C{handler(context, arguments)}, returning
            (or returning an awaitable of) the response arguments.
        """
        return {}

    def session_changed(self, apply_result):
        """
        @return: whether an applied batch changed what this extension puts
            in the Session beyond the directory (whose changes always drop
            every cached Session), so that every one must be built again.
        """
        return False


class JmapServer:
    """
    The JMAP server of one node.

    @param settings: the node's settings.
    @param directory: the directory the Session reads a user's groups from.
    @param extensions: the L{Extension}s, in the order their capabilities
        appear in the Session.
    @param bus: the node's L{StateChangeBus}, or C{None} for no push.
    @param blobs: the L{BlobAccess} that uploads and downloads go through,
        or C{None} when this node stores no blobs.

    @ivar methods: the L{MethodRegistry} of every extension's methods.
    @ivar bus: the state changes a user's event streams subscribe to.
    @ivar blobs: the L{BlobAccess}, or C{None}.
    """

    def __init__(self, settings, directory, extensions, bus=None, blobs=None):
        self._extensions = tuple(extensions)
        self.methods = MethodRegistry()
        shared = {}
        for extension in self._extensions:
            for name, handler in extension.methods().items():
                self.methods.register(name, extension.capability, handler)
            for account, types in extension.shared_states.items():
                shared.setdefault(account, set()).update(types)
        self.bus = None if bus is None else SharedStateBus(bus, shared)
        self.blobs = blobs
        # Read on every request: kept ready rather than rebuilt each time.
        self._capabilities = self.methods.capabilities() | {
            CORE_CAPABILITY, *(extension.capability for extension in self._extensions)
        }
        self.sessions = SessionCache(
            settings, directory, self._capabilities_of, self._directory_changed
        )

    def _capabilities_of(self, principal):
        capabilities = {}
        for extension in self._extensions:
            offered = extension.session_capability(principal)
            if offered is not None and extension.capability != CORE_CAPABILITY:
                capabilities[extension.capability] = offered
        return capabilities

    def _directory_changed(self, apply_result):
        # A user's accounts are the directory's (their groups): any change
        # to it may give or take one, whatever extensions there are.
        return changes_directory(apply_result) or any(
            extension.session_changed(apply_result) for extension in self._extensions
        )

    def on_applied(self, apply_result):
        """
        A node listener: keep the cached Sessions true to the directory.
        """
        self.sessions.on_applied(apply_result)

    def capabilities(self):
        """
        @return: the capability URIs a request may name in C{using}.
        """
        return self._capabilities

    async def session(self, principal):
        """
        @return: the L{UserSession} of C{principal}.
        """
        return self.sessions.cached(principal) or await self.sessions.get(principal)

    async def accounts(self, principal):
        """
        @return: the principal ids of the accounts C{principal} may use:
            those of their Session, one rule for every route.
        """
        return (await self.session(principal)).accounts

    async def run(self, request, principal):
        """
        Run a checked L{Request} for C{principal}.

        @return: the Response object, C{sessionState} included.
        """
        session = await self.session(principal)
        response = await run_request(self.methods, request, principal, None, session.accounts)
        # After the methods: a call may have changed the Session.
        response["sessionState"] = (await self.session(principal)).document["state"]
        return response
