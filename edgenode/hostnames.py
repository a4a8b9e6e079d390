"""Normalising and validating host names: config names, origin SNI values and request hosts.

Config-time functions (`normalize_hostname`, `validate_sni`) are thorough and raise
`ValueError` with a message an operator can act on: what is wrong, and what would be
accepted. The request-time function (`normalize_request_host`) is cheap and returns
`None` for anything it cannot use, because a client's bad Host header is a 400, not an
exception.

A normalised name is lower case, has no trailing dot, is in A-label (punycode) form and
obeys the LDH rule (RFC 1035 §2.3.1, RFC 5890 §2.3.1): labels of 1..63 letters, digits
and hyphens, not starting or ending with a hyphen, at most 253 characters in all.
"""

from __future__ import annotations

import ipaddress
import re

import idna

MAX_LABEL_LENGTH = 63
MAX_NAME_LENGTH = 253  # without the trailing dot (RFC 1035 §2.3.4: 255 octets on the wire)

_LDH_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_ALABEL_PREFIX = "xn--"
_EXAMPLE = "such as 'www.example.com'"

# host [ "." ] [ ":" port ], ASCII only; letters are lower-cased after the match.
# '_' is tolerated (it never matches a configured domain, so the client gets 421, not 400).
_REQUEST_HOST = re.compile(r"([A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*)\.?(?::([0-9]*))?")
_BRACKETED_REQUEST_HOST = re.compile(r"\[([0-9A-Fa-f:.]+)\](?::([0-9]*))?")
_OPTIONAL_WHITESPACE = " \t"  # RFC 9110 §5.6.3 OWS around a field value


def normalize_hostname(value: str) -> str:
    """Return `value` as a normalised DNS name, or raise `ValueError` saying why it is not one.

    Steps: strip surrounding whitespace, map with UTS #46 (this lower-cases and turns
    ideographic full stops into dots) when the name is not plain ASCII, drop one trailing
    dot, convert each non-ASCII label to its A-label, then check the LDH rule. An ASCII
    label that claims to be an A-label (`xn--…`) must decode as one.
    """
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string; expected a domain name {_EXAMPLE}")
    text = value.strip()
    text = text.lower() if text.isascii() else _uts46_map(value, text)
    if text.endswith("."):
        text = text[:-1]
    if not text:
        raise _invalid(value, f"it is empty; expected a domain name {_EXAMPLE}")
    labels = [_to_ascii_label(value, label) for label in text.split(".")]
    name = ".".join(labels)
    if len(name) > MAX_NAME_LENGTH:
        raise _invalid(
            value,
            f"it is {len(name)} characters long as A-labels; "
            f"a domain name is at most {MAX_NAME_LENGTH}",
        )
    return name


def validate_sni(value: object) -> str:
    """Return `value` normalised for use as a TLS server name, or raise `ValueError`.

    On top of `normalize_hostname`, SNI must name one specific host (RFC 6066 §3): no
    wildcard, no IPv4 or IPv6 literal (bracketed or not), and no name whose last label is
    all digits, since resolvers and TLS stacks read `127.1` as an IPv4 address.
    """
    if not isinstance(value, str):
        raise ValueError(
            f"{value!r} is not a string; origin SNI needs a specific domain name "
            "such as 'origin.example.com'"
        )
    if not value.strip():
        raise ValueError(
            f"{value!r} is empty; origin SNI needs a specific domain name "
            "such as 'origin.example.com'"
        )
    if "*" in value:
        raise ValueError(f"{value!r} is a wildcard; origin SNI needs a specific domain name")
    if is_ip_literal(value):
        raise _ip_literal_in_sni(value)
    name = normalize_hostname(value)
    if is_ip_literal(name):
        raise _ip_literal_in_sni(value)
    last_label = name.rsplit(".", 1)[-1]
    if last_label.isdigit():
        raise ValueError(
            f"{value!r} ends in the all-digit label {last_label!r}, which reads as an IPv4 "
            "address; origin SNI needs a DNS name such as 'origin.example.com'"
        )
    return name


def is_ip_literal(value: object) -> bool:
    """Whether `value` is an IPv4 or IPv6 address; IPv6 may be written in brackets (`[::1]`)."""
    if not isinstance(value, str):
        return False
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        return _is_ipv6(text[1:-1])
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def strip_ip_brackets(value: str) -> str:
    """`value` without surrounding whitespace and the brackets of a `[v6]` literal."""
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        return text[1:-1]
    return text


def normalize_request_host(raw: bytes | str) -> str | None:
    """The host a request names, ready to match against domain names; `None` if unusable.

    `raw` is a Host header value or the authority of an absolute-form request target.
    The port and one trailing dot are dropped and letters lower-cased; an IPv6 literal
    comes back without brackets in canonical form. Anything else is `None`: empty,
    non-ASCII (clients send A-labels), whitespace inside, userinfo (`@`), control
    characters, a port that is not 0..65535 in digits. Surrounding spaces and tabs are
    optional whitespace around a field value (RFC 9110 §5.6.3), not part of it.
    """
    if isinstance(raw, bytes):
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            return None
    elif isinstance(raw, str) and raw.isascii():
        text = raw
    else:
        return None
    match = _REQUEST_HOST.fullmatch(text)
    if match is None:
        return _normalize_unusual_request_host(text)
    if not _is_port(match.group(2)):
        return None
    return match.group(1).lower()


def _normalize_unusual_request_host(text: str) -> str | None:
    """The slow path of `normalize_request_host`: surrounding whitespace and IPv6 literals."""
    stripped = text.strip(_OPTIONAL_WHITESPACE)
    if stripped != text:
        return normalize_request_host(stripped) if stripped else None
    match = _BRACKETED_REQUEST_HOST.fullmatch(text)
    if match is None or not _is_port(match.group(2)):
        return None
    try:
        return ipaddress.IPv6Address(match.group(1)).compressed
    except ValueError:
        return None


def _is_port(digits: str | None) -> bool:
    """Whether a matched port is absent, empty (RFC 3986 §3.2.3 allows it) or 0..65535."""
    return not digits or (len(digits) <= 5 and int(digits) <= 65535)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _uts46_map(value: str, text: str) -> str:
    """Apply the UTS #46 mapping (non-transitional) to a non-ASCII name."""
    try:
        return idna.uts46_remap(text, std3_rules=False, transitional=False)
    except (idna.IDNAError, UnicodeError) as exc:
        raise _invalid(
            value, f"it cannot be mapped to an internationalised domain name ({exc})"
        ) from None


def _to_ascii_label(value: str, label: str) -> str:
    """One label as a checked LDH label, converting a non-ASCII label to its A-label."""
    if not label.isascii():
        try:
            label = idna.alabel(label).decode("ascii")
        except (idna.IDNAError, UnicodeError) as exc:
            raise _invalid(
                value,
                f"label {_short(label)!r} cannot be converted to an IDNA A-label ({exc}); "
                "write a valid internationalised name or its xn-- form",
            ) from None
    _check_ldh_label(value, label)
    if label.startswith(_ALABEL_PREFIX):
        _check_alabel(value, label)
    return label


def _check_ldh_label(value: str, label: str) -> None:
    """Raise unless `label` is 1..63 of [a-z0-9-], not starting or ending with '-'."""
    if not label:
        raise _invalid(
            value,
            "it has an empty label (two dots in a row, or a leading dot); "
            f"labels are separated by single dots, {_EXAMPLE}",
        )
    if len(label) > MAX_LABEL_LENGTH:
        raise _invalid(
            value,
            f"label {_short(label)!r} is {len(label)} characters; "
            f"a label is at most {MAX_LABEL_LENGTH}",
        )
    for character in label:
        if character not in _LDH_CHARACTERS:
            raise _invalid(
                value,
                f"label {_short(label)!r} contains {character!r}; "
                "a label may contain only letters a-z, digits 0-9 and '-'",
            )
    if label.startswith("-") or label.endswith("-"):
        raise _invalid(
            value,
            f"label {_short(label)!r} starts or ends with '-'; "
            "a label must begin and end with a letter or digit",
        )


def _check_alabel(value: str, label: str) -> None:
    """Raise unless an `xn--` label decodes to a valid internationalised label."""
    try:
        idna.ulabel(label)
    except (idna.IDNAError, UnicodeError) as exc:
        raise _invalid(
            value,
            f"label {_short(label)!r} starts with 'xn--' but is not a valid IDNA A-label "
            f"({exc}); write the Unicode name or its correct xn-- form",
        ) from None


def _invalid(value: str, reason: str) -> ValueError:
    return ValueError(f"{value!r} is not a valid domain name: {reason}")


def _ip_literal_in_sni(value: str) -> ValueError:
    return ValueError(
        f"{value!r} is an IP literal; RFC 6066 forbids IP addresses in SNI; "
        "give the DNS name the origin's certificate is issued for"
    )


def _short(label: str, limit: int = 20) -> str:
    """A label shortened for a message; the full value is quoted elsewhere in it."""
    return label if len(label) <= limit else label[: limit - 1] + "…"
