"""Fixtures shared by edgenode's tests: the reactor thread, the test PKI, origins and the edge.

Integration tests are plain synchronous tests. The global reactor runs in one
daemon thread for the session (`reactor_thread`); in-process origins live in
it; the edge under test is a real `twistd` subprocess (`edge_factory`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.edge import EdgeProcess
from tests.support.nginx import NginxOrigin, running_nginx
from tests.support.origin import (
    Servers,
    TLSOrigin,
    live_listeners,
    start_reactor_thread,
    stop_reactor_thread,
)
from tests.support.pki import PKI


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    # pytest-twisted, when installed, runs every test function inside a reactor it
    # drives from a greenlet in the main thread, which cannot coexist with the
    # reactor thread below. These tests do not use it: switch it off.
    plugin = config.pluginmanager.get_plugin("twisted")
    if plugin is not None and getattr(plugin, "__name__", "") == "pytest_twisted":
        config.pluginmanager.unregister(plugin)


@pytest.fixture(scope="session")
def reactor_thread() -> Iterator[Any]:
    """The global Twisted reactor, running in a daemon thread for the whole session."""
    reactor = start_reactor_thread()
    yield reactor
    for listener in live_listeners():
        listener.stop()
    stop_reactor_thread()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """The session's CAs and leaves; `pki.ca_file` is what the edge should trust."""
    return PKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def servers(reactor_thread: Any) -> Iterator[Servers]:
    """Makes in-process servers (tls_origin, listen_tcp, listen_tls), all stopped after the test."""
    made = Servers()
    yield made
    made.stop_all()


@pytest.fixture
def origin(servers: Servers, pki: PKI) -> TLSOrigin:
    """A TLS origin: SNI a.test and b.test get their own leaf, anything else default.test's."""
    return servers.tls_origin(
        {"a.test": pki.leaf("a.test"), "b.test": pki.leaf("b.test")},
        pki.leaf("default.test", "www.default.test"),
    )


@pytest.fixture(scope="module")
def nginx_origin(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxOrigin]:
    """A real nginx with server blocks for a.test and b.test; no or unknown SNI is rejected."""
    with running_nginx(pki, tmp_path_factory.mktemp("nginx")) as nginx:
        yield nginx


@pytest.fixture
def edge_factory(tmp_path: Path) -> Iterator[Callable[..., EdgeProcess]]:
    """`edge_factory(config, **kwargs)` starts an edge (EdgeProcess) in its own directory.

    At teardown every edge still running is stopped with SIGTERM; an edge
    that crashed, exits non-zero, or logged an edgenode DeprecationWarning
    fails the test.
    """
    edges: list[EdgeProcess] = []

    def make(config: dict[str, Any], **kwargs: Any) -> EdgeProcess:
        edge = EdgeProcess(tmp_path / f"edge{len(edges) + 1}", config, **kwargs)
        edges.append(edge)
        return edge.start()

    yield make
    problems = [problem for edge in edges for problem in edge.teardown_problems()]
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture(autouse=True)
def _no_leftover_listeners() -> Iterator[None]:
    """Fails a test that leaves an in-process server listening (`servers` stops its own)."""
    before = set(live_listeners())
    yield
    left = [listener for listener in live_listeners() if listener not in before]
    for listener in left:
        listener.stop()
    if left:
        ports = ", ".join(str(listener.port) for listener in left)
        pytest.fail(
            f"in-process servers were left listening on {ports}; "
            "create them through the `servers` fixture or stop() them",
            pytrace=False,
        )
