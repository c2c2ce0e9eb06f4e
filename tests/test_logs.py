"""
Tests for the log-level setting's filter on the server's loggers.
"""

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from stalwart_tw import logs


class LogLevelTests(TestCase):
    """
    log-level silences the server's events below it.
    """

    def setUp(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.addCleanup(logs.set_level, "info")
        self.log = logs.Logger()

    def emitted(self):
        return [event["log_format"] for event in self.events if "log_format" in event]

    def test_default_info(self):
        """At the default level, info is written and debug is not."""
        self.log.debug("quiet")
        self.log.info("spoken")
        self.assertEqual(self.emitted(), ["spoken"])

    def test_error_only(self):
        """At error, warnings and info are silenced."""
        logs.set_level("error")
        self.log.info("no")
        self.log.warn("no")
        self.log.error("yes")
        self.assertEqual(self.emitted(), ["yes"])

    def test_trace_is_debug(self):
        """trace lets debug events through."""
        logs.set_level("trace")
        self.log.debug("detail")
        self.assertEqual(self.emitted(), ["detail"])

    def test_namespace_is_the_caller(self):
        """A logger made here is named after this module, as Twisted's are."""
        self.assertEqual(self.log.namespace, __name__)
