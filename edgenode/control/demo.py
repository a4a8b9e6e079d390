"""The demo (SPEC §7, §8): a throw-away CA, one local TLS origin with a certificate per SNI,
the edge's own certificate, its config.

`twistd -n edgenode --demo` runs the production `EdgeService` on a `Config` built by
`config_from_mapping`, the same validation a YAML file goes through; only the origin is
added. The origin listens on 127.0.0.1 (an ephemeral port) and presents:

- for SNI `a.demo.test` and `b.demo.test`, a certificate for that name;
- for a handshake without SNI (or an unknown name), the default certificate, for
  `default.demo.test`, as most servers do.

Every vhost answers any request with one line naming the vhost, its certificate and the
SNI it was reached with. The edge listens for HTTP and, on `listen_tls` (127.0.0.1:8443 by
default), for HTTPS with one demo-CA certificate naming all three of its domains; the
announcement's curl trusts that CA with `--cacert` and reaches the names with `--resolve`.
Everything (certificates, the edge's key, admin token, access log) lives in one temporary
directory, removed when the demo stops. The origin is a small twisted.web site: it is not
the data path.
"""

from __future__ import annotations

import atexit
import datetime
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.application import service
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IListeningPort, IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from edgenode.config import Config, config_from_mapping
from edgenode.endpoints import parse_server_endpoint
from edgenode.reactors import IEdgeReactor

log = Logger()

DEMO_LISTEN = "tcp:8080:interface=127.0.0.1"
DEMO_LISTEN_TLS = "tcp:8443:interface=127.0.0.1"
DEMO_ADMIN_LISTEN = "tcp:8081:interface=127.0.0.1"
LOOPBACK = "127.0.0.1"

VHOSTS = ("a.demo.test", "b.demo.test")  # names the origin has a certificate for, by SNI
DEFAULT_VHOST = "default.demo.test"  # the certificate for handshakes without SNI
NO_SNI_DOMAIN = "nosni.demo.test"  # the edge domain with origin SNI off
EDGE_DOMAINS = (*VHOSTS, NO_SNI_DOMAIN)  # the edge's domains, all named by its certificate

_VALIDITY = datetime.timedelta(days=30)


# --- Certificates --------------------------------------------------------------------------


@attrs.frozen
class Leaf:
    """One certificate of the origin and its key (kept in memory only)."""

    name: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@attrs.frozen
class DemoPKI:
    """The throw-away CA (written to `ca_file`: the edge trusts it for the origin, and curl
    for the edge), the origin's leaves, and the edge's own certificate and key files."""

    ca_file: Path
    leaves: Mapping[str, Leaf]  # by DNS name: the SNI vhosts and the default
    edge_cert_file: Path  # one leaf for every name in EDGE_DOMAINS (SPEC §8)
    edge_key_file: Path


def make_pki(directory: Path) -> DemoPKI:
    """A new CA, one origin leaf per vhost plus the default, and the edge's leaf for all its
    domains; certificates written as PEM files.

    EC P-256 keys: generating them takes milliseconds. The origin's private keys never touch
    the disk; the edge's is written (mode 0600), because the config reads certificates from
    files.
    """
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgenode demo"),
            x509.NameAttribute(NameOID.COMMON_NAME, "edgenode demo CA (throw-away)"),
        ]
    )
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    leaves = {}
    for name in (*VHOSTS, DEFAULT_VHOST):
        cert, key = _leaf((name,), ca_name, ca_key, now)
        (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        leaves[name] = Leaf(name, cert, key)

    edge_cert, edge_key = _leaf(EDGE_DOMAINS, ca_name, ca_key, now)
    edge_cert_file = directory / "edge.pem"
    edge_cert_file.write_bytes(edge_cert.public_bytes(serialization.Encoding.PEM))
    edge_key_file = directory / "edge.key"
    _write_private(
        edge_key_file,
        edge_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return DemoPKI(
        ca_file=ca_file, leaves=leaves, edge_cert_file=edge_cert_file, edge_key_file=edge_key_file
    )


def _leaf(
    names: tuple[str, ...],
    ca_name: x509.Name,
    ca_key: ec.EllipticCurvePrivateKey,
    now: datetime.datetime,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A server certificate for `names` (DNS SANs; the CN is the first), signed by the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (
        _builder(subject, ca_name, key.public_key(), now)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in names]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _write_private(path: Path, data: bytes) -> None:
    """Write a new file readable by its owner only (a private key)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "wb") as f:
        f.write(data)


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: Any, now: datetime.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))  # tolerate a little clock skew
        .not_valid_after(now + _VALIDITY)
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


# --- The origin ----------------------------------------------------------------------------


@implementer(IOpenSSLServerConnectionCreator)
class OriginTLS:
    """Server-side TLS that picks the certificate by SNI, like a virtual-hosting origin.

    Every context is complete before the first connection and never changed afterwards;
    the servername callback only switches a connection to the context of its SNI.
    """

    def __init__(self, pki: DemoPKI) -> None:
        self._by_sni = {name: _server_context(pki.leaves[name]) for name in VHOSTS}
        self._default = _server_context(pki.leaves[DEFAULT_VHOST])
        self._default.set_tlsext_servername_callback(self._servername)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self._default, None)

    def _servername(self, conn: SSL.Connection) -> None:
        sni = conn.get_servername()
        context = self._by_sni.get(sni.decode("ascii", "replace").lower()) if sni else None
        if context is not None:
            conn.set_context(context)


def _server_context(leaf: Leaf) -> SSL.Context:
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.use_certificate(leaf.cert)
    context.use_privatekey(leaf.key)
    context.check_privatekey()
    return context


class VhostResource(Resource):
    """Answers every request with the vhost that served it: its certificate and the SNI."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        conn = request.channel.transport.getHandle()
        cert = conn.get_certificate(as_cryptography=True)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        vhost = names.get_values_for_type(x509.DNSName)[0]
        sni = conn.get_servername()
        how = f"SNI {sni.decode('ascii', 'replace')}" if sni else "no SNI"
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return f"hello from vhost {vhost} (certificate for {vhost}, {how})\n".encode()


class _QuietSite(Site):
    """The origin's site: the edge's access log already records every request."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


# --- Config --------------------------------------------------------------------------------


def demo_config(
    directory: Path,
    pki: DemoPKI,
    origin_port: int,
    *,
    listen: str,
    admin_listen: str,
    listen_tls: str = DEMO_LISTEN_TLS,
) -> Config:
    """The demo's config, validated by `config_from_mapping` like any YAML file would be.

    Three domains, one origin IP:port: SNI sent as an explicit value, SNI sent as the
    default (origin_host), and no SNI at all (so the origin's default certificate comes
    back and does not cover the name the edge verifies against). HTTPS for clients on
    `listen_tls`, with the edge's demo-CA certificate for all three (SPEC §8).
    """
    origins = [{"address": LOOPBACK, "port": origin_port}]
    data = {
        "listen": listen,
        "listen_tls": listen_tls,
        "admin": {"listen": admin_listen, "token_file": "admin.token"},
        "access_log": "access.log",
        "tls": {
            "ca_file": pki.ca_file.name,
            "certificates": [
                {"cert_file": pki.edge_cert_file.name, "key_file": pki.edge_key_file.name}
            ],
        },
        "domains": {
            "a.demo.test": {
                "origin_sni": {"enabled": True, "value": "a.demo.test"},
                "origins": origins,
            },
            "b.demo.test": {"origin_sni": {"enabled": True}, "origins": origins},
            NO_SNI_DOMAIN: {
                "origin_host": NO_SNI_DOMAIN,
                "origin_sni": {"enabled": False},
                "origins": origins,
            },
        },
    }
    return config_from_mapping(data, base_dir=directory)


# --- The service ---------------------------------------------------------------------------


class DemoService(service.MultiService):
    """The demo origin and its directory; the edge runs as a child, against `config`.

    Made before twistd starts anything: the origin listens at once, because the config
    needs its port. On stop the edge drains first; then the origin closes and the
    directory is removed (also at interpreter exit, should the edge fail to start).
    """

    def __init__(
        self,
        reactor: IEdgeReactor,
        *,
        listen: str = DEMO_LISTEN,
        listen_tls: str = DEMO_LISTEN_TLS,
        admin_listen: str = DEMO_ADMIN_LISTEN,
        echo: bool = True,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.echo = echo
        self.directory = Path(tempfile.mkdtemp(prefix="edgenode-demo-"))
        atexit.register(self._remove_directory)
        try:
            pki = make_pki(self.directory)
            site = _QuietSite(VhostResource())
            tls_factory = TLSMemoryBIOFactory(OriginTLS(pki), False, site)
            tls_factory.noisy = False
            # Twisted types listenTCP's factory as a ServerFactory; any IProtocolFactory works.
            self.origin_port = reactor.listenTCP(
                0,
                tls_factory,  # type: ignore[arg-type]
                interface=LOOPBACK,
            )
            self.config = demo_config(
                self.directory,
                pki,
                origin_port(self.origin_port),
                listen=listen,
                admin_listen=admin_listen,
                listen_tls=listen_tls,
            )
        except BaseException:
            self._remove_directory()
            raise

    @property
    def access_log(self) -> Path:
        assert isinstance(self.config.access_log, Path)
        return self.config.access_log

    def startService(self) -> None:
        super().startService()
        # After every service started: the edge's own start-up line comes first.
        self.reactor.callWhenRunning(self._announce)

    def _announce(self) -> None:
        text = announcement(self.config, origin_port(self.origin_port), self.directory)
        log.info("{text}", text=text)
        if self.echo:
            print(text, file=sys.__stdout__, flush=True)

    def stopService(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        try:
            await super().stopService()  # the edge: drains, closes its access log
            await defer.maybeDeferred(self.origin_port.stopListening)
        finally:
            self._remove_directory()
            log.info("edgenode demo stopped; removed {directory}", directory=str(self.directory))

    def _remove_directory(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def announcement(config: Config, origin_port: int, directory: Path) -> str:
    """What to try: the three HTTP curl commands, the HTTPS one, the admin token, how to
    follow the access log."""
    host, port = _client_address(config.listen)
    base = f"http://{host}:{port}/" if port is not None else f"http://{host}:PORT/"
    expected = {
        "a.demo.test": "origin SNI a.demo.test -> 200 from vhost a.demo.test",
        "b.demo.test": "origin SNI b.demo.test -> 200 from vhost b.demo.test",
        NO_SNI_DOMAIN: f"no SNI -> the origin presents {DEFAULT_VHOST} -> "
        "502 origin_cert_name_mismatch",
    }
    curls = {name: f"curl -H 'Host: {name}' {base}" for name in expected}
    width = max(len(curl) for curl in curls.values())
    commands = [f"  {curls[name]:<{width}}  # {outcome}" for name, outcome in expected.items()]
    listeners = f"{config.listen} (HTTP)"
    https: list[str] = []
    if config.listen_tls is not None:
        listeners += f" and {config.listen_tls} (HTTPS)"
        https = [
            "",
            f"HTTPS: the edge presents a demo-CA certificate for {', '.join(EDGE_DOMAINS)}; "
            "curl trusts the demo CA and resolves the name to the listener:",
            "",
            f"  {https_curl(config)}",
        ]
    return "\n".join(
        [
            f"edgenode demo: the edge listens on {listeners}; one TLS origin on "
            f"{LOOPBACK}:{origin_port} presents a certificate per SNI ({', '.join(VHOSTS)}) "
            f"and {DEFAULT_VHOST}'s to handshakes without SNI. Try:",
            "",
            *commands,
            *https,
            "",
            f"  admin token:  {config.admin.token_file}",
            f"  access log:   edgenode tail {config.access_log}",
            "",
            f"Everything lives in {directory}, removed when the demo stops (Ctrl-C).",
        ]
    )


def https_curl(config: Config) -> str:
    """The curl command that fetches `https://<first domain>:<port>/` from the HTTPS listener,
    verifying the edge's certificate against the demo CA (`--cacert`), the name resolved to
    the listener's address (`--resolve`), so no DNS is involved."""
    assert config.listen_tls is not None and config.tls.ca_file is not None
    host, port = _client_address(config.listen_tls)
    name, shown_port = EDGE_DOMAINS[0], port if port is not None else "PORT"
    return (
        f"curl --cacert {shlex.quote(str(config.tls.ca_file))} "
        f"--resolve {name}:{shown_port}:{host} https://{name}:{shown_port}/"
    )


def _client_address(listen: str) -> tuple[str, int | None]:
    """Where curl reaches a listener given as a Twisted endpoint string (tcp only), as a
    URL's host (an IPv6 literal in brackets)."""
    address = parse_server_endpoint(listen).local_address()
    if address is None:
        return LOOPBACK, None
    host, port = address
    return (f"[{host}]" if ":" in host else host), port


def log_reaches_stdout(twistd_options: Mapping[str, Any] | None) -> bool:
    """Whether twistd (given its own options) writes its log to standard output.

    Then the log already shows the demo's instructions there, and printing them too
    would show them twice.
    """
    if twistd_options is None:
        return False
    if twistd_options.get("logger") or twistd_options.get("syslog"):
        return False
    logfile = twistd_options.get("logfile")
    return logfile == "-" or (bool(twistd_options.get("nodaemon")) and not logfile)


def origin_port(port: IListeningPort) -> int:
    """The TCP port the demo origin got from the kernel (it listens on port 0)."""
    address = port.getHost()
    assert isinstance(address, IPv4Address)
    return address.port
