"""
The server's loggers, filtered by the log-level setting.

Every module of the server takes its Logger from here. They publish through
one filtering observer into Twisted's global log, so `log-level` silences our
own events below it without touching how twistd writes the log. (Twisted's
own events keep twistd's defaults.) Twisted has no level below debug, so
`trace` is debug.
"""

from collections import OrderedDict
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


# A log line about one address at most this often, in seconds...
LOG_INTERVAL = 60.0
# ... for at most this many addresses at a time.
LOG_TABLE_MAX = 1000


class LogThrottle:
    """
    Which of a stream of events about one address deserve a log line: the
    first, then the first after each C{interval}; the rest are counted.

    @param clock: C{seconds()}, the reactor's or a L{task.Clock}.
    @param most: addresses kept; past it the one logged longest ago goes
        (and is logged again at its next event).
    """

    def __init__(self, clock, interval=LOG_INTERVAL, most=LOG_TABLE_MAX):
        self._clock = clock
        self._interval = interval
        self._most = most
        # Address -> [clock time of its last line, events held back since],
        # least recently logged first.
        self._table = OrderedDict()

    def admit(self, address):
        """
        Count an event about C{address}.

        @return: C{None} to stay quiet, else how many events (this one
            included) happened since the address's last line.
        """
        now = self._clock.seconds()
        entry = self._table.get(address)
        if entry is not None and now - entry[0] < self._interval:
            entry[1] += 1
            return None
        count = 1 if entry is None else entry[1] + 1
        self._table.pop(address, None)
        self._table[address] = [now, 0]
        if len(self._table) > self._most:
            self._table.popitem(last=False)
        return count
