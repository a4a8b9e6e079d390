"""TLS to origins: trust profiles (one shared SSL.Context each) and the per-connection creator.

Invariants (see ../shared/research/twisted-notes.md §2):
- One `SSL.Context` per trust profile (trust store + minimum TLS version), configured
  completely before its first Connection and never mutated afterwards (pyOpenSSL >= 26.2
  refuses that anyway). Contexts cost ~6 ms and ~0.9 MB with the system store.
- SNI and the verify name are separate, explicit facts of a route. SNI is set only when
  the route has one; no SNI extension is sent otherwise.
- Our own verify callback runs service-identity on the leaf and treats both
  `VerificationError` and `CertificateError` (no SAN at all) as failures: Twisted's
  `optionsForClientTLS` accepts SAN-less certificates for any name.
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from OpenSSL import SSL
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import extract_patterns
from service_identity.hazmat import DNS_ID, IPAddress_ID, verify_service_identity
from twisted.internet import error as neterror
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    TLSVersion,
    platformTrust,
    trustRootFromCertificates,
)

from edgenode.certificates import EdgeCertificate
from edgenode.errors import ErrorCode, OriginError
from edgenode.hostnames import is_ip_literal

_MIN_VERSIONS = {"1.2": TLSVersion.TLSv1_2, "1.3": TLSVersion.TLSv1_3}

# OpenSSL X509_V_ERR_* codes an operator meets in practice, in words.
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    26: "unsupported certificate purpose",
}


@attrs.frozen
class CertFacts:
    """What an operator needs to know about the certificate an origin presented."""

    subject: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    issuer: str
    not_after: str  # RFC 3339, UTC
    not_after_ts: float
    sha256: str

    @classmethod
    def of(cls, cert: x509.Certificate) -> CertFacts:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            dns = tuple(san.get_values_for_type(x509.DNSName))
            ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
        except x509.ExtensionNotFound:
            dns, ips = (), ()
        not_after = cert.not_valid_after_utc
        return cls(
            subject=cert.subject.rfc4514_string(),
            dns_names=dns,
            ip_addresses=ips,
            issuer=cert.issuer.rfc4514_string(),
            not_after=not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
            not_after_ts=not_after.timestamp(),
            sha256=cert.fingerprint(hashes.SHA256()).hex(),
        )

    def names(self) -> str:
        """The names this certificate covers, for messages."""
        covered = self.dns_names + self.ip_addresses
        return (
            ", ".join(covered) if covered else f"no subjectAltName at all (subject {self.subject})"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "dns_names": list(self.dns_names),
            "issuer": self.issuer,
            "not_after": self.not_after,
            "sha256": self.sha256,
        }


@attrs.define
class ConnectionTLS:
    """Facts about one origin TLS connection, filled in as the handshake proceeds."""

    sni: str | None
    verify_name: str
    verify: bool
    connection: SSL.Connection | None = None
    peer: CertFacts | None = None
    failure: OriginError | None = None  # set by the verify callback
    offered_session: bool = False  # a session of this route was offered for resumption
    checked_leaf: bool = False  # our verify callback ran on the leaf certificate
    # Recorded once by capture_peer (at the end of the handshake), read per request.
    version: str | None = None
    cipher: str | None = None

    @property
    def resumed(self) -> bool | None:
        """Whether the handshake resumed a session (None: cannot tell, verify is off).

        A resumed handshake sends no certificate, so the verify callback never sees a
        leaf; pyOpenSSL has no public SSL_session_reused, and this needs none.
        """
        if not self.offered_session:
            return False
        if not self.verify:
            return None
        return not self.checked_leaf

    def capture_peer(self) -> None:
        """Remember what the handshake got to (after it completed, or after it failed).

        The protocol version and cipher are read from pyOpenSSL here, once per
        connection, not on every request that uses it; then the peer certificate.
        """
        conn = self.connection
        if conn is None:
            return
        if self.version is None:
            self.version = conn.get_protocol_version_name()
            self.cipher = conn.get_cipher_name()
        if self.peer is not None:
            return
        cert = conn.get_peer_certificate(as_cryptography=True)
        if cert is None:
            # A chain that fails above the leaf stops the verify callback before it saw
            # the leaf, and OpenSSL then keeps no peer certificate; the chain as the
            # origin sent it (leaf first) is still there.
            chain = conn.get_peer_cert_chain(as_cryptography=True)
            cert = chain[0] if chain else None
        if cert is not None:
            self.peer = CertFacts.of(cert)

    def handshake_timed_out(self, timeout: float) -> OriginError:
        """The SPEC §4 error for a handshake not done within `timeout` (edge and probe alike);
        kept as this connection's failure unless our verify callback already set one."""
        err = OriginError(
            ErrorCode.ORIGIN_TIMEOUT, f"TLS handshake did not complete within {timeout:g}s"
        )
        if self.failure is None:
            self.failure = err
        return err

    def setup_failure(self, exc: BaseException | None) -> OriginError:
        """The SPEC §4 error for a connection lost before its handshake completed.

        Our verify callback's verdict first; an origin that just hung up is a TLS
        failure; anything else is the alert. The certificate, if one arrived, rides along.
        """
        if self.failure is not None:
            err = self.failure
        elif isinstance(exc, (neterror.ConnectionLost, neterror.ConnectionDone)):
            err = OriginError(
                ErrorCode.ORIGIN_TLS_FAILED,
                f"origin closed the connection during the TLS handshake ({type(exc).__name__})",
            )
        else:
            err = self.classify_handshake_failure(exc or Exception("connection lost"))
        if err.peer is None:
            self.capture_peer()
            err.peer = self.peer
        return err

    def classify_handshake_failure(self, error: BaseException) -> OriginError:
        """Turn whatever ended the handshake into the SPEC §4 error it stands for."""
        if self.failure is not None:
            return self.failure
        if isinstance(error, OriginError):
            return error
        return OriginError(
            ErrorCode.ORIGIN_TLS_FAILED, f"TLS handshake failed: {describe_ssl_error(error)}"
        )


def describe_ssl_error(error: BaseException) -> str:
    """A one-line description of an OpenSSL error (the alert, usually)."""
    if isinstance(error, SSL.Error) and error.args and isinstance(error.args[0], list):
        parts = [str(item[-1]) for item in error.args[0] if item]
        if parts:
            return "; ".join(parts)
    text = str(error) or type(error).__name__
    return text


class TrustProfile:
    """A trust store plus minimum TLS version (and the client certificate presented, for
    mTLS to origins), with the one SSL.Context they share."""

    def __init__(
        self,
        ca_file: Path | None,
        min_version: str,
        client_certificate: EdgeCertificate | None = None,
    ) -> None:
        self.ca_file = ca_file
        self.min_version = min_version
        self.client_certificate = client_certificate
        self.trust_id = trust_id_of(ca_file)
        if ca_file is None:
            trust_root = platformTrust()
            self.description = "the system trust store"
        else:
            pem = ca_file.read_bytes()
            trust_root = trustRootFromCertificates(
                [Certificate.loadPEM(block) for block in split_pem_certificates(pem)]
            )
            self.description = f"the CA bundle {ca_file}"
        options = CertificateOptions(
            trustRoot=trust_root,
            raiseMinimumTo=_MIN_VERSIONS[min_version],
            enableSessionTickets=True,  # TLS 1.2 resumption against origins without a cache
        )
        context: SSL.Context = options.getContext()
        if client_certificate is not None:
            # Before any connection uses the context (pyOpenSSL refuses changes after).
            context.use_certificate(client_certificate.leaf)
            for intermediate in client_certificate.chain:
                context.add_extra_chain_cert(intermediate)
            context.use_privatekey(client_certificate.key)
            context.check_privatekey()
        self.context = context

    @property
    def key(self) -> tuple[str, str, str | None]:
        return (self.trust_id, self.min_version, _fingerprint_of(self.client_certificate))

    @staticmethod
    def key_for(
        ca_file: Path | None, min_version: str, client_certificate: EdgeCertificate | None = None
    ) -> tuple[str, str, str | None]:
        return (trust_id_of(ca_file), min_version, _fingerprint_of(client_certificate))


def _fingerprint_of(cert: EdgeCertificate | None) -> str | None:
    return cert.fingerprint if cert is not None else None


def trust_id_of(ca_file: Path | None) -> str:
    """Names a trust store by content, so an edited CA bundle is a new trust profile."""
    if ca_file is None:
        return "system"
    return "sha256:" + hashlib.sha256(ca_file.read_bytes()).hexdigest()[:16]


def split_pem_certificates(pem: bytes) -> list[bytes]:
    """Every `BEGIN CERTIFICATE` block of a PEM bundle."""
    end = b"-----END CERTIFICATE-----"
    blocks = []
    for chunk in pem.split(end):
        start = chunk.find(b"-----BEGIN CERTIFICATE-----")
        if start != -1:
            blocks.append(chunk[start:] + end + b"\n")
    return blocks


class OriginTLSCreator:
    """Makes the SSL.Connections of one route: SNI if any, our verify callback, facts for logs.

    One connection's TLS is set up in one direction: whoever opens the connection takes
    fresh `facts()`, gives them to the protocol that will read them and to the TLS
    transport through `new_connection`. Nothing here reaches into a protocol.
    """

    def __init__(
        self, profile: TrustProfile, sni: str | None, verify_name: str, verify: bool
    ) -> None:
        self.profile = profile
        self.sni = sni
        self._sni_bytes = sni.encode("ascii") if sni else None
        self.verify_name = verify_name
        self.verify = verify
        self._service_id = (
            IPAddress_ID(verify_name) if is_ip_literal(verify_name) else DNS_ID(verify_name)
        )
        self._session: SSL.Session | None = None  # this route's, and only this route's

    def facts(self) -> ConnectionTLS:
        """A record for one new connection of this route, filled in as its handshake goes."""
        return ConnectionTLS(sni=self.sni, verify_name=self.verify_name, verify=self.verify)

    def new_connection(self, facts: ConnectionTLS, sock: socket.socket) -> SSL.Connection:
        """The SSL.Connection of one connection of this route on `sock`, its connected
        socket, recording into `facts`."""
        conn = SSL.Connection(self.profile.context, sock)
        facts.connection = conn
        if self._sni_bytes is not None:
            conn.set_tlsext_host_name(self._sni_bytes)
        if self.verify:
            conn.set_verify(
                SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify_callback(facts)
            )
        else:
            conn.set_verify(SSL.VERIFY_NONE, None)
        if self._session is not None:
            # Only this route's own session: a resumed handshake skips certificate
            # verification, so a session must never be offered for another SNI or name.
            conn.set_session(self._session)
            facts.offered_session = True
        return conn

    def remember_session(self, facts: ConnectionTLS) -> None:
        """Keep the session of a verified connection of this route for the next one.

        Called once response bytes arrived: TLS 1.3 tickets come after the handshake.
        """
        session = facts.connection.get_session() if facts.connection is not None else None
        if session is not None:
            self._session = session

    def _verify_callback(self, facts: ConnectionTLS) -> Any:
        service_id = self._service_id
        description = self.profile.description

        def verify(conn: SSL.Connection, cert: Any, errno: int, depth: int, ok: int) -> bool:
            if depth == 0:
                facts.checked_leaf = True
                if facts.peer is None:
                    facts.peer = CertFacts.of(cert.to_cryptography())
            if not ok:
                if facts.failure is None:
                    reason = _VERIFY_ERRORS.get(errno, f"verify error {errno}")
                    facts.failure = OriginError(
                        ErrorCode.ORIGIN_CERT_UNTRUSTED,
                        f"certificate chain does not verify against {description}: "
                        f"{reason} (depth {depth})",
                    )
                return False
            if depth > 0:
                return True
            try:
                verify_service_identity(extract_patterns(cert.to_cryptography()), [service_id], [])
            except (VerificationError, CertificateError):
                assert facts.peer is not None
                facts.failure = OriginError(
                    ErrorCode.ORIGIN_CERT_NAME_MISMATCH,
                    name_mismatch_detail(facts.peer, self.verify_name, self.sni),
                )
                return False
            return True

        return verify


def name_mismatch_detail(peer: CertFacts, verify_name: str, sni: str | None) -> str:
    """Explain a certificate that does not cover the name we verify against."""
    if sni is None:
        hint = (
            "no SNI was sent (origin SNI is off), so the origin chose its default "
            "certificate; turn origin_sni on or add the name to that certificate"
        )
    else:
        hint = "the origin may lack a vhost for this SNI, or origin SNI is off"
    return (
        f"origin presented a certificate for {peer.names()}; it does not cover "
        f"{verify_name} — {hint}"
    )
