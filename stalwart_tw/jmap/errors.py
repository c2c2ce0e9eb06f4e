"""
JMAP errors (RFC 8620 section 3.6): request-level errors, answered as RFC
7807 problem documents, and method-level errors, answered as an "error"
invocation in place of the method's response.
"""

REQUEST_ERROR_PREFIX = "urn:ietf:params:jmap:error:"

# Request-level problem types.
UNKNOWN_CAPABILITY = "unknownCapability"
NOT_JSON = "notJSON"
NOT_REQUEST = "notRequest"
LIMIT = "limit"

# Method-level error types that any method may return.
SERVER_UNAVAILABLE = "serverUnavailable"
SERVER_FAIL = "serverFail"
SERVER_PARTIAL_FAIL = "serverPartialFail"
UNKNOWN_METHOD = "unknownMethod"
INVALID_ARGUMENTS = "invalidArguments"
INVALID_RESULT_REFERENCE = "invalidResultReference"
FORBIDDEN = "forbidden"
ACCOUNT_NOT_FOUND = "accountNotFound"
ACCOUNT_NOT_SUPPORTED_BY_METHOD = "accountNotSupportedByMethod"
ACCOUNT_READ_ONLY = "accountReadOnly"

# Errors of particular standard methods.
REQUEST_TOO_LARGE = "requestTooLarge"
CANNOT_CALCULATE_CHANGES = "cannotCalculateChanges"
FROM_ACCOUNT_NOT_FOUND = "fromAccountNotFound"
FROM_ACCOUNT_NOT_SUPPORTED_BY_METHOD = "fromAccountNotSupportedByMethod"
STATE_MISMATCH = "stateMismatch"

# SetError types.
NOT_FOUND = "notFound"


class RequestError(Exception):
    """
    The request as a whole is refused: nothing in it was run.

    @ivar kind: the problem type without its URN prefix (C{"notJSON"}...).
    @ivar status: the HTTP status of the answer.
    @ivar limit: for C{"limit"} problems, the name of the limit.
    """

    def __init__(self, kind, detail, status=400, limit=None):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.status = status
        self.limit = limit

    def problem(self):
        """
        @return: the RFC 7807 problem document.
        """
        document = {
            "type": REQUEST_ERROR_PREFIX + self.kind,
            "status": self.status,
            "detail": self.detail,
        }
        if self.limit is not None:
            document["limit"] = self.limit
        return document


class MethodError(Exception):
    """
    One method call failed; the request goes on with the next call.

    @ivar type: the JMAP error type (C{"invalidArguments"}...).
    @ivar extra: further members of the error object.
    """

    def __init__(self, type, description=None, **extra):
        super().__init__(description or type)
        self.type = type
        self.description = description
        self.extra = extra

    def arguments(self):
        """
        @return: the arguments of the "error" invocation.
        """
        arguments = {"type": self.type}
        if self.description is not None:
            arguments["description"] = self.description
        arguments.update(self.extra)
        return arguments


def invalid_arguments(description):
    """
    @return: an C{invalidArguments} L{MethodError} saying what was wrong.
    """
    return MethodError(INVALID_ARGUMENTS, description)
