"""Every error edgenode names: config problems, and the failures a client can be told about."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import assert_never

import attrs


@attrs.frozen
class Problem:
    """One thing wrong with a config: where, what was there, and what would be accepted."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    """A config that must not be applied; `problems` lists every reason at once."""

    def __init__(self, problems: Iterable[Problem], source: str | None = None) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        n = len(self.problems)
        where = self.source or "config"
        head = f"{where} has {n} problem{'s' if n != 1 else ''}:"
        return "\n".join([head, *(f"  {p}" for p in self.problems)])


class ErrorCode(enum.Enum):
    """The error codes of SPEC §4; each maps to exactly one HTTP status."""

    BAD_REQUEST = "bad_request"
    URI_TOO_LONG = "uri_too_long"
    REQUEST_TOO_LARGE = "request_too_large"
    REQUEST_HEADER_TOO_LARGE = "request_header_too_large"
    UNKNOWN_DOMAIN = "unknown_domain"
    MISDIRECTED_REQUEST = "misdirected_request"  # TLS: host not covered by its certificate
    NOT_IMPLEMENTED = "not_implemented"
    ORIGIN_BUSY = "origin_busy"
    ORIGIN_CONNECT_FAILED = "origin_connect_failed"
    ORIGIN_TLS_FAILED = "origin_tls_failed"
    ORIGIN_CERT_UNTRUSTED = "origin_cert_untrusted"
    ORIGIN_CERT_NAME_MISMATCH = "origin_cert_name_mismatch"
    ORIGIN_PROTOCOL_ERROR = "origin_protocol_error"
    ORIGIN_TIMEOUT = "origin_timeout"
    INTERNAL_ERROR = "internal_error"

    @property
    def status(self) -> int:
        match self:
            case ErrorCode.BAD_REQUEST:
                return 400
            case ErrorCode.URI_TOO_LONG:
                return 414
            case ErrorCode.REQUEST_TOO_LARGE:
                return 413
            case ErrorCode.REQUEST_HEADER_TOO_LARGE:
                return 431
            case ErrorCode.UNKNOWN_DOMAIN | ErrorCode.MISDIRECTED_REQUEST:
                return 421
            case ErrorCode.NOT_IMPLEMENTED:
                return 501
            case ErrorCode.ORIGIN_BUSY:
                return 503
            case (
                ErrorCode.ORIGIN_CONNECT_FAILED
                | ErrorCode.ORIGIN_TLS_FAILED
                | ErrorCode.ORIGIN_CERT_UNTRUSTED
                | ErrorCode.ORIGIN_CERT_NAME_MISMATCH
                | ErrorCode.ORIGIN_PROTOCOL_ERROR
            ):
                return 502
            case ErrorCode.ORIGIN_TIMEOUT:
                return 504
            case ErrorCode.INTERNAL_ERROR:
                return 500
            case _:
                assert_never(self)


class OriginError(Exception):
    """A back-to-origin attempt failed.

    `request_sent` says whether any byte of the request may have reached the
    origin: it decides whether a non-idempotent request may move to another
    origin (SPEC §4).
    """

    def __init__(
        self, code: ErrorCode, detail: str, *, request_sent: bool = False, peer: object = None
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.request_sent = request_sent
        self.peer = peer  # the certificate facts, when a handshake got that far

    def __repr__(self) -> str:
        return f"OriginError({self.code.value}, {self.detail!r}, sent={self.request_sent})"
