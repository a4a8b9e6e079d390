"""Server endpoint strings (`listen`, `admin.listen`): one parser, into one frozen `ServerEndpoint`.

An endpoint string is the operator's (SPEC §3: "a Twisted server endpoint string"), so it
is read exactly as Twisted's `serverFromString` reads it, the function the edge listens
with: its grammar (`kind:arg:key=value`, a backslash escaping the next character), each
kind's defaults (`tcp` binds every IPv4 address, `tcp6` every IPv6 one, backlog 50), the
kinds its plugins add (`tcp6` and `systemd` are plugins themselves), and its error
messages, which the config quotes. A parser of our own would be a second grammar that
drifts from the one the edge listens with; Twisted's own argument parser is private.

What a parsed endpoint binds is private to it too. The one public way to see it is to let
it listen: `_Recorder` is a stand-in reactor with just the three calls through which
Twisted's TCP, SSL and UNIX server endpoints bind (`IReactorTCP.listenTCP`,
`IReactorSSL.listenSSL`, `IReactorUNIX.listenUNIX`), which records the call and binds
nothing. Other kinds (`systemd:`, `stdio:`, a plugin's) are never listened on here.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Final, Literal

import attrs
from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXServerEndpoint,
    serverFromString,
)
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IReactorCore

ENDPOINT_EXAMPLE: Final = "e.g. 'tcp:8080:interface=127.0.0.1'"

Kind = Literal["tcp", "tcp6", "ssl", "unix", "other"]


class EndpointError(ValueError):
    """A string that is not a usable server endpoint; `str()` says why, as the config says it."""


@attrs.frozen
class ServerEndpoint:
    """One server endpoint string and what it binds, as `serverFromString` reads it."""

    description: str  # as written: the edge listens on exactly this
    kind: Kind  # "other": systemd:, stdio:, a plugin's kind; only `description` is known
    interface: str | None = None  # tcp, tcp6, ssl: "" (IPv4) or "::" (IPv6) = every address
    port: int | None = None  # tcp, tcp6, ssl: 0..65535, 0 = one the kernel picks
    backlog: int | None = None  # tcp, tcp6, ssl, unix
    path: str | None = None  # unix: the socket's file

    @property
    def is_tcp(self) -> bool:
        """Whether this is a plain TCP listener, which the workers' supervisor can bind itself."""
        return self.kind in ("tcp", "tcp6")

    @property
    def family(self) -> socket.AddressFamily:
        """The address family of the listening socket. For TCP, as Twisted's TCP port decides
        it: by the interface (an IPv6 literal is AF_INET6), whichever of tcp/tcp6 named it."""
        if self.kind == "unix":
            return socket.AF_UNIX
        if self.interface is not None and isIPv6Address(self.interface):
            return socket.AF_INET6
        return socket.AF_INET

    @property
    def is_loopback(self) -> bool:
        """Whether only this host can connect: a unix socket, or a loopback interface."""
        if self.kind == "unix":
            return True
        if self.interface is None:
            return False
        if self.interface == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.interface).is_loopback
        except ValueError:  # a host name, or "" (every address)
            return False

    def local_address(self) -> tuple[str, int] | None:
        """Where a client on this host connects to reach a TCP listener (an IPv6 literal
        without brackets), or None for other kinds. A listener on every address is
        reached on the loopback address of its family."""
        if not self.is_tcp or self.interface is None or self.port is None:
            return None
        if self.interface in ("", "0.0.0.0"):
            return "127.0.0.1", self.port
        if self.interface == "::":
            return "::1", self.port
        return self.interface, self.port

    def listen(self, reactor: IReactorCore, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        """Listen on `reactor` with `factory`: `serverFromString` on the string as written."""
        listening: Deferred[IListeningPort] = serverFromString(reactor, self.description).listen(
            factory
        )
        return listening

    def __str__(self) -> str:
        return self.description


def parse_server_endpoint(description: str) -> ServerEndpoint:
    """`description` read as `serverFromString` reads it, binding nothing; raises
    `EndpointError` naming the problem (TCP and SSL ports are also checked to be
    0..65535, which Twisted itself only finds out when binding)."""
    recorder = _Recorder()
    try:
        endpoint = serverFromString(recorder, description)
    except Exception as exc:  # Twisted's parsers raise what they meet (ValueError, TypeError...)
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise EndpointError(
            f"{description!r} is not a valid Twisted endpoint string ({reason}); {ENDPOINT_EXAMPLE}"
        ) from None
    kind: Kind
    if isinstance(endpoint, TCP6ServerEndpoint):
        kind = "tcp6"
    elif isinstance(endpoint, TCP4ServerEndpoint):
        kind = "tcp"
    elif isinstance(endpoint, SSL4ServerEndpoint):
        kind = "ssl"
    elif isinstance(endpoint, UNIXServerEndpoint):
        kind = "unix"
    else:
        return ServerEndpoint(description, "other")
    endpoint.listen(_NO_FACTORY)  # binds nothing: the recorder only notes the arguments
    bound = recorder.bound
    assert bound is not None  # each of these four endpoints' listen() calls its reactor
    port = bound.get("port")
    if port is not None and not 0 <= port <= 65535:
        raise EndpointError(
            f"{description!r} has port {port}; a port is 0..65535, {ENDPOINT_EXAMPLE}"
        )
    return ServerEndpoint(
        description,
        kind,
        interface=bound.get("interface"),
        port=port,
        backlog=bound["backlog"],
        path=bound.get("path"),
    )


class _Recorder:
    """A reactor for parsing only: each listen call records its arguments and binds nothing."""

    def __init__(self) -> None:
        self.bound: dict[str, Any] | None = None

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> None:
        self.bound = {"port": port, "backlog": backlog, "interface": interface}

    def listenSSL(
        self, port: int, factory: Any, contextFactory: Any, backlog: int = 50, interface: str = ""
    ) -> None:
        self.bound = {"port": port, "backlog": backlog, "interface": interface}

    def listenUNIX(
        self, address: str, factory: Any, backlog: int = 50, mode: int = 0o666, wantPID: int = 0
    ) -> None:
        self.bound = {"path": address, "backlog": backlog}


_NO_FACTORY: Any = None  # the recorder never builds a protocol
