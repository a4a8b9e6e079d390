"""Tests for edgenode.errors: the SPEC §4 code-to-status table and the config error type."""

from __future__ import annotations

import pytest

from edgenode.errors import ConfigError, ErrorCode, OriginError, Problem

SPEC_TABLE = {
    "bad_request": 400,
    "request_too_large": 413,
    "request_header_too_large": 431,
    "origin_busy": 503,
    "unknown_domain": 421,
    "origin_connect_failed": 502,
    "origin_tls_failed": 502,
    "origin_cert_untrusted": 502,
    "origin_cert_name_mismatch": 502,
    "origin_protocol_error": 502,
    "origin_timeout": 504,
}


@pytest.mark.parametrize(("value", "status"), sorted(SPEC_TABLE.items()))
def test_spec_error_codes_have_their_spec_status(value: str, status: int) -> None:
    """Each SPEC §4 error code exists under its name and maps to the status the table gives."""
    assert ErrorCode(value).status == status


def test_every_error_code_has_a_status() -> None:
    """Every member maps to an HTTP error status (the match is exhaustive)."""
    for code in ErrorCode:
        assert 400 <= code.status <= 599, code


def test_codes_outside_the_spec_table() -> None:
    """The extra codes: URI too long 414, not implemented 501, our own bug 500."""
    assert ErrorCode.URI_TOO_LONG.status == 414
    assert ErrorCode.NOT_IMPLEMENTED.status == 501
    assert ErrorCode.INTERNAL_ERROR.status == 500


def test_config_error_lists_every_problem() -> None:
    """ConfigError keeps its problems as data and renders each one, with its path, in str()."""
    problems = [
        Problem("domains.a.example.origins[0].port", "must be 1..65535, got 70000"),
        Problem("", "the config is empty"),
    ]
    err = ConfigError(problems, source="etc/edgenode.yaml")
    assert err.problems == tuple(problems)
    assert str(err) == (
        "etc/edgenode.yaml has 2 problems:\n"
        "  domains.a.example.origins[0].port: must be 1..65535, got 70000\n"
        "  the config is empty"
    )


def test_config_error_with_one_problem_and_no_source() -> None:
    """One problem reads in the singular; without a source the config is just 'config'."""
    assert str(ConfigError([Problem("listen", "bad")])) == "config has 1 problem:\n  listen: bad"


def test_origin_error_says_whether_the_request_was_sent() -> None:
    """OriginError carries its code and detail; request_sent is False unless said."""
    err = OriginError(ErrorCode.ORIGIN_TIMEOUT, "slow")
    assert (err.code, err.detail, err.request_sent) == (ErrorCode.ORIGIN_TIMEOUT, "slow", False)
    assert OriginError(ErrorCode.ORIGIN_PROTOCOL_ERROR, "x", request_sent=True).request_sent
    assert "origin_timeout" in repr(err)
