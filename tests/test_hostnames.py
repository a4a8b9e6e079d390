"""Tests for edgenode.hostnames: config-time name checks and request-time host parsing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgenode.hostnames import (
    is_ip_literal,
    normalize_hostname,
    normalize_request_host,
    validate_sni,
)

LDH = "abcdefghijklmnopqrstuvwxyz0123456789-"


def assert_ldh_name(name: str) -> None:
    """The invariants every normalised name keeps."""
    assert name
    assert len(name) <= 253
    assert name == name.lower()
    assert not name.endswith(".")
    for label in name.split("."):
        assert 1 <= len(label) <= 63
        assert set(label) <= set(LDH)
        assert not label.startswith("-")
        assert not label.endswith("-")


# --- normalize_hostname ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("www.example.com", "www.example.com"),
        ("WWW.Example.COM", "www.example.com"),
        ("www.example.com.", "www.example.com"),
        ("  www.example.com  ", "www.example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example.", "xn--bcher-kva.example"),
        ("bücher。example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("a-b.c0", "a-b.c0"),
        ("localhost", "localhost"),
        ("203.0.113.10", "203.0.113.10"),
        ("a" * 63 + ".example", "a" * 63 + ".example"),
    ],
)
def test_normalize_hostname_accepts_and_normalises(value: str, expected: str) -> None:
    """Names come back lower case, without one trailing dot, in A-label form."""
    assert normalize_hostname(value) == expected


def test_normalize_hostname_accepts_253_characters() -> None:
    """A name of exactly 253 characters is the longest accepted."""
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(name) == 253
    assert normalize_hostname(name) == name


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "it is empty"),
        ("   ", "it is empty"),
        (".", "it is empty"),
        ("a..b", "empty label"),
        (".example.com", "empty label"),
        ("example.com..", "empty label"),
        ("a" * 64 + ".example", "is 64 characters; a label is at most 63"),
        (".".join(["a" * 63] * 4), "255 characters long"),
        ("under_score.example", "contains '_'"),
        ("sp ace.example", "contains ' '"),
        ("tab\t.example", "contains '\\t'"),
        ("*.example.com", "contains '*'"),
        ("a/b.example", "contains '/'"),
        ("host:80", "contains ':'"),
        ("-lead.example", "starts or ends with '-'"),
        ("trail-.example", "starts or ends with '-'"),
        ("xn--zz.example", "not a valid IDNA A-label"),
        ("ex\u200dample.com", "cannot be converted to an IDNA A-label"),
    ],
)
def test_normalize_hostname_rejects(value: str, message: str) -> None:
    """Each rejection quotes the value and names the rule that was broken."""
    with pytest.raises(ValueError, match="is not a valid domain name") as caught:
        normalize_hostname(value)
    assert message in str(caught.value)
    assert repr(value) in str(caught.value)


def test_normalize_hostname_254_characters_is_too_long() -> None:
    """A name of 254 characters is one too many, and the message says the limit."""
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 62])
    assert len(name) == 254
    with pytest.raises(ValueError, match="254 characters long as A-labels; a domain name is at"):
        normalize_hostname(name)


def test_normalize_hostname_rejects_non_strings() -> None:
    """A non-string is a ValueError too, so callers need only one except clause."""
    with pytest.raises(ValueError, match="not a string"):
        normalize_hostname(443)  # type: ignore[arg-type]


@settings(max_examples=200)
@given(st.text())
def test_normalize_hostname_returns_ldh_or_raises_value_error(value: str) -> None:
    """For any text the result keeps the LDH invariants, or the error is a ValueError."""
    try:
        name = normalize_hostname(value)
    except ValueError:
        return
    assert_ldh_name(name)


LABEL = st.from_regex(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?", fullmatch=True)
UNICODE_LABEL = st.text(st.characters(categories=("L", "M", "N", "Pd")), min_size=1, max_size=10)
NAMES = st.one_of(
    st.text(),
    st.lists(LABEL, min_size=1, max_size=5).map(".".join),
    st.lists(UNICODE_LABEL, min_size=1, max_size=4).map(".".join),
    st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=4).map(".".join),
)


@settings(max_examples=200)
@given(NAMES)
def test_normalize_hostname_is_idempotent(value: str) -> None:
    """Normalising a normalised name gives it back unchanged."""
    try:
        name = normalize_hostname(value)
    except ValueError:
        return
    assert normalize_hostname(name) == name


# --- validate_sni ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("dcdn.example.com", "dcdn.example.com"),
        ("DCDN.Example.com.", "dcdn.example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("localhost", "localhost"),
    ],
)
def test_validate_sni_accepts_specific_names(value: str, expected: str) -> None:
    """A specific DNS name is accepted and normalised."""
    assert validate_sni(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("*.example.com", "is a wildcard; origin SNI needs a specific domain name"),
        ("www.*.example.com", "is a wildcard"),
        ("*", "is a wildcard"),
        ("203.0.113.10", "is an IP literal; RFC 6066 forbids IP addresses in SNI"),
        ("203.0.113.10.", "is an IP literal"),
        ("2001:db8::1", "is an IP literal"),
        ("[2001:db8::1]", "is an IP literal"),
        ("::1", "is an IP literal"),
        ("127.1", "all-digit label '1'"),
        ("", "is empty"),
        ("  ", "is empty"),
        ("a..example.com", "empty label"),
        ("a" * 64 + ".example.com", "a label is at most 63"),
        (".".join(["a" * 63] * 4), "a domain name is at most 253"),
        ("origin_1.example.com", "contains '_'"),
        ("ori gin.example.com", "contains ' '"),
        (443, "not a string"),
        (None, "not a string"),
    ],
)
def test_validate_sni_rejects(value: object, message: str) -> None:
    """Wildcards, IP literals and malformed names are rejected with a reason."""
    with pytest.raises(ValueError) as caught:
        validate_sni(value)
    assert message in str(caught.value)


@settings(max_examples=200)
@given(st.one_of(NAMES, st.none(), st.integers(), st.binary()))
def test_validate_sni_returns_a_specific_name_or_raises_value_error(value: object) -> None:
    """Whatever the input, the result is an LDH name that is no IP literal, or a ValueError."""
    try:
        name = validate_sni(value)
    except ValueError:
        return
    assert_ldh_name(name)
    assert not is_ip_literal(name)
    assert "*" not in name


# --- is_ip_literal ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("203.0.113.10", True),
        ("2001:db8::1", True),
        ("[2001:db8::1]", True),
        ("[::1]", True),
        (" 127.0.0.1 ", True),
        ("fe80::1%eth0", True),
        ("[203.0.113.10]", False),
        ("example.com", False),
        ("127.1", False),
        ("", False),
        ("[", False),
        (None, False),
        (b"127.0.0.1", False),
    ],
)
def test_is_ip_literal(value: object, expected: bool) -> None:
    """IPv4 and IPv6 literals are recognised, IPv6 also in brackets; names are not."""
    assert is_ip_literal(value) is expected


# --- normalize_request_host ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"www.example.com", "www.example.com"),
        ("www.example.com", "www.example.com"),
        (b"WWW.Example.COM", "www.example.com"),
        (b"www.example.com.", "www.example.com"),
        (b"www.example.com:8080", "www.example.com"),
        (b"www.example.com.:8080", "www.example.com"),
        (b"www.example.com:", "www.example.com"),
        (b"www.example.com:65535", "www.example.com"),
        (b"xn--bcher-kva.example", "xn--bcher-kva.example"),
        (b"203.0.113.10:80", "203.0.113.10"),
        (b"[2001:DB8::1]", "2001:db8::1"),
        (b"[2001:db8::1]:8443", "2001:db8::1"),
        (b"[::1]:", "::1"),
        (b" www.example.com\t", "www.example.com"),
        (b"localhost", "localhost"),
    ],
)
def test_normalize_request_host_accepts(raw: bytes | str, expected: str) -> None:
    """The port and one trailing dot are dropped and letters lower-cased."""
    assert normalize_request_host(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   ",
        b":80",
        b"www.example.com:http",
        b"www.example.com:65536",
        b"www.example.com:123456",
        b"www.example.com:-1",
        b"user@www.example.com",
        b"user:pass@www.example.com",
        b"www.example.com@evil.example",
        b"www example.com",
        b"www.exa\x00mple.com",
        b"www.example.com\r\nX: y",
        b"a..b",
        b".example.com",
        b"www.example.com..",
        b"b\xc3\xbccher.example",
        "bücher.example",
        b"[2001:db8::1",
        b"2001:db8::1",
        b"[not-v6]",
        b"[2001:db8::1]x",
        b"[fe80::1%25eth0]",
        b"www.example.com/path",
        b"*.example.com",
    ],
)
def test_normalize_request_host_rejects(raw: bytes | str) -> None:
    """Hosts that cannot name a domain are None: the proxy answers 400."""
    assert normalize_request_host(raw) is None


@settings(max_examples=200)
@given(st.one_of(st.binary(max_size=40), st.text(max_size=40)))
def test_normalize_request_host_never_raises(raw: bytes | str) -> None:
    """Any bytes or text give a lower-case ASCII host without port or trailing dot, or None."""
    host = normalize_request_host(raw)
    if host is None:
        return
    assert host
    assert host.isascii()
    assert host == host.lower()
    assert not host.endswith(".")
    assert "@" not in host
    assert " " not in host


@settings(max_examples=200)
@given(st.lists(LABEL, min_size=1, max_size=4).map(".".join), st.integers(0, 65535))
def test_normalize_request_host_agrees_with_normalize_hostname(name: str, port: int) -> None:
    """For plain LDH names, the request host is the normalised config name."""
    assert normalize_request_host(f"{name}:{port}".encode()) == normalize_hostname(name)
