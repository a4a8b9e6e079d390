"""Loopback ports for test servers: picking a free one, waiting, bounded, until one accepts,
and reading what a server sends until it closes."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on `host` that nothing listens on right now.

    The kernel picks it; the socket is closed again, so another process could
    take it before the caller binds. Callers that start a server on it retry
    on "address in use" where that matters.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_accepts(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    """Whether a TCP connection to host:port succeeds now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(
    port: int,
    host: str = LOOPBACK,
    *,
    timeout: float = 10.0,
    alive: Callable[[], bool] | None = None,
    interval: float = 0.02,
) -> None:
    """Poll until host:port accepts a TCP connection, for at most `timeout` seconds.

    `alive`, when given, is checked before each attempt; once it returns False
    (the server process exited) waiting stops with ConnectionRefusedError.
    Raises TimeoutError when the port never opened.
    """
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None and not alive():
            raise ConnectionRefusedError(f"server for {host}:{port} exited before it listened")
        if port_accepts(port, host):
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"nothing accepted connections on {host}:{port} within {timeout}s")
        time.sleep(interval)


def read_until_close(sock: socket.socket, deadline: float) -> bytes:
    """Everything `sock` receives until the peer closes or resets it, or `deadline` passes
    (a time.monotonic() value)."""
    chunks = []
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)
