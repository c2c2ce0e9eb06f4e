"""
The server's loggers, filtered by the log-level setting.

Every module of the server takes its Logger from here. They publish through
one filtering observer into Twisted's global log, so `log-level` silences our
own events below it without touching how twistd writes the log. (Twisted's
own events keep twistd's defaults.) Twisted has no level below debug, so
`trace` is debug.
"""

from functools import partial

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)
from twisted.logger import Logger as _TwistedLogger

LEVELS = {
    "error": LogLevel.error,
    "warn": LogLevel.warn,
    "info": LogLevel.info,
    "debug": LogLevel.debug,
    "trace": LogLevel.debug,
}

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = FilteringLogObserver(globalLogPublisher, [_predicate])

# A partial adds no Python frame, so Logger() still names the module or class
# that creates it, as twisted.logger.Logger does.
Logger = partial(_TwistedLogger, observer=_observer)


def set_level(name):
    """
    Emit only events at or above the level named by the log-level setting.
    """
    _predicate.defaultLogLevel = LEVELS[name]
    # The predicate keeps levels per namespace, the default included.
    _predicate.clearLogLevels()


def debug_enabled():
    """
    @return: whether debug events are emitted, so a caller can skip
        building an event that would be dropped (per request, that adds up).
    """
    return _predicate.defaultLogLevel is LogLevel.debug
