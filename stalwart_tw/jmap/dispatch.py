"""
The method registry and the invocation loop (RFC 8620 section 3).

Sans-IO: the loop takes a checked L{Request} and the caller's context and
returns the Response object; the HTTP and WebSocket layers only carry
bytes. Methods run in order. Each one's arguments have their result
references resolved first; a method that raises L{MethodError} answers with
that error, and any other exception answers C{serverFail} (logged here) so
that one broken method never takes the rest of the request down.

Modules outside jmap/ (mail, sieve...) register their methods here; jmap/
never imports them.
"""

import inspect
from dataclasses import dataclass, field

from twisted.internet.defer import CancelledError

from stalwart_tw.store.errors import BatchConflict, NodeStopping
from stalwart_tw.jmap.errors import (
    SERVER_FAIL,
    SERVER_UNAVAILABLE,
    UNKNOWN_METHOD,
    MethodError,
)
from stalwart_tw.jmap.request import Invocation, resolve_references
from stalwart_tw.logs import Logger

log = Logger()


@dataclass
class CallContext:
    """
    What a method knows of the request it runs in.

    @ivar principal: who is calling.
    @ivar using: the capabilities the request declared.
    @ivar created_ids: creation id -> id, shared by all calls of the request.
    @ivar accounts: the principal ids of the accounts the caller may use.
    @ivar read_only: those of them the caller may read but not change
        (the Session's C{isReadOnly}).
    """

    principal: object
    using: tuple
    created_ids: dict = field(default_factory=dict)
    accounts: tuple = ()
    read_only: frozenset = frozenset()


@dataclass
class Method:
    """
    A registered method: its handler and the capability it belongs to.

    The handler is called as C{handler(context, arguments)} and returns
    (or returns a Deferred or coroutine of) the response arguments, or a
    list of L{Invocation}s when it answers with more than one response.
    """

    name: str
    capability: str
    handler: object


class MethodRegistry:
    """
    The methods a server offers, by name.
    """

    def __init__(self):
        self._methods = {}
        self._capabilities = frozenset()

    def register(self, name, capability, handler):
        if name in self._methods:
            raise ValueError(f"method {name!r} is registered twice")
        self._methods[name] = Method(name, capability, handler)
        # Read on every request: kept ready rather than rebuilt each time.
        self._capabilities = self._capabilities | {capability}

    def get(self, name):
        return self._methods.get(name)

    def capabilities(self):
        return self._capabilities


async def run_request(registry, request, principal, session_state, accounts=()):
    """
    Run every method call of C{request} in order.

    @param accounts: the principal ids of the accounts the caller may use.
    @return: the Response object, ready to encode as JSON.
    """
    context = CallContext(
        principal, request.using, dict(request.created_ids or {}), tuple(accounts)
    )
    responses = []
    for call in request.calls:
        answer = _run_call(registry, context, call, responses)
        if type(answer) is not list:
            answer = await answer
        responses.extend(answer)
    document = {
        "methodResponses": [response.as_json() for response in responses],
        "sessionState": session_state,
    }
    if request.created_ids is not None:
        document["createdIds"] = context.created_ids
    return document


def _run_call(registry, context, call, responses):
    # The call's response invocations, or an awaitable of them when the
    # method answers later: most answer at once, and a coroutine per call
    # would cost more than many of the methods themselves.
    method = registry.get(call.name)
    try:
        if method is None:
            raise MethodError(UNKNOWN_METHOD, f"the server has no method {call.name!r}")
        if method.capability not in context.using:
            raise MethodError(
                UNKNOWN_METHOD,
                f"{call.name} needs {method.capability!r} in the request's 'using'",
            )
        result = method.handler(context, resolve_references(call.arguments, responses))
    except Exception as error:
        return _failed(call, error)
    if type(result) is dict:
        return [Invocation(call.name, result, call.call_id)]
    if inspect.isawaitable(result):
        return _awaited(call, result)
    return _invocations(call, result)


async def _awaited(call, pending):
    try:
        result = await pending
    except CancelledError:
        raise
    except Exception as error:
        return _failed(call, error)
    return _invocations(call, result)


def _invocations(call, result):
    if isinstance(result, list):
        return [Invocation(name, arguments, call.call_id) for name, arguments in result]
    return [Invocation(call.name, result, call.call_id)]


def _failed(call, error):
    if isinstance(error, NodeStopping):
        error = MethodError(SERVER_UNAVAILABLE, "the server is shutting down; try again shortly")
    elif isinstance(error, BatchConflict):
        # Built twice, and twice the account moved before the commit:
        # nothing was applied, and a later try may well pass.
        error = MethodError(
            SERVER_UNAVAILABLE, "the account kept changing under this write; try again shortly"
        )
    elif not isinstance(error, MethodError):
        # Called inside the except block: the failure logged is this one.
        log.failure("method {name} failed", name=call.name)
        error = MethodError(SERVER_FAIL, f"{call.name} failed unexpectedly; the error is logged")
    return [Invocation("error", error.arguments(), call.call_id)]

