"""A real nginx origin on 127.0.0.1: a server block per SNI name; unknown names are rejected."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from . import processes
from .net import LOOPBACK, free_port, wait_for_port
from .pki import PKI

INSTALL_HINT = (
    "nginx is needed by the integration tests and was not found on PATH or at /usr/sbin/nginx; "
    "install Debian's package (`apt-get install -y --no-install-recommends nginx`, "
    "which .ci/run does)"
)

_BLOCK = """
    server {{
        listen {address}:{port} ssl;
        server_name {name};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            default_type application/json;
            return 200 '{{"block":"{name}",{facts}}}';
        }}
        location /files/ {{
            root {www};
        }}
    }}
"""

# What each JSON answer reports besides its block, as nginx variables.
_FACTS = (
    '"sni":"$ssl_server_name","host":"$host","conn":"$connection",'
    '"req":"$connection_requests","uri":"$request_uri"'
)
_LOG_FORMAT = (
    '\'$connection $connection_requests "$ssl_server_name" "$host" '
    '"$request" $status $ssl_protocol\''
)

_CONF = """
daemon off;
master_process on;
worker_processes 1;
{user}
pid {dir}/nginx.pid;
error_log {dir}/error.log notice;

events {{
    worker_connections 512;
}}

http {{
    log_format edge {log_format};
    access_log {dir}/access.log edge;
    client_body_temp_path {dir}/tmp/client_body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    # The TLS version is settled by the default server's settings, before SNI picks a block.
    ssl_protocols TLSv1.2 TLSv1.3;

    server {{
        listen {address}:{port} ssl default_server;
        ssl_reject_handshake on;
        location / {{
            default_type application/json;
            return 404 '{{"block":"default",{facts}}}';
        }}
    }}
{blocks}
{extra}
}}
"""


def nginx_binary(search_path: str | None = None, fallback: str = "/usr/sbin/nginx") -> str:
    """The nginx executable (PATH, then Debian's location); RuntimeError when not installed."""
    return processes.find_binary("nginx", fallback, INSTALL_HINT, search_path)


class NginxOrigin:
    """nginx serving `names` over TLS with trustme leaves, on one port of 127.0.0.1.

    Each name has its own server block answering `GET /...` with JSON
    `{"block", "sni", "host", "conn", "req", "uri"}` and static files under
    `/files/` (`/files/1k`: 1024 bytes, `/files/1m`: 1 MiB of the
    `origin.pattern`). The default server rejects handshakes without a known
    SNI (`ssl_reject_handshake on`); nginx then picks the server block by the
    Host header, so a request whose Host names no block gets a 404 with
    `"block": "default"`. `extra_server_blocks` is nginx text placed
    inside `http {}`; `@PORT@` and `@DIR@` in it are replaced by the port and
    the working directory.
    """

    address = LOOPBACK

    def __init__(
        self,
        pki: PKI,
        tmpdir: Path,
        names: Iterable[str] = ("a.test", "b.test"),
        extra_server_blocks: str = "",
    ) -> None:
        self.pki = pki
        self.dir = Path(tmpdir)
        self.names = tuple(names)
        self.extra_server_blocks = extra_server_blocks
        self.binary = nginx_binary()
        self.port = 0
        self.conf_path = self.dir / "nginx.conf"
        self.error_log_path = self.dir / "error.log"
        self.access_log_path = self.dir / "access.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0, attempts: int = 3) -> NginxOrigin:
        """Write the config and run nginx until its port accepts connections."""
        self._prepare_files()
        for attempt in range(attempts):
            self.port = free_port()
            self._write_conf()
            self._launch()
            try:
                wait_for_port(self.port, timeout=timeout, alive=self._alive)
                return self
            except (TimeoutError, ConnectionRefusedError) as exc:
                log = self.error_log()
                self._kill()
                # Another process may have taken the free port in between: retry on a new one.
                if "Address already in use" in log and attempt + 1 < attempts:
                    continue
                raise RuntimeError(
                    f"nginx did not start on {self.address}:{self.port}: {exc}\n"
                    f"--- {self.error_log_path}:\n{log}\n--- output:\n{self._output()}"
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGQUIT), then SIGKILL to the whole process group."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        processes.kill_group(proc)  # also any worker a SIGQUIT left behind

    def error_log(self) -> str:
        try:
            return self.error_log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no error log)"

    def access_log_lines(self) -> list[str]:
        try:
            return self.access_log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def __enter__(self) -> NginxOrigin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals --

    def _prepare_files(self) -> None:
        from .origin import pattern  # the same deterministic bytes as the in-process origin

        files = self.dir / "www" / "files"
        files.mkdir(parents=True, exist_ok=True)
        (files / "1k").write_bytes(pattern(1024))
        (files / "1m").write_bytes(pattern(1024 * 1024))
        (self.dir / "tmp").mkdir(exist_ok=True)

    def _write_conf(self) -> None:
        blocks = []
        for name in self.names:
            cert, key = self.pki.write(self.pki.leaf(name), f"nginx-{name}")
            blocks.append(
                _BLOCK.format(
                    address=self.address,
                    port=self.port,
                    name=name,
                    cert=cert,
                    key=key,
                    www=self.dir / "www",
                    facts=_FACTS,
                )
            )
        extra = self.extra_server_blocks.replace("@PORT@", str(self.port)).replace(
            "@DIR@", str(self.dir)
        )
        # As root, workers would run as `nobody`, which cannot enter pytest's 0700 temp dirs.
        user = "user root;" if os.geteuid() == 0 else ""
        self.conf_path.write_text(
            _CONF.format(
                user=user,
                dir=self.dir,
                address=self.address,
                port=self.port,
                blocks="".join(blocks),
                facts=_FACTS,
                log_format=_LOG_FORMAT,
                extra=extra,
            )
        )

    def _launch(self) -> None:
        self.error_log_path.unlink(missing_ok=True)
        with open(self.dir / "nginx.out", "wb") as out:
            self._proc = subprocess.Popen(
                [
                    self.binary,
                    "-c",
                    str(self.conf_path),
                    "-p",
                    str(self.dir),
                    "-e",
                    str(self.error_log_path),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: workers die with the master
            )
        processes.running.add(self._proc)

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            processes.kill_group(proc)

    def _output(self) -> str:
        try:
            return (self.dir / "nginx.out").read_text(errors="replace")
        except FileNotFoundError:
            return ""


@contextlib.contextmanager
def running_nginx(pki: PKI, tmpdir: Path, **options: Any) -> Iterator[NginxOrigin]:
    """A started NginxOrigin (`options` as its constructor takes them), stopped on exit.
    No nginx installed fails the test loudly: it is never skipped."""
    try:
        nginx = NginxOrigin(pki, tmpdir, **options)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    nginx.start()
    try:
        yield nginx
    finally:
        nginx.stop()
