"""The edge's own certificates (SPEC §8): read and checked at the config boundary.

A certificate is read once, when the config is loaded, into an `EdgeCertificate`: the
parsed leaf, its intermediates and its key, with what selection and the admin API need
(DNS names, fingerprint, issuer, expiry). The SSL contexts are built from these objects,
never from the files again, so what was checked is what is served, whatever happens to
the files afterwards.

Rules (SPEC §8, "Validation"):
- the certificate file holds one or more PEM certificates, the leaf first, then its
  intermediates; the key file one unencrypted PEM private key, RSA or EC;
- the key matches the leaf's public key;
- the leaf has at least one DNS subjectAltName (the names are read from there, never
  from the subject CN, as browsers do since RFC 6125);
- the leaf has not expired; one expiring within `EXPIRY_WARNING` is a warning only.

Names are matched as TLS clients match them (RFC 6125 §6.4.3): `*.example.com` covers
exactly one label (`a.example.com`, not `example.com` nor `a.b.example.com`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Literal

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

EXPIRY_WARNING: Final = 14 * 86400.0  # seconds before not-after when `edgenode check` warns

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class CertificateProblem(Exception):
    """Why a certificate/key pair cannot be served; `key` names the field at fault."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key  # "cert_file" or "key_file"
        self.message = message


@attrs.frozen
class EdgeCertificate:
    """One certificate the edge offers to clients, as read and checked."""

    cert_file: Path
    key_file: Path
    names: tuple[str, ...]  # DNS subjectAltNames, lower case, in certificate order
    fingerprint: str  # SHA-256 of the leaf's DER, upper-case hex pairs joined by ":"
    issuer: str  # RFC 4514
    not_after: float  # Unix seconds
    leaf: x509.Certificate = attrs.field(eq=False, repr=False)
    chain: tuple[x509.Certificate, ...] = attrs.field(eq=False, repr=False)
    key: PrivateKey = attrs.field(eq=False, repr=False)
    chain_fingerprints: tuple[str, ...] = attrs.field(default=(), repr=False)

    @property
    def label(self) -> str:
        """The metric label (SPEC §8): the first DNS name."""
        return self.names[0]

    def covers(self, host: str) -> bool:
        """Whether a TLS client would accept this certificate for `host` (normalised)."""
        if host in self.names:
            return True
        label, dot, parent = host.partition(".")
        return bool(dot and label) and f"*.{parent}" in self.names

    def describe(self) -> dict[str, object]:
        """As `GET /certificates` and the reload diff show it."""
        return {
            "names": list(self.names),
            "fingerprint_sha256": self.fingerprint,
            "issuer": self.issuer,
            "not_after": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.not_after)),
            "cert_file": str(self.cert_file),
        }


def read_certificate(
    cert_file: Path,
    key_file: Path,
    *,
    now: float | None = None,
    purpose: Literal["server", "client"] = "server",
) -> EdgeCertificate:
    """Read and check one pair; raises `CertificateProblem` naming the field at fault.

    A `client` certificate (mTLS to origins, SPEC §10) needs no DNS name: origins check
    its chain and whatever identity they choose; it is named by its subject then.
    """
    now = time.time() if now is None else now
    certs = _read_chain(cert_file)
    leaf = certs[0]
    key = _read_key(key_file)
    if _public_der(key.public_key()) != _public_der(leaf.public_key()):
        raise CertificateProblem(
            "key_file",
            f"{key_file} does not match the certificate in {cert_file} (its public key is "
            "another); the key file must hold the private key of the leaf (the first "
            "certificate)",
        )
    names = _dns_names(leaf)
    if not names and purpose == "client":
        names = (leaf.subject.rfc4514_string() or fingerprint(leaf),)
    if not names:
        raise CertificateProblem(
            "cert_file",
            f"{cert_file}: the leaf has no DNS subjectAltName; clients match names only "
            "there, so add the domain names as DNS SANs",
        )
    not_after = leaf.not_valid_after_utc.timestamp()
    if not_after <= now:
        raise CertificateProblem(
            "cert_file",
            f"{cert_file}: expired on {_day(not_after)} ({', '.join(names)}); renew it",
        )
    return EdgeCertificate(
        cert_file=cert_file,
        key_file=key_file,
        names=names,
        fingerprint=fingerprint(leaf),
        issuer=leaf.issuer.rfc4514_string(),
        not_after=not_after,
        leaf=leaf,
        chain=tuple(certs[1:]),
        key=key,
        chain_fingerprints=tuple(fingerprint(c) for c in certs[1:]),
    )


def expiry_warning(cert: EdgeCertificate, *, now: float | None = None) -> str | None:
    """Why `cert` needs renewing soon, if it expires within EXPIRY_WARNING (not an error yet)."""
    now = time.time() if now is None else now
    if cert.not_after - now >= EXPIRY_WARNING:
        return None
    return (
        f"{cert.cert_file} expires on {_day(cert.not_after)}, in "
        f"{(cert.not_after - now) / 86400:.1f} days ({', '.join(cert.names)}); renew it"
    )


def select(certificates: Sequence[EdgeCertificate], sni: str | None) -> EdgeCertificate | None:
    """The certificate for a client's SNI: an exact name beats a wildcard, then list order.

    None when no certificate covers the name (or there is no name): the caller decides
    between the default certificate and a refusal (`unknown_sni`).
    """
    if sni is None:
        return None
    for cert in certificates:
        if sni in cert.names:
            return cert
    for cert in certificates:
        if cert.covers(sni):
            return cert
    return None


def fingerprint(cert: x509.Certificate) -> str:
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


# --- reading -------------------------------------------------------------------------------


def _read_chain(cert_file: Path) -> list[x509.Certificate]:
    data = _read_file(cert_file, "cert_file")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise CertificateProblem(
            "cert_file",
            f"{cert_file} is not a PEM certificate chain ({e}); expected the leaf "
            "certificate first, then its intermediates, each -----BEGIN CERTIFICATE-----",
        ) from None
    return certs


def _read_key(key_file: Path) -> PrivateKey:
    data = _read_file(key_file, "key_file")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertificateProblem(
            "key_file", f"{key_file} is encrypted; the edge needs an unencrypted PEM key"
        ) from None
    except ValueError as e:
        raise CertificateProblem(
            "key_file",
            f"{key_file} is not a PEM private key ({_first_line(str(e))}); expected an RSA "
            "or EC key, -----BEGIN PRIVATE KEY----- (or RSA/EC PRIVATE KEY)",
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise CertificateProblem(
            "key_file", f"{key_file} holds a {type(key).__name__}; expected an RSA or EC key"
        )
    return key


def _read_file(path: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise CertificateProblem(key, f"{path} cannot be read: {e.strerror or e}") from None


def _dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    names = san.value.get_values_for_type(x509.DNSName)
    return tuple(dict.fromkeys(name.lower().rstrip(".") for name in names))


def _public_der(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _day(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unreadable"
