"""The test PKI: a trusted CA, an unrelated CA, and the leaf certificates origins present."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import TypeAlias

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# What an origin can be given as a certificate: a trustme leaf, or PEM bytes
# (certificate chain, leaf first; private key) such as `PKI.sanless_leaf` returns.
CertSource: TypeAlias = trustme.LeafCert | tuple[bytes, bytes]


class PKI:
    """Certificates for one test session, all throw-away.

    `ca` is the CA the edge is told to trust (its PEM is `ca_file`);
    `other_ca` is unrelated, for "chain does not verify" cases.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA(organization_name="edgenode test CA")
        self.other_ca = trustme.CA(organization_name="edgenode untrusted CA")
        self.ca_file = self.directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.other_ca_file = self.directory / "other-ca.pem"
        self.other_ca.cert_pem.write_to_path(str(self.other_ca_file))
        self._leaves: dict[tuple[str, ...], trustme.LeafCert] = {}
        self._untrusted: dict[tuple[str, ...], trustme.LeafCert] = {}
        self._sanless: dict[str, tuple[bytes, bytes]] = {}

    def leaf(self, *names: str) -> trustme.LeafCert:
        """A leaf signed by `ca` whose SANs are `names` (DNS names, wildcards or IPs)."""
        if not names:
            raise ValueError("a leaf needs at least one name")
        if names not in self._leaves:
            self._leaves[names] = self.ca.issue_cert(*names)
        return self._leaves[names]

    def untrusted_leaf(self, *names: str) -> trustme.LeafCert:
        """A leaf for `names` signed by `other_ca`, which the edge does not trust."""
        if not names:
            raise ValueError("a leaf needs at least one name")
        if names not in self._untrusted:
            self._untrusted[names] = self.other_ca.issue_cert(*names)
        return self._untrusted[names]

    def sanless_leaf(self, common_name: str) -> tuple[bytes, bytes]:
        """(cert PEM, key PEM) of a leaf signed by `ca` with a subject CN and no subjectAltName.

        trustme always adds a SAN, so this one is built by hand. Verifiers that
        follow RFC 6125 (service-identity) must reject it for every name.
        """
        if common_name not in self._sanless:
            self._sanless[common_name] = _issue_sanless(self.ca, common_name)
        return self._sanless[common_name]

    def write(self, source: CertSource, stem: str) -> tuple[Path, Path]:
        """Write the chain and key to `<stem>.pem` and `<stem>.key` in the PKI directory."""
        cert_pem, key_pem = pem_pair(source)
        cert_path = self.directory / f"{stem}.pem"
        key_path = self.directory / f"{stem}.key"
        cert_path.write_bytes(cert_pem)
        key_path.write_bytes(key_pem)
        key_path.chmod(0o600)
        return cert_path, key_path


def pem_pair(source: CertSource) -> tuple[bytes, bytes]:
    """(certificate chain PEM, private key PEM) of a certificate source."""
    if isinstance(source, trustme.LeafCert):
        chain = b"".join(blob.bytes() for blob in source.cert_chain_pems)
        return chain, source.private_key_pem.bytes()
    cert_pem, key_pem = source
    return bytes(cert_pem), bytes(key_pem)


def load_cert_source(
    source: CertSource,
) -> tuple[CertificateIssuerPrivateKeyTypes, list[x509.Certificate]]:
    """The private key and certificate chain (leaf first) as cryptography objects."""
    cert_pem, key_pem = pem_pair(source)
    key = serialization.load_pem_private_key(key_pem, password=None)
    chain = x509.load_pem_x509_certificates(cert_pem)
    return key, chain  # type: ignore[return-value]  # test keys are always signing keys


def subject_alt_names(cert: x509.Certificate) -> list[str] | None:
    """The DNS/IP SANs of a certificate, or None when it has no subjectAltName at all."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    names: list[str] = list(ext.value.get_values_for_type(x509.DNSName))
    names += [str(ip) for ip in ext.value.get_values_for_type(x509.IPAddress)]
    return names


def _issue_sanless(ca: trustme.CA, common_name: str) -> tuple[bytes, bytes]:
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem
