"""The compiled twins (edgenode/speedups.py) against their pure-Python references.

Every other test runs whichever implementation is selected (CI runs the data-path tests
under both, see .ci/run); these hold the two to the same outputs on generated input, and
check the selection itself: what runs, and that EDGENODE_NO_EXTENSIONS turns the twins off.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgenode import accesslog, speedups
from edgenode.datapath import headers

# Run on the pure-Python fallback too (.ci/run, EDGENODE_NO_EXTENSIONS=1).
pytestmark = pytest.mark.datapath

DISABLED = speedups.DISABLED

# Run on the pure-Python fallback too (.ci/run, EDGENODE_NO_EXTENSIONS=1).
pytestmark = pytest.mark.datapath


def _pure_copy(module: ModuleType) -> Iterator[ModuleType]:
    """A second, pure-Python instance of `module`, whatever the running selection."""
    name = module.__name__
    spec = importlib.util.spec_from_file_location(f"_pure_{name}", module.__file__)
    assert spec is not None and spec.loader is not None
    copy = importlib.util.module_from_spec(spec)
    saved = speedups.DISABLED
    speedups.DISABLED = True
    try:
        spec.loader.exec_module(copy)
    finally:
        speedups.DISABLED = saved
    yield copy


@pytest.fixture(scope="module")
def pure_headers() -> Iterator[ModuleType]:
    yield from _pure_copy(headers)


@pytest.fixture(scope="module")
def pure_accesslog() -> Iterator[ModuleType]:
    yield from _pure_copy(accesslog)


def test_the_running_selection_is_the_one_described() -> None:
    """Compiled unless turned off; a checkout without the built twins fails here, not later
    in a benchmark: CI must test the compiled build (`.ci/run` builds it)."""
    description = speedups.describe()
    if DISABLED:
        assert description == "pure Python (EDGENODE_NO_EXTENSIONS is set)"
        assert headers.scan_request.__module__ == "edgenode.datapath.headers"
    else:
        assert description.startswith("compiled ("), description
        assert headers.scan_request.__module__ == "edgenode.datapath._headers"
        assert accesslog.AccessRecord.to_json_line.__module__ == "edgenode._accesslog"


def test_the_switch_turns_the_twins_off_in_a_fresh_process() -> None:
    """What an operator runs to see the selection, with and without the switch."""

    def describe(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edgenode.speedups", "--require"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )

    off = describe(EDGENODE_NO_EXTENSIONS="1")
    assert off.stdout == "edgenode data path: pure Python (EDGENODE_NO_EXTENSIONS is set)\n"
    assert off.returncode == 1  # --require: not compiled
    on = describe(EDGENODE_NO_EXTENSIONS="0")
    assert on.stdout.startswith("edgenode data path: compiled ("), on.stdout
    assert on.returncode == 0


# Header names and values as clients and origins send them, the policy's names included in
# several spellings, so that every branch of the scan is taken.
_NAMES = st.sampled_from(
    [
        b"Host", b"HOST", b"Content-Length", b"Transfer-Encoding", b"Expect", b"Connection",
        b"connection", b"X-Forwarded-For", b"Via", b"Keep-Alive", b"Upgrade", b"TE",
        b"X-Forwarded-Proto", b"X-Edge-Request-Id", b"Accept", b"Cookie", b"Set-Cookie",
        b"X_Custom", b"x-custom", b"Date", b"Server",
    ]
)  # fmt: skip
_VALUES = st.sampled_from(
    [b"a.example", b"5", b"chunked", b"100-continue", b"close", b"keep-alive",
     b"Keep-Alive, x-custom", b"te, Cookie", b"198.51.100.7", b"1.1 proxy", b"", b"*/*"]
)  # fmt: skip
_HEADERS = st.lists(st.tuples(_NAMES, _VALUES), max_size=12)


def _scan_fields(scan: Any) -> dict[str, Any]:
    return {
        field: getattr(scan, field)
        for field in ("size", "hosts", "content_length", "transfer_encodings", "expect",
                      "forward", "forwarded_for", "via", "listed")
    }  # fmt: skip


_TWINS_ON = pytest.mark.skipif(DISABLED, reason="compares the compiled twins, which are off")


@_TWINS_ON
@settings(max_examples=300, deadline=None)
@given(request=_HEADERS, response=_HEADERS, framing=st.sampled_from([None, b"Content-Length: 5"]))
def test_the_header_policy_twins_agree(
    pure_headers: ModuleType, request: headers.Headers, response: headers.Headers,
    framing: bytes | None,
) -> None:  # fmt: skip
    ours, theirs = headers.scan_request(request), pure_headers.scan_request(request)
    assert _scan_fields(ours) == _scan_fields(theirs)
    args = {
        "client_ip": b"203.0.113.9",
        "origin_host": b"origin.example",
        "forwarded_host": b"a.example",
        "body_framing": framing,
        "forwarded_proto": b"https",
    }
    start = b"GET / HTTP/1.1"
    assert headers.origin_request_head(start, ours, **args) == pure_headers.origin_request_head(
        start, theirs, **args
    )
    lines = headers.client_response_lines(response)
    assert lines == pure_headers.client_response_lines(response)
    status = b"HTTP/1.1 200 OK"
    assert headers.message_head(status, lines) == pure_headers.message_head(status, lines)


_TEXT = st.one_of(st.none(), st.text(max_size=20))
_MS = st.one_of(st.none(), st.floats(min_value=0, max_value=1e6, allow_nan=False))


@_TWINS_ON
@settings(max_examples=300, deadline=None)
@given(
    started=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    duration=st.floats(min_value=0, max_value=1e6, allow_nan=False),
    text=_TEXT,
    status=st.one_of(st.none(), st.integers(100, 599)),
    connect=_MS,
    handshake=_MS,
    flag=st.one_of(st.none(), st.booleans()),
)
def test_the_access_line_twins_agree(
    pure_accesslog: ModuleType, started: float, duration: float, text: str | None,
    status: int | None, connect: float | None, handshake: float | None, flag: bool | None,
) -> None:  # fmt: skip
    fields: dict[str, Any] = {
        "status": status,
        "bytes_sent": 1290,
        "duration_ms": duration,
        "domain": text,
        "error_detail": text,
        "connection_reused": flag,
        "upstream_connect_ms": connect,
        "upstream_handshake_ms": handshake,
        "tls_resumed": flag,
        "origin_cert": None if text is None else {"subject": text},
    }
    args = ("id1", "203.0.113.9", "GET", "a.example", "/p\u00e9", started, 7)
    ours = accesslog.AccessRecord(*args, **fields).to_json_line()
    assert ours == pure_accesslog.AccessRecord(*args, **fields).to_json_line()
