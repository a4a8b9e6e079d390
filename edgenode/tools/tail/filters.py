"""Which records tail shows: the `--domain` and `--status` filters and their parsers."""

from __future__ import annotations

import argparse
from typing import Any

import attrs

from edgenode.hostnames import normalize_hostname
from edgenode.tools.tail.summary import UNKNOWN_DOMAIN, is_client_tls_failure, is_origin_event


@attrs.frozen
class StatusFilter:
    """`--status`: classes such as 5xx and exact codes such as 502, comma-separated."""

    classes: frozenset[int]
    codes: frozenset[int]
    text: str

    def __call__(self, status: object) -> bool:
        if type(status) is not int:
            return False
        return status in self.codes or status // 100 in self.classes


def parse_status_filter(text: str) -> StatusFilter:
    """'5xx', '4xx,5xx', '502' → a StatusFilter; anything else is a usage error (exit 2)."""
    classes: set[int] = set()
    codes: set[int] = set()
    for raw in text.split(","):
        item = raw.strip().lower()
        if len(item) == 3 and item[0] in "12345" and item[1:] == "xx":
            classes.add(int(item[0]))
        elif len(item) == 3 and item.isdigit() and 100 <= int(item) <= 599:
            codes.add(int(item))
        else:
            raise argparse.ArgumentTypeError(
                f"{raw.strip()!r} is not a status; use a class such as 5xx or a code such as 502"
            )
    return StatusFilter(frozenset(classes), frozenset(codes), text)


def parse_domain_filter(text: str) -> str:
    """A domain as the access log writes it: lower case, A-labels, no trailing dot."""
    if text.strip() == UNKNOWN_DOMAIN:
        return UNKNOWN_DOMAIN
    try:
        return normalize_hostname(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


@attrs.frozen
class RecordFilter:
    """Which records the tool shows: all of them unless --domain / --status narrow it.

    A failed client handshake has no domain and no status, so either filter leaves it
    out (`--domain _unknown` names requests for unknown hosts, not handshakes).
    """

    domains: frozenset[str] = frozenset()
    status: StatusFilter | None = None

    def __call__(self, record: dict[str, Any]) -> bool:
        if (self.domains or self.status is not None) and is_client_tls_failure(record):
            return False
        if self.status is not None and is_origin_event(record):
            return False  # a health event has no status
        if self.domains:
            domain = record.get("domain")
            if (domain if isinstance(domain, str) else UNKNOWN_DOMAIN) not in self.domains:
                return False
        return self.status is None or self.status(record.get("status"))

    def describe(self) -> str:
        parts = [f"domain {d}" for d in sorted(self.domains)]
        if self.status is not None:
            parts.append(f"status {self.status.text}")
        return ", ".join(parts)
