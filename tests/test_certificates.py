"""The edge's own certificates (SPEC §8): reading, checking, selection, and the config rules.

The real-client tests (curl, openssl s_client, Python ssl against the twistd edge) are in
tests/test_client_tls.py; these pin the rules themselves, one at a time.
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import pytest
import trustme

from edgenode.certificates import (
    EXPIRY_WARNING,
    CertificateProblem,
    expiry_warning,
    read_certificate,
    select,
)
from edgenode.config import parse_config
from edgenode.errors import ConfigError
from edgenode.runtime import build_runtime, certificates_diff


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def write_pair(
    ca: trustme.CA, directory: Path, stem: str, *names: str, **kwargs: object
) -> tuple[Path, Path]:
    leaf = ca.issue_cert(*names, **kwargs)  # type: ignore[arg-type]
    cert_file, key_file = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key_file.write_bytes(leaf.private_key_pem.bytes())
    return cert_file, key_file


def test_names_come_from_the_dns_sans_and_wildcards_cover_one_label(
    ca: trustme.CA, tmp_path: Path
) -> None:
    cert = read_certificate(*write_pair(ca, tmp_path, "w", "*.Example.COM", "example.com"))
    assert cert.names == ("*.example.com", "example.com")
    assert cert.covers("a.example.com")
    assert cert.covers("example.com")
    assert not cert.covers("a.b.example.com")
    assert not cert.covers("example.org")
    assert len(cert.fingerprint.split(":")) == 32


def test_an_exact_name_beats_a_wildcard_whatever_the_order(ca: trustme.CA, tmp_path: Path) -> None:
    wildcard = read_certificate(*write_pair(ca, tmp_path, "w", "*.example.com"))
    exact = read_certificate(*write_pair(ca, tmp_path, "e", "shop.example.com"))
    second = read_certificate(*write_pair(ca, tmp_path, "s", "*.example.com", "x.test"))
    assert select([wildcard, exact], "shop.example.com") is exact
    assert select([exact, wildcard], "shop.example.com") is exact
    assert select([wildcard, second], "a.example.com") is wildcard  # equals: list order
    assert select([wildcard, exact], "other.test") is None
    assert select([wildcard, exact], None) is None


def test_a_key_of_another_certificate_is_refused(ca: trustme.CA, tmp_path: Path) -> None:
    cert_file, _ = write_pair(ca, tmp_path, "a", "a.example.com")
    _, other_key = write_pair(ca, tmp_path, "b", "b.example.com")
    with pytest.raises(CertificateProblem) as raised:
        read_certificate(cert_file, other_key)
    assert raised.value.key == "key_file"
    assert "does not match" in raised.value.message


def test_expired_is_an_error_and_soon_a_warning(ca: trustme.CA, tmp_path: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    expired = write_pair(
        ca, tmp_path, "x", "x.example.com", not_after=now - datetime.timedelta(days=1)
    )
    with pytest.raises(CertificateProblem, match="expired"):
        read_certificate(*expired)
    soon = read_certificate(
        *write_pair(ca, tmp_path, "s", "s.example.com", not_after=now + datetime.timedelta(days=5))
    )
    warning = expiry_warning(soon)
    assert warning is not None
    assert "s.example.com" in warning and "days" in warning
    later = read_certificate(*write_pair(ca, tmp_path, "l", "l.example.com"))
    assert expiry_warning(later) is None
    assert expiry_warning(later, now=later.not_after - EXPIRY_WARNING / 2) is not None


def test_garbage_and_missing_files_name_the_field(ca: trustme.CA, tmp_path: Path) -> None:
    cert_file, key_file = write_pair(ca, tmp_path, "g", "g.example.com")
    garbled = tmp_path / "garbled.pem"
    garbled.write_text("not a certificate")
    with pytest.raises(CertificateProblem) as raised:
        read_certificate(garbled, key_file)
    assert raised.value.key == "cert_file"
    with pytest.raises(CertificateProblem) as raised:
        read_certificate(cert_file, tmp_path / "missing.key")
    assert raised.value.key == "key_file" and "cannot be read" in raised.value.message


CONFIG = """
listen: "tcp:8080"
{listen_tls}
tls:
  certificates: {certificates}
domains:
  shop.example.com:
    https_redirect: {redirect}
    origins: [{{address: 127.0.0.1}}]
"""


def config_text(certificates: str, *, listen_tls: str = "", redirect: str = "false") -> str:
    return CONFIG.format(certificates=certificates, listen_tls=listen_tls, redirect=redirect)


def problems(text: str, base: Path) -> dict[str, str]:
    with pytest.raises(ConfigError) as raised:
        parse_config(text, base_dir=base)
    found: dict[str, str] = {}
    for problem in raised.value.problems:
        found[problem.path] = found.get(problem.path, "") + problem.message + "\n"
    return found


def test_config_errors_name_the_certificate_entry(ca: trustme.CA, tmp_path: Path) -> None:
    write_pair(ca, tmp_path, "shop", "shop.example.com")
    write_pair(ca, tmp_path, "other", "other.example.com")
    text = config_text(
        "[{cert_file: shop.pem, key_file: other.key}, {cert_file: nope.pem, key_file: shop.key}]"
    )
    found = problems(text, tmp_path)
    assert "does not match" in found["tls.certificates[0].key_file"]
    assert "cannot be read" in found["tls.certificates[1].cert_file"]


def test_listen_tls_needs_certificates_and_a_redirect_needs_a_cover(
    ca: trustme.CA, tmp_path: Path
) -> None:
    write_pair(ca, tmp_path, "other", "other.example.com")
    found = problems(config_text("[]", listen_tls='listen_tls: "tcp:8443"'), tmp_path)
    assert "needs at least one certificate" in found["listen_tls"]
    text = config_text("[{cert_file: other.pem, key_file: other.key}]", redirect="true")
    found = problems(text, tmp_path)
    assert (
        "no certificate in tls.certificates covers"
        in found["domains.shop.example.com.https_redirect"]
    )
    found = problems(config_text("[]", listen_tls='listen_tls: "unix:/tmp/edge.sock"'), tmp_path)
    assert "'tcp:' or 'tcp6:'" in found["listen_tls"]


def test_an_unchanged_certificate_set_keeps_its_contexts_and_a_renewal_is_a_change(
    ca: trustme.CA, tmp_path: Path
) -> None:
    """Keeping the ServerTLS keeps its session-ticket keys across a reload that did not
    touch the certificates; a renewed file is reported as a change by fingerprint."""
    write_pair(ca, tmp_path, "shop", "shop.example.com")
    text = config_text(
        "[{cert_file: shop.pem, key_file: shop.key}]", listen_tls='listen_tls: "tcp:8443"'
    )
    first = build_runtime(parse_config(text, base_dir=tmp_path), generation=1)
    again = build_runtime(parse_config(text, base_dir=tmp_path), generation=2, previous=first)
    assert again.server_tls is first.server_tls
    assert again.https_port == 8443
    time.sleep(0.01)
    write_pair(ca, tmp_path, "shop", "shop.example.com")  # renewed in place
    renewed = build_runtime(parse_config(text, base_dir=tmp_path), generation=3, previous=again)
    assert renewed.server_tls is not first.server_tls
    diff = certificates_diff(again.config.tls.certificates, renewed.config.tls.certificates)
    assert diff["added"] == [] and diff["removed"] == []
    [change] = diff["changed"]
    assert change["old_fingerprint_sha256"] == first.config.tls.certificates[0].fingerprint
    assert change["new_fingerprint_sha256"] == renewed.config.tls.certificates[0].fingerprint
