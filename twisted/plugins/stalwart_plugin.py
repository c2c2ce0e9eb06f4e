"""
The `twistd stalwart` command. Only declares the service maker: the server's
modules are imported when the command runs, not when twistd lists plugins.
"""

from twisted.application.service import ServiceMaker

stalwart = ServiceMaker(
    "stalwart",
    "stalwart_tw.service",
    "A JMAP mail server node (alone on SQLite, or part of a cluster)",
    "stalwart",
)
