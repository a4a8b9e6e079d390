"""Server endpoint strings: one parser, read as Twisted reads them, into a frozen value."""

from __future__ import annotations

import ast
import socket
from pathlib import Path

import attrs
import pytest
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor

from edgenode.endpoints import (
    ENDPOINT_EXAMPLE,
    EndpointError,
    Kind,
    ServerEndpoint,
    parse_server_endpoint,
)


@pytest.mark.parametrize(
    ("description", "kind", "interface", "port", "backlog"),
    [
        ("tcp:8080", "tcp", "", 8080, 50),
        ("tcp:port=8080", "tcp", "", 8080, 50),
        ("tcp:8080:interface=127.0.0.1", "tcp", "127.0.0.1", 8080, 50),
        ("tcp:8080:127.0.0.1:backlog=512", "tcp", "127.0.0.1", 8080, 512),
        ("tcp:0", "tcp", "", 0, 50),
        ("tcp6:8080", "tcp6", "::", 8080, 50),
        (r"tcp6:8080:interface=\:\:1", "tcp6", "::1", 8080, 50),
        ("tcp6:interface=fe80\\:\\:1:port=443:backlog=10", "tcp6", "fe80::1", 443, 10),
    ],
)
def test_tcp_endpoints_are_read_with_twisteds_defaults_and_escapes(
    description: str, kind: Kind, interface: str, port: int, backlog: int
) -> None:
    """tcp:/tcp6: strings give the kind, interface, port and backlog Twisted would bind."""
    endpoint = parse_server_endpoint(description)
    assert endpoint == ServerEndpoint(
        description, kind, interface=interface, port=port, backlog=backlog
    )
    assert endpoint.is_tcp
    assert str(endpoint) == description


def test_unix_endpoint_has_a_path_and_no_address() -> None:
    """A unix: string gives its socket path and backlog; it has no TCP address."""
    endpoint = parse_server_endpoint("unix:/run/edge\\:1.sock:mode=600:backlog=7")
    assert (endpoint.kind, endpoint.path, endpoint.backlog) == ("unix", "/run/edge:1.sock", 7)
    assert (endpoint.interface, endpoint.port) == (None, None)
    assert not endpoint.is_tcp
    assert endpoint.family == socket.AF_UNIX
    assert endpoint.local_address() is None


def test_other_kinds_twisted_knows_are_accepted_as_written() -> None:
    """A kind Twisted parses that binds no TCP or UNIX socket itself is kept as written."""
    endpoint = parse_server_endpoint("stdio:")
    assert endpoint == ServerEndpoint("stdio:", "other")
    assert not endpoint.is_tcp and not endpoint.is_loopback


def test_the_value_is_frozen() -> None:
    """A parsed endpoint cannot be changed after the fact."""
    endpoint = parse_server_endpoint("tcp:8080")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        endpoint.port = 9090  # type: ignore[misc]


@pytest.mark.parametrize(
    ("description", "reason"),
    [
        ("tcp:abc", "ValueError: invalid literal for int() with base 10: 'abc'"),
        ("http:8080", "ValueError: Unknown endpoint type: 'http'"),
        ("", "ValueError: Unknown endpoint type: ''"),
        (
            "tcp:port=8081:nonsense=1",
            "TypeError: _parseTCP() got an unexpected keyword argument 'nonsense'",
        ),
        ("tcp:8080:backlog=many", "ValueError: invalid literal for int() with base 10: 'many'"),
    ],
)
def test_unparsable_strings_say_why_with_twisteds_words(description: str, reason: str) -> None:
    """An unparsable string raises EndpointError quoting the string, Twisted's reason, and
    an example."""
    with pytest.raises(EndpointError) as caught:
        parse_server_endpoint(description)
    assert str(caught.value) == (
        f"{description!r} is not a valid Twisted endpoint string ({reason}); {ENDPOINT_EXAMPLE}"
    )
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("description", ["tcp:99999", "tcp:-1", "tcp6:65536"])
def test_ports_outside_0_to_65535_are_refused(description: str) -> None:
    """A TCP port Twisted would only refuse when binding is refused when parsing."""
    port = description.rsplit(":", 1)[1]
    with pytest.raises(EndpointError) as caught:
        parse_server_endpoint(description)
    assert str(caught.value) == (
        f"{description!r} has port {port}; a port is 0..65535, {ENDPOINT_EXAMPLE}"
    )


@pytest.mark.parametrize(
    ("description", "loopback"),
    [
        ("tcp:8081:interface=127.0.0.1", True),
        ("tcp:8081:interface=127.0.0.2", True),
        ("tcp:8081:127.0.0.1", True),  # the interface as a positional argument
        (r"tcp6:8081:interface=\:\:1", True),
        ("tcp:8081:interface=localhost", True),
        ("unix:/run/edge-admin.sock", True),
        ("tcp:8081", False),
        ("tcp:8081:interface=0.0.0.0", False),
        ("tcp6:8081", False),
        ("tcp:8081:interface=192.0.2.1", False),
        ("tcp:8081:interface=admin.example", False),
        ("stdio:", False),
    ],
)
def test_loopback_means_only_this_host_can_connect(description: str, loopback: bool) -> None:
    """Unix sockets and loopback interfaces are loopback; every address or a name is not."""
    assert parse_server_endpoint(description).is_loopback is loopback


@pytest.mark.parametrize(
    ("description", "address", "family"),
    [
        ("tcp:8081", ("127.0.0.1", 8081), socket.AF_INET),
        ("tcp:8081:interface=0.0.0.0", ("127.0.0.1", 8081), socket.AF_INET),
        ("tcp:8081:interface=192.0.2.7", ("192.0.2.7", 8081), socket.AF_INET),
        ("tcp6:8081", ("::1", 8081), socket.AF_INET6),
        (r"tcp6:8081:interface=\:\:1", ("::1", 8081), socket.AF_INET6),
        # Twisted's TCP port picks the family by the interface, whichever kind named it.
        (r"tcp:8081:interface=\:\:", ("::1", 8081), socket.AF_INET6),
        ("tcp6:8081:interface=0.0.0.0", ("127.0.0.1", 8081), socket.AF_INET),
    ],
)
def test_local_address_and_family_of_tcp_listeners(
    description: str, address: tuple[str, int], family: socket.AddressFamily
) -> None:
    """A client on this host reaches a listener on every address at its family's loopback."""
    endpoint = parse_server_endpoint(description)
    assert endpoint.local_address() == address
    assert endpoint.family == family


@pytest.mark.parametrize(
    "description",
    ["tcp:8081:interface=127.0.0.1:backlog=5", r"tcp6:0:interface=\:\:1", "unix:/run/e.sock"],
)
def test_listen_binds_what_the_value_describes(description: str) -> None:
    """listen() binds the string as written, with the address the parsed value names."""
    endpoint = parse_server_endpoint(description)
    reactor = MemoryReactor()
    factory = Factory()
    endpoint.listen(reactor, factory)
    if endpoint.kind == "unix":
        ((path, bound_factory, backlog, *_),) = reactor.unixServers
        assert (path, backlog) == (endpoint.path, endpoint.backlog)
    else:
        ((port, bound_factory, backlog, interface),) = reactor.tcpServers
        assert (interface, port, backlog) == (endpoint.interface, endpoint.port, endpoint.backlog)
    assert bound_factory is factory


def test_no_module_of_the_edge_parses_with_a_test_reactor() -> None:
    """Production code reads endpoint strings here, never through Twisted's test helpers."""
    package = Path(__file__).resolve().parent.parent / "edgenode"
    users = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            if any(name.startswith("twisted.internet.testing") for name in names):
                users.append(path.relative_to(package).as_posix())
    assert users == []
