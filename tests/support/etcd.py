"""A real etcd on 127.0.0.1 for the cluster tests: started, stopped and started again on
the same ports and data directory (an outage and its end), wiped (a restore from an
older backup), and written to through its HTTP/JSON gateway with urllib, so that no test
depends on the client under test to set up what that client should see.

Each server listens for clients on two ports: `endpoint`, the one the code under test
is given, and `admin_endpoint`, the test's own, which also stays up while `start(
serve_clients=False)` keeps `endpoint` closed: etcd moves on (writes, compaction) while
the code under test cannot reach it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from . import processes
from .net import LOOPBACK, free_port, wait_for_port

INSTALL_HINT = (
    "etcd is needed by tests/test_etcd.py and was not found on PATH or at /usr/bin/etcd; "
    "install Debian's packages (`apt-get install -y etcd-server etcd-client`, which .ci/run does)"
)

def etcd_binary(search_path: str | None = None, fallback: str = "/usr/bin/etcd") -> str:
    """The etcd executable (PATH, then Debian's location); RuntimeError when not installed."""
    return processes.find_binary("etcd", fallback, INSTALL_HINT, search_path)


def _distinct_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode("ascii")


class EtcdServer:
    """One single-member etcd cluster in `tmpdir`, on ports picked at the first `start()`
    and kept for the server's life (so a restart is the same endpoint coming back)."""

    address = LOOPBACK

    def __init__(self, tmpdir: Path) -> None:
        self.dir = Path(tmpdir)
        self.data_dir = self.dir / "data"
        self.log_path = self.dir / "etcd.log"
        self.name = f"edgenode-test-{uuid.uuid4().hex[:12]}"
        self.binary = etcd_binary()
        self.client_port = 0
        self.admin_port = 0
        self.peer_port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """The client URL the code under test is given."""
        return f"http://{self.address}:{self.client_port}"

    @property
    def admin_endpoint(self) -> str:
        """The test's own client URL (the helpers below use it)."""
        return f"http://{self.address}:{self.admin_port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- life --

    def start(self, *, serve_clients: bool = True, timeout: float = 20.0) -> EtcdServer:
        """Run etcd until it answers /health; `serve_clients=False` keeps `endpoint` closed."""
        if self.running:
            raise RuntimeError(f"etcd {self.name} is already running")
        first = self.client_port == 0
        self.dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(3 if first else 1):
            if first:
                self.client_port, self.admin_port, self.peer_port = _distinct_ports(3)
            self._launch(serve_clients)
            try:
                self._wait_healthy(serve_clients, timeout)
                return self
            except (TimeoutError, ConnectionRefusedError) as exc:
                log = self.log()
                self._kill()
                # Another process may have taken a free port in between: retry on new ones.
                if first and "address already in use" in log and attempt < 2:
                    continue
                raise RuntimeError(
                    f"etcd did not start (ports {self.client_port}, {self.admin_port}, "
                    f"{self.peer_port}): {exc}\n--- {self.log_path}:\n{log[-4000:]}"
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; its ports are free when this returns."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        processes.kill_group(proc)

    def wipe(self) -> None:
        """Remove the data directory (stopped first): the next start is a new, empty etcd at
        revision 1 on the same endpoint, like one restored from a much older backup."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the test's own reads and writes, through the gateway on the admin port --

    def call(self, path: str, body: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """POST `body` to the gateway's `path` (`/v3/kv/put`); the JSON answer."""
        request = urllib.request.Request(
            self.admin_endpoint + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                answer: dict[str, Any] = json.loads(response.read())
                return answer
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"etcd {path} failed: {exc.code} {exc.read()[:500]!r}") from None

    def put(self, key: str, value: str | bytes) -> int:
        """Set `key`; the revision of the write."""
        answer = self.call("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})
        return int(answer["header"]["revision"])

    def delete(self, key: str) -> int:
        """Delete `key`; the revision after it (unchanged if there was no such key)."""
        answer = self.call("/v3/kv/deleterange", {"key": _b64(key)})
        return int(answer["header"]["revision"])

    def compact(self, revision: int) -> None:
        """Drop the history before `revision`, waiting until it is physically gone."""
        self.call("/v3/kv/compaction", {"revision": str(revision), "physical": True})

    def revision(self) -> int:
        """etcd's current revision."""
        answer = self.call("/v3/kv/range", {"key": _b64("\0"), "limit": "1", "keys_only": True})
        return int(answer["header"]["revision"])

    def enable_auth(self, password: str = "test-root-password") -> str:
        """Turn on etcd's authentication (user root) and return a token for it. The helpers
        above send no token, so they cannot be used afterwards."""
        self.call("/v3/auth/user/add", {"name": "root", "password": password})
        self.call("/v3/auth/user/grant", {"user": "root", "role": "root"})
        self.call("/v3/auth/enable", {})
        answer = self.call("/v3/auth/authenticate", {"name": "root", "password": password})
        return str(answer["token"])

    # -- internals --

    def _url(self, port: int) -> str:
        return f"http://{self.address}:{port}"

    def _launch(self, serve_clients: bool) -> None:
        ports = [self.client_port, self.admin_port] if serve_clients else [self.admin_port]
        client_urls = ",".join(self._url(port) for port in ports)
        peer_url = self._url(self.peer_port)
        args = [
            self.binary,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={client_urls}",
            f"--advertise-client-urls={client_urls}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster={self.name}={peer_url}",
            f"--initial-cluster-token={self.name}",
            "--initial-cluster-state=new",
            # One member, on loopback: a short election timeout only makes it a leader sooner.
            "--heartbeat-interval=10",
            "--election-timeout=100",
            "--logger=zap",
            "--log-level=warn",
        ]
        with open(self.log_path, "ab") as out:
            out.write(f"--- start {' '.join(args)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._proc = proc
        processes.running.add(proc)

    def _wait_healthy(self, serve_clients: bool, timeout: float) -> None:
        """Poll /health on the admin port until etcd has a leader and serves reads."""
        deadline = time.monotonic() + timeout
        wait_for_port(self.admin_port, timeout=timeout, alive=lambda: self.running)
        while not self._healthy():
            if not self.running:
                raise ConnectionRefusedError(f"etcd {self.name} exited while starting")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"etcd {self.name} was not healthy within {timeout}s")
            time.sleep(0.02)
        if serve_clients:
            wait_for_port(self.client_port, timeout=max(0.1, deadline - time.monotonic()))

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.admin_endpoint + "/health", timeout=1) as response:
                return bool(json.loads(response.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            processes.kill_group(proc)


def started(server: EtcdServer) -> EtcdServer:
    """`server`, started; a test fails (never skips) when etcd is missing or will not start."""
    try:
        return server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
