"""The demo (SPEC §7, §8's Demo): `twistd -n edgenode --demo` shows origin SNI at work, and
the edge's own HTTPS, with no config."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from cryptography import x509
from twisted.python import usage

from edgenode.control.demo import (
    DEFAULT_VHOST,
    DEMO_LISTEN_TLS,
    announcement,
    demo_config,
    log_reaches_stdout,
    make_pki,
)
from edgenode.control.service import Options
from edgenode.errors import ConfigError
from tests.support.edge import EdgeProcess
from tests.support.net import LOOPBACK, free_port, port_accepts, read_until_close
from tests.support.waiting import wait_until

_ORIGIN = re.compile(r"one TLS origin on 127\.0\.0\.1:(\d+)")
_DIRECTORY = re.compile(r"Everything lives in (\S+), removed")
_HTTPS_CURL = re.compile(r"^  (curl --cacert .*)$", re.MULTILINE)

_HELLO_A = "hello from vhost a.demo.test (certificate for a.demo.test, SNI a.demo.test)\n"
_HELLO_B = "hello from vhost b.demo.test (certificate for b.demo.test, SNI b.demo.test)\n"


@attrs.frozen
class Demo:
    """A running demo edge and what it announced: its directory, its origin's port, the
    HTTPS port it was given and the HTTPS curl command it printed."""

    edge: EdgeProcess
    directory: Path
    origin_port: int
    tls_port: int
    https_curl: str

    @property
    def access_log(self) -> Path:
        return self.directory / "access.log"

    def access_records(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The demo's access log records, waiting (bounded) until at least `n` are written."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.access_log.read_text().splitlines() if self.access_log.exists() else []
            records = [json.loads(line) for line in lines if line.startswith("{")]
            if len(records) >= n or time.monotonic() >= deadline:
                return records
            time.sleep(0.02)


def _dns_names(tls: ssl.SSLSocket) -> list[str]:
    """The DNS subjectAltNames of the certificate the server presented on `tls`."""
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    san = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    return san.value.get_values_for_type(x509.DNSName)


def _stdout(edge: EdgeProcess) -> str:
    return edge.stdout_path.read_text(errors="replace") if edge.stdout_path.exists() else ""


@pytest.fixture
def demo(edge_factory: Callable[..., EdgeProcess]) -> Demo:
    """`twistd -n edgenode --demo` on free loopback ports, once it has announced itself."""
    listen = f"tcp:{free_port()}:interface={LOOPBACK}"
    tls_port = free_port()
    admin_listen = f"tcp:{free_port()}:interface={LOOPBACK}"
    edge = edge_factory(
        # Only tells EdgeProcess which ports to wait for; --demo reads no config file.
        {"listen": listen, "admin": {"listen": admin_listen}},
        plugin_args=[
            "--demo",
            "--listen",
            listen,
            "--listen-tls",
            f"tcp:{tls_port}:interface={LOOPBACK}",
            "--admin-listen",
            admin_listen,
        ],
    )
    wait_until(lambda: _DIRECTORY.search(_stdout(edge)), 10, "the demo's instructions")
    out = _stdout(edge)
    origin, directory, curl = _ORIGIN.search(out), _DIRECTORY.search(out), _HTTPS_CURL.search(out)
    assert origin is not None and directory is not None and curl is not None, out
    return Demo(edge, Path(directory.group(1)), int(origin.group(1)), tls_port, curl.group(1))


def test_three_domains_show_origin_sni(demo: Demo) -> None:
    """SNI a and b get their own vhosts (200); no SNI gets the default certificate (502)."""
    a = demo.edge.request("GET", "/", host="a.demo.test")
    b = demo.edge.request("GET", "/", host="b.demo.test")
    nosni = demo.edge.request("GET", "/", host="nosni.demo.test")

    assert (a.status, a.text) == (200, _HELLO_A)
    assert (b.status, b.text) == (200, _HELLO_B)
    assert nosni.status == 502
    assert nosni.header("X-Edge-Error") == "origin_cert_name_mismatch"
    assert "origin_cert_name_mismatch" in nosni.text

    records = {r["host"]: r for r in demo.access_records(3)}
    assert records["a.demo.test"]["sni"] == "a.demo.test"
    assert records["b.demo.test"]["sni"] == "b.demo.test"
    failed = records["nosni.demo.test"]
    assert (failed["status"], failed["sni"], failed["error"]) == (
        502,
        None,
        "origin_cert_name_mismatch",
    )
    assert failed["verify_name"] == "nosni.demo.test"
    assert f"origin presented a certificate for {DEFAULT_VHOST}" in failed["error_detail"]
    assert failed["origin_cert"]["dns_names"] == [DEFAULT_VHOST]
    assert {r["scheme"] for r in records.values()} == {"http"}


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl command")
def test_printed_https_curl_fetches_a_demo_test(demo: Demo) -> None:
    """The HTTPS curl command, run exactly as printed, verifies the edge against the demo CA
    and gets a.demo.test's origin content; the access log says https."""
    assert demo.https_curl == (
        f"curl --cacert {demo.directory / 'ca.pem'} "
        f"--resolve a.demo.test:{demo.tls_port}:127.0.0.1 https://a.demo.test:{demo.tls_port}/"
    )
    done = subprocess.run(
        [*shlex.split(demo.https_curl), "--silent", "--show-error", "--max-time", "10"],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )

    assert (done.returncode, done.stderr, done.stdout) == (0, "", _HELLO_A)
    (record,) = demo.access_records(1)
    assert (record["host"], record["status"], record["sni"]) == ("a.demo.test", 200, "a.demo.test")
    assert (record["scheme"], record["client_sni"]) == ("https", "a.demo.test")
    assert record["client_tls_version"] in ("TLSv1.2", "TLSv1.3")


def test_https_certificate_verifies_for_every_demo_domain(demo: Demo) -> None:
    """Trusting only the demo CA, a client verifies the edge's certificate for each of the
    three domains and gets the same answers as over HTTP."""
    trusting_demo_ca = ssl.create_default_context(cafile=str(demo.directory / "ca.pem"))

    def get(host: str) -> tuple[list[str], bytes]:
        request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
        with (
            socket.create_connection((LOOPBACK, demo.tls_port), timeout=5) as raw,
            trusting_demo_ca.wrap_socket(raw, server_hostname=host) as tls,
        ):
            names = _dns_names(tls)
            tls.sendall(request)
            answer = read_until_close(tls, time.monotonic() + 5)
        return names, answer

    edge_names = ["a.demo.test", "b.demo.test", "nosni.demo.test"]
    for host, status, body in [
        ("a.demo.test", b"200", _HELLO_A.encode()),
        ("b.demo.test", b"200", _HELLO_B.encode()),
        ("nosni.demo.test", b"502", b"origin_cert_name_mismatch"),
    ]:
        names, answer = get(host)
        assert names == edge_names
        assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer
        assert body in answer, answer


def test_origin_presents_a_certificate_per_sni(demo: Demo) -> None:
    """The demo origin, asked directly: each SNI gets its own name, no SNI the default one."""
    trusting_demo_ca = ssl.create_default_context(cafile=str(demo.directory / "ca.pem"))
    trusting_demo_ca.check_hostname = False  # the names are what this test looks at

    def names_presented(sni: str | None) -> list[str]:
        with (
            socket.create_connection((LOOPBACK, demo.origin_port), timeout=5) as raw,
            trusting_demo_ca.wrap_socket(raw, server_hostname=sni) as tls,
        ):
            return _dns_names(tls)

    assert names_presented("a.demo.test") == ["a.demo.test"]
    assert names_presented("b.demo.test") == ["b.demo.test"]
    assert names_presented(None) == [DEFAULT_VHOST]
    assert names_presented("other.demo.test") == [DEFAULT_VHOST]


def test_start_prints_what_to_try(demo: Demo) -> None:
    """Stdout and the twistd log both show the curl commands, the token and `edgenode tail`."""
    port = demo.edge.port
    for text in (_stdout(demo.edge), demo.edge.log_text()):
        for host in ("a.demo.test", "b.demo.test", "nosni.demo.test"):
            assert f"curl -H 'Host: {host}' http://127.0.0.1:{port}/" in text
        assert demo.https_curl in text
        assert f"admin token:  {demo.directory / 'admin.token'}" in text
        assert f"edgenode tail {demo.access_log}" in text
    assert (demo.directory / "admin.token").stat().st_mode & 0o777 == 0o600


def test_sigterm_stops_everything_and_removes_the_directory(demo: Demo) -> None:
    """SIGTERM exits 0; the edge (HTTP and HTTPS), admin and origin ports close and the temp
    dir is gone."""
    assert demo.edge.request("GET", "/", host="a.demo.test").status == 200
    assert demo.directory.is_dir()

    assert demo.edge.stop() == 0

    assert not demo.directory.exists()
    for port in (demo.edge.port, demo.tls_port, demo.edge.admin_port, demo.origin_port):
        assert port is not None and not port_accepts(port), port
    assert "edgenode demo stopped" in demo.edge.log_text()


def test_demo_config_is_a_validated_config(tmp_path: Path) -> None:
    """The in-memory config routes all three domains to one origin, differing only in SNI,
    and serves HTTPS on 127.0.0.1:8443 with one demo-CA certificate for all three."""
    pki = make_pki(tmp_path)
    config = demo_config(
        tmp_path, pki, 4430, listen="tcp:8080", admin_listen="tcp:8081:interface=127.0.0.1"
    )
    routes = {
        name: (domain.origins[0].address, domain.origins[0].port, domain.sni_for(domain.origins[0]))
        for name, domain in config.domains.items()
    }
    assert routes == {
        "a.demo.test": ("127.0.0.1", 4430, "a.demo.test"),
        "b.demo.test": ("127.0.0.1", 4430, "b.demo.test"),
        "nosni.demo.test": ("127.0.0.1", 4430, None),
    }
    assert config.tls.ca_file == tmp_path / "ca.pem"
    assert config.access_log == tmp_path / "access.log"
    assert config.admin.token_file == tmp_path / "admin.token"
    assert config.listen_tls == DEMO_LISTEN_TLS == "tcp:8443:interface=127.0.0.1"
    (edge_cert,) = config.tls.certificates
    assert edge_cert.names == ("a.demo.test", "b.demo.test", "nosni.demo.test")
    assert (edge_cert.cert_file, edge_cert.key_file) == (
        tmp_path / "edge.pem",
        tmp_path / "edge.key",
    )
    assert edge_cert.issuer == "CN=edgenode demo CA (throw-away),O=edgenode demo"
    assert edge_cert.key_file.stat().st_mode & 0o777 == 0o600
    text = announcement(config, 4430, tmp_path)
    # Listening on every interface: curl is pointed at loopback.
    assert "curl -H 'Host: a.demo.test' http://127.0.0.1:8080/" in text
    assert (
        f"  curl --cacert {tmp_path / 'ca.pem'} --resolve a.demo.test:8443:127.0.0.1 "
        "https://a.demo.test:8443/\n"
    ) in text


@pytest.mark.parametrize(
    ("listen", "base"),
    [
        ("tcp:8080:interface=127.0.0.1", "http://127.0.0.1:8080/"),
        ("tcp6:8080", "http://[::1]:8080/"),
        (r"tcp6:8080:interface=\:\:1", "http://[::1]:8080/"),
        ("unix:/tmp/edge.sock", "http://127.0.0.1:PORT/"),
    ],
)
def test_announcement_points_curl_at_the_listener(tmp_path: Path, listen: str, base: str) -> None:
    """curl is pointed at the listener's own address, IPv6 in brackets, a placeholder port
    for a listener that has none."""
    pki = make_pki(tmp_path)
    config = demo_config(tmp_path, pki, 4430, listen=listen, admin_listen="tcp:8081")
    assert f"curl -H 'Host: a.demo.test' {base}" in announcement(config, 4430, tmp_path)


@pytest.mark.parametrize(
    ("listen_tls", "resolve"),
    [
        ("tcp:9443", "a.demo.test:9443:127.0.0.1 https://a.demo.test:9443/"),
        ("tcp6:9443", "a.demo.test:9443:[::1] https://a.demo.test:9443/"),
        ("tcp:9443:interface=127.0.0.2", "a.demo.test:9443:127.0.0.2 https://a.demo.test:9443/"),
    ],
)
def test_announcement_resolves_the_https_name_to_its_listener(
    tmp_path: Path, listen_tls: str, resolve: str
) -> None:
    """The HTTPS curl resolves a.demo.test to the address and port `--listen-tls` gave."""
    pki = make_pki(tmp_path)
    config = demo_config(
        tmp_path, pki, 4430, listen="tcp:8080", admin_listen="tcp:8081", listen_tls=listen_tls
    )
    assert f"--resolve {resolve}\n" in announcement(config, 4430, tmp_path)


def test_announcement_quotes_a_ca_path_with_spaces(tmp_path: Path) -> None:
    """The HTTPS curl stays usable as printed when the demo's directory has a space in it."""
    directory = tmp_path / "with space"
    directory.mkdir()
    pki = make_pki(directory)
    config = demo_config(directory, pki, 4430, listen="tcp:8080", admin_listen="tcp:8081")
    (line,) = [
        line for line in announcement(config, 4430, directory).splitlines() if "--cacert" in line
    ]
    assert shlex.split(line)[:3] == ["curl", "--cacert", str(directory / "ca.pem")]


def test_a_listen_tls_that_is_not_tcp_is_a_config_error(tmp_path: Path) -> None:
    """`--demo --listen-tls unix:...` fails the way a config file's listen_tls would."""
    pki = make_pki(tmp_path)
    with pytest.raises(ConfigError, match="listen_tls"):
        demo_config(
            tmp_path,
            pki,
            4430,
            listen="tcp:8080",
            admin_listen="tcp:8081",
            listen_tls="unix:/tmp/edge-tls.sock",
        )


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        ([], "--config FILE is required (or --demo)"),
        (["--demo", "--config", "x.yaml"], "--demo builds its own config"),
    ],
)
def test_options_need_a_config_or_the_demo(argv: list[str], error: str) -> None:
    """Without --config the edge needs --demo; with --demo a config file is refused."""
    with pytest.raises(usage.UsageError, match=re.escape(error)):
        Options().parseOptions(argv)


def test_options_accept_the_demo_alone() -> None:
    """`--demo` alone (optionally with listener overrides) is a complete command line."""
    options = Options()
    options.parseOptions(["--demo", "--listen", "tcp:9000", "--listen-tls", "tcp:9443"])
    assert options["demo"] and options["listen"] == "tcp:9000" and options["config"] is None
    assert options["listen-tls"] == "tcp:9443"


@pytest.mark.parametrize(
    ("twistd_options", "expected"),
    [
        (None, False),
        ({"nodaemon": 1, "logfile": None}, True),
        ({"nodaemon": 1, "logfile": "-"}, True),
        ({"nodaemon": 1, "logfile": "twistd.log"}, False),
        ({"nodaemon": 0, "logfile": None}, False),
        ({"nodaemon": 1, "logfile": None, "syslog": 1}, False),
    ],
)
def test_instructions_are_printed_unless_the_log_is_stdout(
    twistd_options: dict[str, Any] | None, expected: bool
) -> None:
    """The demo prints its instructions itself only where the twistd log would not show them."""
    assert log_reaches_stdout(twistd_options) is expected
