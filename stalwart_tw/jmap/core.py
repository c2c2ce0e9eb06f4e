"""
Methods of the core capability that belong to no data type: Core/echo.
"""

from stalwart_tw.jmap.dispatch import CORE_CAPABILITY


def echo(context, arguments):
    """
    Core/echo: answer with exactly the arguments given (RFC 8620 section 4).
    """
    return arguments


def register_core(registry):
    """
    Add the core methods to a L{MethodRegistry}.
    """
    registry.register("Core/echo", CORE_CAPABILITY, echo)
