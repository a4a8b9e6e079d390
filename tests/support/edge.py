"""The edge under test: a real `twistd -n edgenode` subprocess, and blocking clients for it."""

from __future__ import annotations

import atexit
import http.client
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import yaml

from .net import LOOPBACK, free_port, read_until_close, wait_for_port
from .waiting import wait_until

# twistd has no `python -m` entry point; this runs the same thing as the console script.
_TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"

# A DeprecationWarning raised from edgenode's own code, as twistd logs it.
_OWN_DEPRECATION = re.compile(r"edgenode/[\w/]+\.py:\d+: DeprecationWarning: .*")

Headers = Iterable[tuple[str, str]] | Mapping[str, str]

# Edges still running, killed at interpreter exit should a test run end abnormally.
_running: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_running):
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@attrs.frozen
class Response:
    """One HTTP response as the client saw it; headers in wire order, repeats kept."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        values = self.header_all(name)
        return values[0] if values else None

    def header_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for n, v in self.headers if n.lower() == lname]

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def endpoint_port(endpoint: str) -> int | None:
    """The port of a `tcp:` server endpoint string, or None for other kinds."""
    match = re.match(r"^tcp6?:(?:port=)?(\d+)(?::|$)", endpoint)
    return int(match.group(1)) if match else None


class EdgeProcess:
    """The edge, run as `twistd -n edgenode --config <tmp_path>/edgenode.yaml` with cwd=tmp_path.

    `config` is the SPEC §3 mapping; `listen`, `admin.listen`,
    `admin.token_file` and `access_log` are filled in when absent (loopback
    ports picked here, `admin.token`, `access.log`). A tcp: `listen_tls` is
    left as given; its port is `https_port`, and `start()` waits for it too.
    The admin token file is written beforehand with a random token
    (`admin_token`) unless it exists.
    `plugin`/`plugin_args` change the twistd sub-command, for testing this
    class itself.
    """

    def __init__(
        self,
        tmp_path: Path,
        config: Mapping[str, Any],
        *,
        plugin: str = "edgenode",
        plugin_args: Iterable[str] | None = None,
        env: Mapping[str, str] | None = None,
        wait_admin: bool = True,
    ) -> None:
        self.dir = Path(tmp_path)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config: dict[str, Any] = _plain(config)
        self.config.setdefault("listen", f"tcp:{free_port()}:interface={LOOPBACK}")
        admin = self.config.setdefault("admin", {})
        if isinstance(admin, dict):
            admin.setdefault("listen", f"tcp:{free_port()}:interface={LOOPBACK}")
            admin.setdefault("token_file", "admin.token")
        self.config.setdefault("access_log", "access.log")
        self.config_path = self.dir / "edgenode.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

        port = endpoint_port(str(self.config["listen"]))
        if port is None:
            raise ValueError(
                f"listen must be a tcp: endpoint for tests, got {self.config['listen']!r}"
            )
        self.port: int = port
        # The HTTPS listener (SPEC §8), when the config has a tcp: `listen_tls`.
        listen_tls = self.config.get("listen_tls")
        self.https_port: int | None = endpoint_port(str(listen_tls)) if listen_tls else None
        self.admin_port: int | None = None
        self.admin_token: str | None = None
        if isinstance(admin, dict):
            self.admin_port = endpoint_port(str(admin.get("listen", "")))
            token_path = self.dir / str(admin["token_file"])
            if not token_path.exists():
                token_path.write_text(secrets.token_hex(16) + "\n")
                token_path.chmod(0o600)
            self.admin_token = token_path.read_text().strip()

        self.plugin = plugin
        self.plugin_args = (
            list(plugin_args) if plugin_args is not None else ["--config", str(self.config_path)]
        )
        self.env = dict(env) if env is not None else None
        self.wait_admin = wait_admin
        self.log_path = self.dir / "twistd.log"
        self.stdout_path = self.dir / "twistd.stdout"
        self.stderr_path = self.dir / "twistd.stderr"
        self.returncode: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle --

    @property
    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-W",
            "default::DeprecationWarning",  # shown, so they reach the twistd log
            "-c",
            _TWISTD,
            "-n",
            "--pidfile=",
            "--logfile",
            str(self.log_path),
            self.plugin,
            *self.plugin_args,
        ]

    def start(self, timeout: float = 20.0) -> EdgeProcess:
        """Run the edge and wait until its listen port (and admin port) accept connections."""
        if self.alive():
            raise AssertionError("this edge is already running")
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        if self.env:
            env.update(self.env)
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self._proc = subprocess.Popen(
                self.argv,
                cwd=self.dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        _running.add(self._proc)
        deadline = time.monotonic() + timeout
        ports = [("listen", self.port)]
        if self.https_port is not None:
            ports.append(("listen_tls", self.https_port))  # a connect without a byte
        if self.wait_admin and self.admin_port is not None:
            ports.append(("admin.listen", self.admin_port))
        for what, port in ports:
            try:
                wait_for_port(port, timeout=max(0.0, deadline - time.monotonic()), alive=self.alive)
            except (TimeoutError, ConnectionRefusedError) as exc:
                self._kill()
                raise AssertionError(
                    self._explain(f"the edge did not start ({what} port {port}): {exc}")
                ) from None
        return self

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def signal(self, signum: int) -> None:
        """Send a signal (SIGHUP reloads, SIGUSR1 reopens the access log)."""
        if self._proc is None or self._proc.poll() is not None:
            raise AssertionError(self._explain("the edge is not running"))
        self._proc.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; return the exit code. Fails (after SIGKILL) if it does not exit."""
        proc = self._proc
        if proc is None:
            return self.returncode if self.returncode is not None else 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill()
                raise AssertionError(
                    self._explain(f"the edge did not exit within {timeout}s of SIGTERM")
                ) from None
        self.returncode = proc.returncode
        self._proc = None
        _running.discard(proc)
        return self.returncode

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        self.returncode = proc.returncode
        _running.discard(proc)

    def __enter__(self) -> EdgeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- clients --

    def request(
        self,
        method: str,
        path: str,
        *,
        host: str | None,
        headers: Headers = (),
        body: bytes | Iterable[bytes] | None = None,
        timeout: float = 10.0,
    ) -> Response:
        """One request on a new connection. `host=None` sends no Host header.

        A bytes body gets a Content-Length unless `headers` set one or
        Transfer-Encoding; with `Transfer-Encoding: chunked` the body (bytes
        or an iterable of chunks) is sent chunked.
        """
        conn = self.connection(timeout=timeout)
        try:
            return send(conn, method, path, host=host, headers=headers, body=body)
        finally:
            conn.close()

    def connection(self, timeout: float = 10.0) -> http.client.HTTPConnection:
        """A keep-alive client connection to the edge; use `send()` or http.client directly."""
        return http.client.HTTPConnection(LOOPBACK, self.port, timeout=timeout)

    def raw(self, data: bytes, timeout: float = 5.0, *, half_close: bool = False) -> bytes:
        """Send raw bytes on a new connection; return what arrives until close or `timeout`."""
        deadline = time.monotonic() + timeout
        with socket.create_connection((LOOPBACK, self.port), timeout=timeout) as sock:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            return read_until_close(sock, deadline)

    def admin_request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = "",
        body: Any = None,
        timeout: float = 10.0,
    ) -> Response:
        """A request to the admin listener; token "" means this edge's token, None sends none."""
        if self.admin_port is None:
            raise AssertionError("this edge has no tcp admin listener")
        token = self.admin_token if token == "" else token
        headers = [("Authorization", f"Bearer {token}")] if token is not None else []
        payload = None
        if body is not None:
            payload = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers.append(("Content-Type", "application/json"))
        conn = http.client.HTTPConnection(LOOPBACK, self.admin_port, timeout=timeout)
        try:
            host = f"{LOOPBACK}:{self.admin_port}"
            return send(conn, method, path, host=host, headers=headers, body=payload)
        finally:
            conn.close()

    # -- what the edge wrote --

    @property
    def access_log_path(self) -> Path:
        value = str(self.config.get("access_log", "access.log"))
        return self.stdout_path if value == "-" else self.dir / value

    def access_records(self, n: int | None = None, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The access log's JSON records; with `n`, wait (bounded) until at least n exist."""
        deadline = time.monotonic() + timeout
        while True:
            records = self._read_access_records()
            if n is None or len(records) >= n:
                return records
            if time.monotonic() >= deadline:
                raise AssertionError(
                    self._explain(
                        f"expected at least {n} access log records within {timeout}s, "
                        f"found {len(records)}: {records!r}"
                    )
                )
            time.sleep(0.02)

    def record(self, request: str | Response | None, timeout: float = 5.0) -> dict[str, Any]:
        """The access-log record of a request id, or of a response by its X-Edge-Request-Id
        (bounded wait: the log is flushed at least once a second)."""
        if isinstance(request, Response):
            request = request.header("X-Edge-Request-Id")
        request_id = request
        assert request_id, f"no request id: {request!r}"
        found: list[dict[str, Any]] = []

        def logged() -> bool:
            found[:] = [r for r in self.access_records() if r["request_id"] == request_id]
            return bool(found)

        wait_until(logged, timeout, f"the access-log record of {request_id}")
        return found[0]

    def _read_access_records(self) -> list[dict[str, Any]]:
        try:
            text = self.access_log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        records = []
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n"):
                break  # a line still being written
            line = line.strip()
            if line.startswith("{"):
                records.append(json.loads(line))
        return records

    def log_text(self) -> str:
        """The twistd log (rotated parts are not included)."""
        return _read(self.log_path)

    def teardown_problems(self) -> list[str]:
        """Stop the edge if it still runs; report what the contract forbids.

        A test that called `stop()` itself owns the exit code. Otherwise the
        edge must still be running, exit 0 on SIGTERM (SPEC §2), and have
        logged no DeprecationWarning from edgenode's own code and no unhandled error.
        """
        problems = []
        if self._proc is not None:
            if not self.alive():
                problems.append(self._explain("the edge exited during the test"))
                self._kill()
            else:
                try:
                    code = self.stop()
                except AssertionError as exc:
                    problems.append(str(exc))
                else:
                    if code != 0:
                        problems.append(self._explain(f"the edge exited with {code} on SIGTERM"))
        for warning in self.own_deprecations():
            problems.append(f"edgenode raised a DeprecationWarning: {warning}")
        if "Unhandled Error" in self.log_text() or "Traceback" in self.log_text():
            # An exception that escaped to the reactor is a bug whatever the client saw.
            problems.append(self._explain("the edge logged an unhandled error"))
        return problems

    def own_deprecations(self) -> list[str]:
        """DeprecationWarnings raised from edgenode's code, as found in the twistd log."""
        return _OWN_DEPRECATION.findall(self.log_text())

    def _explain(self, headline: str) -> str:
        output = self.log_text() + _read(self.stderr_path) + _read(self.stdout_path)
        return (
            f"{headline}\n"
            f"command: {self.argv!r} (cwd {self.dir})\n"
            f"exit code: {self._proc.poll() if self._proc else self.returncode}\n"
            f"--- {self.log_path.name}:\n{_tail(self.log_text())}\n"
            f"--- stderr:\n{_tail(_read(self.stderr_path))}\n"
            f"--- stdout:\n{_tail(_read(self.stdout_path))}" + _hint(output, self.plugin)
        )


def send(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    *,
    host: str | None,
    headers: Headers = (),
    body: bytes | Iterable[bytes] | None = None,
) -> Response:
    """Send one request on `conn` (which may be reused) and read the whole response."""
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    names = {name.lower() for name, _ in pairs}
    chunked = any(
        name.lower() == "transfer-encoding" and "chunked" in value.lower() for name, value in pairs
    )
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    if host is not None:
        conn.putheader("Host", host)
    for name, value in pairs:
        conn.putheader(name, value)
    if (
        isinstance(body, bytes | bytearray)
        and "content-length" not in names
        and "transfer-encoding" not in names
    ):
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body, encode_chunked=chunked)
    resp = conn.getresponse()
    data = resp.read()
    return Response(resp.status, resp.reason, list(resp.getheaders()), data)


def _plain(value: Any) -> Any:
    """A deep copy of a config value that yaml.safe_dump accepts (paths become strings)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _tail(text: str, limit: int = 8000) -> str:
    return text if len(text) <= limit else "...\n" + text[-limit:]


def _hint(output: str, plugin: str) -> str:
    if f"Unknown command: {plugin}" in output:
        return (
            f"\nhint: twistd has no `{plugin}` plugin: install the project "
            "(`python3 -m pip install -e '.[test]'`) and regenerate the plugin cache "
            '(`python3 -c "from twisted.plugin import IPlugin, getPlugins; '
            'list(getPlugins(IPlugin))"`); .ci/run does both'
        )
    return ""
