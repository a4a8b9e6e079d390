"""The edge's own certificates for tests (SPEC §8): a CA clients trust, and leaves on disk.

`EdgeCerts` issues the certificates the edge offers its clients (`tls.certificates`), each
written to `<stem>.pem` / `<stem>.key` in a directory, and knows what a client should see
for each: its SHA-256 fingerprint in the form `GET /certificates` uses. Its CA is not the
one the edge trusts for origins (`tests.support.pki`): a client that trusts this CA and
verifies a name proves the edge presented the right certificate.
"""

from __future__ import annotations

import datetime
import hashlib
import ssl
from pathlib import Path

import attrs
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization


def fingerprint_der(der: bytes) -> str:
    """SHA-256 of a certificate's DER: upper-case hex pairs joined by ':' (SPEC §8)."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def fingerprint_pem(pem: bytes) -> str:
    """The fingerprint of the first certificate of a PEM blob."""
    cert = x509.load_pem_x509_certificate(pem)
    return fingerprint_der(cert.public_bytes(serialization.Encoding.DER))


@attrs.frozen
class EdgeCert:
    """One certificate/key pair as written for the edge, and what identifies it to a client."""

    names: tuple[str, ...]
    cert_file: Path
    key_file: Path
    fingerprint: str
    not_after: datetime.datetime  # UTC
    cert_pem: bytes = attrs.field(repr=False)
    key_pem: bytes = attrs.field(repr=False)

    def entry(self) -> dict[str, str]:
        """This pair as one `tls.certificates[]` item of the edge's config."""
        return {"cert_file": str(self.cert_file), "key_file": str(self.key_file)}

    @property
    def not_after_text(self) -> str:
        """not-after as `GET /certificates` shows it, e.g. '2027-01-31T12:00:00Z'."""
        return self.not_after.strftime("%Y-%m-%dT%H:%M:%SZ")


class EdgeCerts:
    """A CA for the edge's client-facing certificates and the leaves it issued, all on disk.

    `ca_file` is what test clients trust (`--cacert`, `-CAfile`, `client_context`).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA(organization_name="edgenode client-facing test CA")
        self.ca_file = self.directory / "edge-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    def issue(
        self,
        stem: str,
        *names: str,
        directory: Path | None = None,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> EdgeCert:
        """A leaf for `names` (DNS names or wildcards) written to `<stem>.pem`/`<stem>.key`.

        Writing to a stem that exists replaces the pair (a renewal in place, for reloads).
        `not_after` in the past makes an expired certificate (`not_before` then defaults to
        30 days before it).
        """
        if not names:
            raise ValueError("a leaf needs at least one name")
        if not_after is not None and not_before is None:
            not_before = min(
                not_after - datetime.timedelta(days=30),
                datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1),
            )
        leaf = self.ca.issue_cert(*names, not_before=not_before, not_after=not_after)
        chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        return self.write(stem, chain, leaf.private_key_pem.bytes(), directory=directory)

    def write(
        self, stem: str, cert_pem: bytes, key_pem: bytes, *, directory: Path | None = None
    ) -> EdgeCert:
        """Write a chain and a key as `<stem>.pem`/`<stem>.key` (any pair: also mismatched)."""
        where = Path(directory) if directory is not None else self.directory
        where.mkdir(parents=True, exist_ok=True)
        cert_file, key_file = where / f"{stem}.pem", where / f"{stem}.key"
        cert_file.write_bytes(cert_pem)
        key_file.write_bytes(key_pem)
        key_file.chmod(0o600)
        leaf = x509.load_pem_x509_certificate(cert_pem)
        return EdgeCert(
            names=_dns_names(leaf),
            cert_file=cert_file,
            key_file=key_file,
            fingerprint=fingerprint_der(leaf.public_bytes(serialization.Encoding.DER)),
            not_after=leaf.not_valid_after_utc,
            cert_pem=cert_pem,
            key_pem=key_pem,
        )

    def mismatched(self, stem: str, cert: EdgeCert, *, directory: Path | None = None) -> EdgeCert:
        """`cert`'s chain with the private key of another leaf: a key that does not match."""
        other = self.ca.issue_cert(*cert.names)
        return self.write(stem, cert.cert_pem, other.private_key_pem.bytes(), directory=directory)

    def client_context(
        self,
        *,
        check_hostname: bool = True,
        minimum: ssl.TLSVersion | None = None,
        maximum: ssl.TLSVersion | None = None,
        alpn: list[str] | None = None,
    ) -> ssl.SSLContext:
        """A client context trusting only this CA (hostname checked unless told otherwise)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=str(self.ca_file))
        ctx.check_hostname = check_hostname
        if minimum is not None:
            ctx.minimum_version = minimum
        if maximum is not None:
            ctx.maximum_version = maximum
        if alpn is not None:
            ctx.set_alpn_protocols(alpn)
        return ctx


def _dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    return tuple(san.value.get_values_for_type(x509.DNSName))
