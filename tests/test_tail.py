"""Tests for `edgenode tail`: the follower, the pure summary, the filters and the command.

Logs are written with the edge's own writer (`AccessRecord.to_json_line`); the fields
SPEC §8 adds (`scheme`, `client_tls_version`, `client_sni`, after `generation`) and the
lines of failed client TLS handshakes are added here as the edge writes them, and some
lines stay as older edges wrote them, without those keys. Expected numbers are computed
here, independently of edgenode.tools.tail. Following is driven by explicit
`Follower.poll()` calls (or `follow()` with a fake clock and sleep), so nothing sleeps.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from edgenode.accesslog import FIELDS, AccessRecord, origin_state_line
from edgenode.tools.cli import main
from edgenode.tools.tail.engine import Tail, follow
from edgenode.tools.tail.filters import RecordFilter, parse_status_filter
from edgenode.tools.tail.follower import Follower
from edgenode.tools.tail.summary import (
    LATENCY_SECONDS,
    MAX_CLIENT_TLS_GROUPS,
    LatencyWindow,
    LogSummary,
    Rates,
    nearest_rank,
)
from edgenode.tools.tail.view import ONCE_COLUMNS, LineSink, live_view

# Run on the pure-Python fallback too (.ci/run, EDGENODE_NO_EXTENSIONS=1).
pytestmark = pytest.mark.datapath

DOMAINS = ("www.example.com", "img.example.com", "api.example.com", None)
STATUSES = (200, 200, 200, 204, 301, 304, 404, 421, 500, 502, 503, 504)
ERRORS = {
    421: "unknown_domain",
    502: "origin_cert_name_mismatch",
    503: "origin_busy",
    504: "origin_timeout",
    500: "internal_error",
}


def record(i: int, **fields: Any) -> AccessRecord:
    """An access record as the edge fills it in; `fields` override the defaults."""
    rec = AccessRecord(
        request_id=f"req-{i:05d}",
        client="192.0.2.7",
        method="GET",
        host=fields.get("domain") or "nowhere.example",
        path=f"/p/{i}",
        started=1_700_000_000.0 + i / 10,
        generation=1,
        status=200,
        bytes_sent=100,
        duration_ms=10.0,
        attempts=1,
    )
    for name, value in fields.items():
        setattr(rec, name, value)
    return rec


def line(i: int, **fields: Any) -> bytes:
    return record(i, **fields).to_json_line()


CLIENT_FIELDS = ("scheme", "client_tls_version", "client_sni")  # SPEC §8, after `generation`


def old_line(i: int, **fields: Any) -> bytes:
    """A request line as edges before HTTPS for clients wrote it: no SPEC §8 keys at all."""
    data = {k: v for k, v in json.loads(line(i, **fields)).items() if k not in CLIENT_FIELDS}
    return json.dumps(data, separators=(",", ":")).encode() + b"\n"


def with_client_fields(
    raw: bytes, scheme: str, tls_version: str | None = None, client_sni: str | None = None
) -> bytes:
    """`raw` as an edge with HTTPS for clients writes it: SPEC §8 fields after `generation`."""
    data: dict[str, Any] = {}
    for key, value in json.loads(raw).items():
        if key in CLIENT_FIELDS:
            continue
        data[key] = value
        if key == "generation":
            data.update(scheme=scheme, client_tls_version=tls_version, client_sni=client_sni)
    return json.dumps(data, separators=(",", ":")).encode() + b"\n"


def https_line(i: int, **fields: Any) -> bytes:
    """A request that came over the HTTPS listener, its SNI being its host."""
    sni = fields.get("domain") or "nowhere.example"
    return with_client_fields(line(i, **fields), "https", "TLSv1.3", sni)


def handshake_failure(
    i: int, error: str, client_sni: str | None, detail: str = "alert", client: str = "198.51.100.9"
) -> bytes:
    """The line the edge writes for a client TLS handshake that failed: not a request."""
    request_fields = [key for key in FIELDS if key not in CLIENT_FIELDS]
    generation = request_fields.index("generation") + 1
    order = [*request_fields[:generation], *CLIENT_FIELDS, *request_fields[generation:]]
    data: dict[str, Any] = dict.fromkeys(order)
    data.update(
        ts=f"2026-12-05T10:00:{i % 60:02d}.{i % 1000:03d}Z",
        client=client,
        bytes_sent=0,
        scheme="https",
        client_tls_version=None,
        client_sni=client_sni,
        error=error,
        error_detail=detail,
    )
    return json.dumps(data, separators=(",", ":")).encode() + b"\n"


def mixed_log(n: int = 600, seed: int = 4) -> list[bytes]:
    """`n` lines over three domains and unknown hosts, every status class, varied latency.

    A third of the lines are as older edges wrote them (no `scheme`), a third came over
    plain HTTP, a third over HTTPS.
    """
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        domain = rng.choice(DOMAINS)
        status = 421 if domain is None else rng.choice(STATUSES)
        error = ERRORS.get(status)
        raw = old_line(
            i,
            domain=domain,
            status=status,
            bytes_sent=rng.randrange(0, 50_000),
            duration_ms=rng.randrange(1, 30_000) / 10,  # one decimal: exact in the table
            error=error,
            origin=None if domain is None else f"203.0.113.{rng.randrange(1, 3)}:443",
            sni=domain,
            error_detail=f"detail of {i}" if error else None,
        )
        scheme = rng.choice((None, "http", "https"))
        if scheme == "https":
            raw = with_client_fields(raw, "https", "TLSv1.3", domain or "nowhere.example")
        elif scheme == "http":
            raw = with_client_fields(raw, "http")
        lines.append(raw)
    return lines


def with_handshake_failures(lines: list[bytes], every: int = 7) -> list[bytes]:
    """`lines` with a failed client handshake after every `every`-th line."""
    snis = (None, "www.example.com", "unknown.example", None)
    errors = ("client_tls_failed", "client_tls_unknown_sni")
    out = []
    for i, raw in enumerate(lines):
        out.append(raw)
        if i % every == 0:
            n = i // every
            out.append(handshake_failure(n, errors[n % 2], snis[n % 4], f"reason {n}"))
    return out


def is_handshake_failure(raw: bytes) -> bool:
    return json.loads(raw)["request_id"] is None


def write(path: Path, lines: Iterable[bytes], mode: str = "ab") -> None:
    with path.open(mode) as f:
        f.writelines(lines)


def expected_rows(lines: Iterable[bytes]) -> dict[str, dict[str, Any]]:
    """The --once table computed straight from the JSON, without edgenode.tools.tail.

    Lines of failed client handshakes are not requests: they are in no row.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for raw in lines:
        data = json.loads(raw)
        if data["request_id"] is None:
            continue
        groups.setdefault(data["domain"] or "_unknown", []).append(data)
        groups.setdefault("_total", []).append(data)
    rows = {}
    for domain, records in groups.items():
        durations = sorted(r["duration_ms"] for r in records)

        def pct(p: int, durations: list[float] = durations) -> float:
            return durations[math.ceil(p / 100 * len(durations)) - 1]

        row: dict[str, Any] = {"requests": len(records)}
        for cls in range(2, 6):
            row[f"{cls}xx"] = sum(1 for r in records if r["status"] // 100 == cls)
        row.update(p50_ms=pct(50), p95_ms=pct(95), p99_ms=pct(99))
        row["bytes"] = sum(r["bytes_sent"] for r in records)
        # A line without `scheme` was written before the edge served HTTPS: plain HTTP.
        row["https_%"] = 100 * sum(r.get("scheme") == "https" for r in records) / len(records)
        rows[domain] = row
    return rows


def once_table(out: str) -> dict[str, dict[str, Any]]:
    """Parse the domain table of `--once` output: {domain: {column: value}}."""
    lines = out.splitlines()
    header = next(i for i, text in enumerate(lines) if text.split() == list(ONCE_COLUMNS))
    rows = {}
    for text in lines[header + 1 :]:
        if not text.strip():
            break
        if set(text.strip()) == {"─"}:
            continue
        domain, *values = text.split()
        assert len(values) == len(ONCE_COLUMNS) - 1, text
        rows[domain] = {
            name: _once_value(name, value)
            for name, value in zip(ONCE_COLUMNS[1:], values, strict=True)
        }
    return rows


def _once_value(name: str, value: str) -> int | float | None:
    if name.endswith(("_ms", "_%")):
        return None if value == "-" else float(value)
    return int(value)


def as_table(expected: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Expected rows as the table shows them (milliseconds and percentages to one decimal)."""
    return {
        domain: {k: round(v, 1) if k.endswith(("_ms", "_%")) else v for k, v in row.items()}
        for domain, row in expected.items()
    }


def section(out: str, title_start: str) -> list[list[str]]:
    """The rows of the --once table whose title starts with `title_start`, split into words."""
    lines = out.splitlines()
    start = next(i for i, text in enumerate(lines) if text.startswith(title_start))
    rows = []
    for text in lines[start + 3 :]:  # title, column names, rule
        if not text.strip():
            break
        rows.append(text.split())
    return rows


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "access.log"


# --- --once ---------------------------------------------------------------------------------


def test_once_counts_and_nearest_rank_percentiles(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--once prints per-domain and total counts, classes, bytes, nearest-rank p50/p95/p99."""
    lines = mixed_log()
    write(log, lines)
    assert main(["tail", "--once", str(log)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith(f"edgenode tail {log}: 600 records, 0 unparsable")
    assert once_table(out) == as_table(expected_rows(lines))


def test_summary_numbers_are_exact(log: Path) -> None:
    """The pure core reports the same numbers unrounded, and rows by most requests first."""
    lines = mixed_log(900, seed=11)
    summary = LogSummary(latency_seconds=None)
    for raw in lines:
        summary.add(json.loads(raw))
    snap = summary.snapshot()
    expected = expected_rows(lines)
    got = {row.domain: row for row in (*snap.domains, snap.total)}
    assert set(got) == set(expected)
    for domain, row in expected.items():
        stats = got[domain]
        assert {name: stats.column(name) for name in ONCE_COLUMNS[1:]} == row
    requests = [row.requests for row in snap.domains]
    assert requests == sorted(requests, reverse=True)


def test_once_on_an_empty_log(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An empty file summarises to zero requests and '-' percentiles, exit 0."""
    log.touch()
    assert main(["tail", "--once", str(log)]) == 0
    out = capsys.readouterr().out
    last = ["_total", "0", "0", "0", "0", "0", "-", "-", "-", "0", "-"]
    assert out.splitlines()[-1].split() == last
    assert "https - of requests (0 of 0)" in out


def test_once_groups_origin_failures_and_lists_recent_errors(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """origin_* errors group by (domain, origin, sni, error); the last errors show request ids."""
    write(
        log,
        [
            line(
                1,
                domain="a.test",
                origin="10.0.0.1:443",
                sni="a.test",
                status=502,
                error="origin_cert_name_mismatch",
                error_detail="covers default.test",
            ),
            line(
                2,
                domain="a.test",
                origin="10.0.0.1:443",
                sni="a.test",
                status=502,
                error="origin_cert_name_mismatch",
                error_detail="covers default.test",
            ),
            line(
                3,
                domain="a.test",
                origin="10.0.0.2:443",
                sni=None,
                status=502,
                error="origin_tls_failed",
                error_detail="alert handshake failure",
            ),
            line(
                4,
                domain="a.test",
                origin="10.0.0.1:443",
                sni="a.test",
                status=504,
                error="origin_timeout",
            ),
            line(5, domain=None, status=421, error="unknown_domain"),
            line(6, domain="a.test", status=200),
        ],
    )
    assert main(["tail", "--once", str(log)]) == 0
    out = capsys.readouterr().out
    failures = out.split("origin failures by (domain, origin, sni, error)\n")[1].split("\n\n")[0]
    rows = [text.split()[:5] for text in failures.splitlines()[2:]]
    assert rows == [
        ["a.test", "10.0.0.1:443", "a.test", "origin_cert_name_mismatch", "2"],
        ["a.test", "10.0.0.1:443", "a.test", "origin_timeout", "1"],
        ["a.test", "10.0.0.2:443", "(none)", "origin_tls_failed", "1"],
    ]
    assert "unknown_domain" not in failures
    errors = out.split("last errors, newest first\n")[1].splitlines()[2:]
    assert [text.split()[1] for text in errors] == [f"req-{i:05d}" for i in (5, 4, 3, 2, 1)]
    assert "alert handshake failure" in errors[2]


def test_recent_errors_and_failure_groups_are_bounded() -> None:
    """Only the last 10 errors are kept, newest last, and failure groups count every record."""
    summary = LogSummary()
    for i in range(50):
        summary.add(json.loads(line(i, domain="a.test", status=502, error="origin_tls_failed")))
    snap = summary.snapshot()
    assert [e.request_id for e in snap.recent_errors] == [f"req-{i:05d}" for i in range(40, 50)]
    assert [(g.domain, g.error, g.count) for g in snap.failures] == [
        ("a.test", "origin_tls_failed", 50)
    ]


# --- --json and filters -----------------------------------------------------------------------


def test_json_status_5xx_prints_exactly_the_5xx_lines(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--once --json --status 5xx prints the original text of every 5xx line, in order, only."""
    lines = mixed_log()
    write(log, lines)
    assert main(["tail", "--once", "--json", "--status", "5xx", str(log)]) == 0
    out = capsys.readouterr().out
    wanted = [raw for raw in lines if 500 <= json.loads(raw)["status"] <= 599]
    assert len(wanted) > 50
    assert out.encode() == b"".join(wanted)


@pytest.mark.parametrize(
    ("status", "matches"),
    [
        ("502", lambda s: s == 502),
        ("4xx,504", lambda s: s // 100 == 4 or s == 504),
        ("3XX", lambda s: s // 100 == 3),
    ],
)
def test_status_filter_codes_and_classes(
    log: Path, capsys: pytest.CaptureFixture[str], status: str, matches: Callable[[int], bool]
) -> None:
    """--status takes exact codes, classes and comma-separated lists."""
    lines = mixed_log()
    write(log, lines)
    assert main(["tail", "--once", "--json", "--status", status, str(log)]) == 0
    wanted = [raw for raw in lines if matches(json.loads(raw)["status"])]
    assert capsys.readouterr().out.encode() == b"".join(wanted)


def test_domain_filter_applies_to_the_summary(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--domain (normalised: case, trailing dot) leaves only that domain's rows and totals."""
    lines = mixed_log()
    write(log, lines)
    assert main(["tail", "--once", "--domain", "IMG.Example.com.", str(log)]) == 0
    out = capsys.readouterr().out
    mine = [raw for raw in lines if json.loads(raw)["domain"] == "img.example.com"]
    expected = as_table(expected_rows(mine))
    assert once_table(out) == {
        "img.example.com": expected["img.example.com"],
        "_total": expected["_total"],
    }
    assert f"{len(mine)} records, filter: domain img.example.com" in out


def test_domain_and_status_filters_combine_in_json(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--domain and --status together keep lines matching both; _unknown names unknown hosts."""
    lines = mixed_log()
    write(log, lines)
    assert main(["tail", "--once", "--json", "--domain", "_unknown", str(log)]) == 0
    unknown = [raw for raw in lines if json.loads(raw)["domain"] is None]
    assert capsys.readouterr().out.encode() == b"".join(unknown)
    args = ["tail", "--once", "--json", "--domain", "www.example.com", "--status", "404"]
    assert main([*args, str(log)]) == 0
    both = [
        raw
        for raw in lines
        if json.loads(raw)["domain"] == "www.example.com" and json.loads(raw)["status"] == 404
    ]
    assert both
    assert capsys.readouterr().out.encode() == b"".join(both)


@pytest.mark.parametrize(
    "argv",
    [
        ["--status", "7xx"],
        ["--status", "5x"],
        ["--status", "99"],
        ["--domain", "*.example.com"],
        ["--domain", "bad domain"],
    ],
)
def test_bad_filters_are_usage_errors(
    log: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """A status or domain that cannot match anything is a usage error: exit 2, with a message."""
    log.touch()
    assert main(["tail", "--once", *argv, str(log)]) == 2
    assert "edgenode tail: error: argument" in capsys.readouterr().err


def test_status_filter_rejects_non_integer_statuses() -> None:
    """A record whose status is missing or not an integer never matches a status filter."""
    keep = parse_status_filter("5xx")
    assert keep(502) and not keep(404)
    assert not keep(None) and not keep("502") and not keep(True)


# --- HTTPS for clients (SPEC §8): the https share, failed client handshakes --------------------


def test_once_shows_the_https_share_and_lists_handshake_failures_apart(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--once: the https share of requests, rows and totals of requests only, and the failed
    client handshakes by (client SNI, error) with their totals by error."""
    requests = mixed_log()
    lines = with_handshake_failures(requests)
    write(log, lines)
    assert main(["tail", "--once", str(log)]) == 0
    out = capsys.readouterr().out
    failures = [json.loads(raw) for raw in lines if is_handshake_failure(raw)]
    https = sum(json.loads(raw).get("scheme") == "https" for raw in requests)
    assert 0 < https < len(requests)
    assert out.splitlines()[:2] == [
        f"edgenode tail {log}: {len(lines)} records "
        f"({len(failures)} client TLS handshake failures), 0 unparsable",
        f"https {100 * https / len(requests):.1f} % of requests ({https} of {len(requests)})",
    ]
    assert once_table(out) == as_table(expected_rows(requests))

    by_error = Counter(f["error"] for f in failures)
    totals = ", ".join(f"{e} {n}" for e, n in sorted(by_error.items(), key=lambda i: (-i[1], i[0])))
    title = f"client TLS handshake failures by (sni, error): {len(failures)} ({totals})"
    assert title in out.splitlines()
    rows = section(out, title)
    assert {(row[0], row[1]): int(row[2]) for row in rows} == Counter(
        (f["client_sni"] or "(none)", f["error"]) for f in failures
    )
    assert [int(row[2]) for row in rows] == sorted((int(row[2]) for row in rows), reverse=True)
    assert all(row[4] == "198.51.100.9" for row in rows)  # the last client of each group
    assert "client_tls" not in out.split("last errors, newest first")[1]  # not request errors


def test_https_share_per_domain_counts_old_lines_as_http(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A line without `scheme` (an older edge) is plain HTTP; each row has its own share."""
    write(
        log,
        [
            old_line(1, domain="a.test"),  # written before HTTPS for clients: no scheme
            with_client_fields(line(2, domain="a.test"), "http"),
            https_line(3, domain="a.test"),
            https_line(4, domain="a.test"),
            https_line(5, domain="b.test"),
            handshake_failure(6, "client_tls_failed", None, "no shared cipher"),
        ],
    )
    assert main(["tail", "--once", str(log)]) == 0
    out = capsys.readouterr().out
    rows = once_table(out)
    assert {domain: row["https_%"] for domain, row in rows.items()} == {
        "a.test": 50.0,
        "b.test": 100.0,
        "_total": 60.0,
    }
    assert rows["_total"]["requests"] == 5
    assert "https 60.0 % of requests (3 of 5)" in out
    assert section(out, "client TLS handshake failures")[0][:3] == [
        "(none)",
        "client_tls_failed",
        "1",
    ]


def test_a_log_from_before_https_shows_no_https_and_no_handshake_section(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only old lines: 0.0 % https, every row 0.0, and no client handshake section at all."""
    write(log, [old_line(i, domain="a.test") for i in range(3)])
    assert main(["tail", "--once", str(log)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"edgenode tail {log}: 3 records, 0 unparsable\n")
    assert "https 0.0 % of requests (0 of 3)" in out
    assert {row["https_%"] for row in once_table(out).values()} == {0.0}
    assert "handshake" not in out


def test_json_prints_handshake_failures_only_when_no_filter_is_given(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json prints failed handshakes among the requests; --domain (even _unknown) and
    --status leave them out, as they have neither a domain nor a status."""
    lines = with_handshake_failures(mixed_log(200))
    write(log, lines)
    assert main(["tail", "--once", "--json", str(log)]) == 0
    assert capsys.readouterr().out.encode() == b"".join(lines)

    requests = [json.loads(raw) for raw in lines]
    assert main(["tail", "--once", "--json", "--domain", "_unknown", str(log)]) == 0
    unknown = [
        raw for raw, r in zip(lines, requests, strict=True) if r["request_id"] and not r["domain"]
    ]
    assert unknown
    assert capsys.readouterr().out.encode() == b"".join(unknown)

    assert main(["tail", "--once", "--json", "--status", "5xx", str(log)]) == 0
    failed = [raw for raw, r in zip(lines, requests, strict=True) if (r["status"] or 0) >= 500]
    assert capsys.readouterr().out.encode() == b"".join(failed)


def test_a_filtered_summary_leaves_out_handshake_failures(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --status, failed handshakes are among the "other records", not in a section."""
    lines = with_handshake_failures([https_line(i, domain="a.test") for i in range(14)])
    write(log, lines)
    assert main(["tail", "--once", "--status", "2xx", str(log)]) == 0
    out = capsys.readouterr().out
    assert "14 records, filter: status 2xx (2 other records)" in out
    assert "https 100.0 % of requests (14 of 14)" in out
    assert "handshake" not in out


def test_live_view_shows_https_share_and_handshake_failures_per_second(log: Path) -> None:
    """The live view has an https % column, the share of the total, failed client handshakes
    per second, and their section by (sni, error)."""
    log.touch()
    follower = Follower(log)
    follower.open()
    summary = LogSummary()
    rates = Rates()
    feed = [https_line(1, domain="a.test"), old_line(2, domain="a.test")]
    feed += [https_line(3, domain="b.test"), handshake_failure(4, "client_tls_failed", None)]
    feed += [with_client_fields(line(5, domain="b.test"), "http")]
    for raw in feed:
        summary.add(json.loads(raw), now=0.0)
    rates.update(0.0, summary.snapshot(0.0))
    for i in range(5):
        sni = "evil.example" if i % 2 else None
        summary.add(json.loads(handshake_failure(10 + i, "client_tls_unknown_sni", sni)), now=1.0)
    snap = summary.snapshot(1.0)
    frame = live_view(log, snap, rates.update(1.0, snap), Tail(follower, RecordFilter(), summary))
    console = Console(file=io.StringIO(), width=160)
    console.print(frame)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    lines = [row.rstrip() for row in text.splitlines()]
    assert "10 records (6 client TLS handshake failures)" in lines[0]
    assert lines[1] == (
        "https 50.0 % of requests (2 of 4), client TLS handshake failures 5.0/s (5.0/s over 10s)"
    )
    header = next(row for row in lines if row.startswith("domain"))
    assert "https %" in header
    total = next(row for row in lines if row.startswith("_total")).split()
    assert total[3:5] == ["4", "50.0"]  # requests, https %: the handshakes are no requests
    title = "client TLS handshake failures by (sni, error): 6 "
    title += "(client_tls_unknown_sni 5, client_tls_failed 1)"
    assert title in lines
    groups = [row.split()[:3] for row in lines[lines.index(title) + 3 :] if row.strip()]
    assert groups == [
        ["(none)", "client_tls_unknown_sni", "3"],
        ["evil.example", "client_tls_unknown_sni", "2"],
        ["(none)", "client_tls_failed", "1"],
    ]


def test_client_sni_groups_are_bounded_and_every_failure_counted(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Random SNIs from scanners: at most MAX_CLIENT_TLS_GROUPS names are kept, the rest
    count under "(other names)", totals stay exact, and --once shows the top groups."""
    n = MAX_CLIENT_TLS_GROUPS + 200
    write(
        log,
        [handshake_failure(i, "client_tls_unknown_sni", f"r{i}.scan.example") for i in range(n)],
    )
    assert main(["tail", "--once", str(log)]) == 0
    out = capsys.readouterr().out
    title = f"client TLS handshake failures by (sni, error): {n:,} (client_tls_unknown_sni {n:,})"
    assert title in out.splitlines()
    rows = section(out, title)
    assert rows[0][:4] == ["(other", "names)", "client_tls_unknown_sni", "200"]
    assert len(rows) == 11
    assert rows[-1] == ["…", f"{MAX_CLIENT_TLS_GROUPS + 1 - 10}", "more"]
    summary = LogSummary()
    for i in range(n):
        summary.add(json.loads(handshake_failure(i, "client_tls_failed", f"r{i}.scan.example")))
    groups = summary.snapshot().client_tls.groups
    assert len(groups) == MAX_CLIENT_TLS_GROUPS + 1
    assert sum(group.count for group in groups) == n


def test_a_client_sni_is_shown_as_text_never_as_markup_or_terminal_codes(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Whatever SNI a client sends is printed as written, control characters escaped."""
    sni = "[/x][bold]\x1b[2J.example"
    write(log, [handshake_failure(1, "client_tls_unknown_sni", sni, "no certificate covers [/x]")])
    assert main(["tail", "--once", str(log)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "[/x][bold]\\x1b[2J.example" in out
    assert "no certificate covers [/x]" in out


# --- damaged input ---------------------------------------------------------------------------


def test_unparsable_lines_are_counted_and_skipped(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Garbage, foreign JSON and wrongly typed fields are counted or tolerated, never a crash."""
    write(
        log,
        [
            b"not json at all\n",
            b'["a list"]\n',
            b'{"no_request_id": true}\n',
            b"\xff\xfe\n",
            b'{"request_id": "odd", "status": "502", "duration_ms": "x", "domain": 7,'
            b' "bytes_sent": null, "error": 5}\n',
            line(1, domain="a.test", status=200, duration_ms=5.0),
            b"\n",
        ],
    )
    assert main(["tail", "--once", str(log)]) == 0
    out = capsys.readouterr().out
    assert "2 records, 4 unparsable" in out
    rows = once_table(out)
    assert rows["_unknown"]["requests"] == 1  # status "502" is not a status: no class
    assert rows["_unknown"]["5xx"] == 0
    assert rows["a.test"]["p50_ms"] == 5.0


def test_once_leaves_out_a_torn_last_line(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--once counts whole lines only and says the last one is still being written."""
    write(log, [line(1), line(2), line(3)[:-20]])
    assert main(["tail", "--once", str(log)]) == 0
    out = capsys.readouterr().out
    assert "2 records, 0 unparsable, 1 incomplete last line (not counted)" in out


def test_missing_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A log that does not exist (or is a directory) cannot be read: exit 2 and a message."""
    assert main(["tail", "--once", str(tmp_path / "nope.log")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["tail", str(tmp_path / "nope.log")]) == 2
    assert main(["tail", "--once", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "cannot read" in err


# --- the follower -----------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def request_ids(lines: Iterable[bytes]) -> list[str]:
    return [json.loads(raw)["request_id"] for raw in lines]


def ids(numbers: Iterable[int]) -> list[str]:
    return [f"req-{i:05d}" for i in numbers]


def test_follower_starts_at_the_end(log: Path) -> None:
    """Like tail -f: lines already there are skipped, lines appended later are returned."""
    write(log, [line(i) for i in range(5)])
    follower = Follower(log)
    follower.open()
    assert follower.poll() == []
    write(log, [line(5), line(6)])
    assert request_ids(follower.poll()) == ids([5, 6])
    assert follower.poll() == []


def test_follower_from_start_reads_everything(log: Path) -> None:
    """--from-start: the lines already in the file come first."""
    write(log, [line(i) for i in range(3)])
    follower = Follower(log, from_start=True)
    follower.open()
    assert request_ids(follower.poll()) == ids(range(3))


def test_torn_last_line_is_held_until_completed(log: Path) -> None:
    """A line without its newline is not returned, nor lost: it comes out whole once completed."""
    full = line(2)
    write(log, [line(1), full[:25]])
    follower = Follower(log, from_start=True)
    follower.open()
    assert request_ids(follower.poll()) == ids([1])
    assert follower.pending_bytes == 25
    write(log, [full[25:-1]])
    assert follower.poll() == []
    write(log, [b"\n", line(3)])
    assert follower.poll() == [full[:-1], line(3)[:-1]]


def test_starting_at_the_end_keeps_a_line_being_written(log: Path) -> None:
    """Started while the last line is half written, the follower returns that line whole."""
    torn = line(2)
    write(log, [line(1), torn[:30]])
    follower = Follower(log)
    follower.open()
    assert follower.poll() == []
    write(log, [torn[30:]])
    assert follower.poll() == [torn[:-1]]


def test_rotation_reads_both_files_exactly_once(log: Path) -> None:
    """After mv access.log access.log.1 and a new access.log, every line is seen once, old first."""
    clock = FakeClock()
    follower = Follower(log, clock=clock)
    log.touch()
    follower.open()
    write(log, [line(i) for i in range(0, 3)])
    seen = follower.poll()
    write(log, [line(i) for i in range(3, 6)])  # not yet polled when the file is moved
    log.rename(log.with_name("access.log.1"))
    seen += follower.poll()  # the path is gone: keep reading the old file
    write(log.with_name("access.log.1"), [line(6)])  # the writer has not reopened yet
    write(log, [line(i) for i in range(7, 10)])  # ... now it has
    seen += follower.poll()
    write(log, [line(10)])
    seen += follower.poll()
    assert request_ids(seen) == ids(range(11))
    assert follower.rotations == 1


def test_rotation_drains_late_lines_of_the_old_file(log: Path) -> None:
    """A line the writer appends to the old file after the new one appeared is still seen once."""
    clock = FakeClock()
    old = log.with_name("access.log.1")
    write(log, [line(0)])
    follower = Follower(log, from_start=True, clock=clock, drain_seconds=5)
    follower.open()
    seen = follower.poll()
    log.rename(old)
    write(log, [line(1)])  # logrotate's `create`: new file first ...
    seen += follower.poll()
    write(old, [line(2)])  # ... the writer still on the old one
    seen += follower.poll()
    clock.now += 10  # the old file has been quiet long enough: closed
    seen += follower.poll()
    write(old, [line(3)])
    write(log, [line(4)])
    seen += follower.poll()
    assert request_ids(seen) == ids([0, 1, 2, 4])
    assert follower.retired == []


def test_rotation_finishes_a_backlog_in_the_old_file_first(log: Path) -> None:
    """With more in the old file than one poll reads, the new file waits until the old is done."""
    lines = [line(i) for i in range(200)]
    write(log, lines[:1])
    follower = Follower(log, from_start=True, max_read=4096)
    follower.open()
    seen = follower.poll()
    write(log, lines[1:150])
    log.rename(log.with_name("access.log.1"))
    write(log, lines[150:])
    polls = 0
    while polls < 100 and (polls == 0 or not follower.at_eof):
        seen += follower.poll()
        polls += 1
    assert polls > 5
    assert request_ids(seen) == ids(range(200))


def test_truncation_restarts_at_the_top(log: Path) -> None:
    """When the file shrinks below the read position (copytruncate), reading restarts at 0."""
    write(log, [line(i) for i in range(10)])
    follower = Follower(log, from_start=True)
    follower.open()
    assert len(follower.poll()) == 10
    write(log, [line(100)], mode="wb")
    assert request_ids(follower.poll()) == ids([100])
    write(log, [line(101)])
    assert request_ids(follower.poll()) == ids([101])
    assert follower.truncations == 1


def test_file_deleted_and_recreated_later(log: Path) -> None:
    """The path may be missing for a while; the new file is read from its start once it appears."""
    write(log, [line(0)])
    follower = Follower(log, from_start=True)
    follower.open()
    assert request_ids(follower.poll()) == ids([0])
    log.unlink()
    assert follower.poll() == []
    assert follower.poll() == []
    write(log, [line(1), line(2)])
    assert request_ids(follower.poll()) == ids([1, 2])


def test_an_oversized_line_is_dropped_and_counted(log: Path) -> None:
    """A line longer than max_line is skipped up to its newline; memory stays bounded."""
    write(log, [line(0), b"x" * 5000, b"y" * 5000 + b"\n", line(1)])
    follower = Follower(log, from_start=True, max_line=4096, read_size=1024)
    follower.open()
    assert request_ids(follower.poll()) == ids([0, 1])
    assert follower.discarded == 1


def test_follow_loop_across_rotation_and_truncation(log: Path) -> None:
    """follow() with a fake clock and sleep: every line counted once, the view refreshed."""
    clock = FakeClock()
    log.touch()
    follower = Follower(log, clock=clock)
    follower.open()
    tail = Tail(follower, RecordFilter(), LogSummary())
    steps: Iterator[Callable[[], None]] = iter(
        [
            lambda: write(log, [line(i, domain="a.test") for i in range(5)]),
            lambda: log.rename(log.with_name("access.log.1")),
            lambda: write(log, [line(i, domain="b.test") for i in range(5, 8)]),
            lambda: write(log, [line(99, domain="b.test")], mode="wb"),  # truncated
        ]
    )
    refreshes: list[int] = []
    finished = False

    def sleep(seconds: float) -> None:
        nonlocal finished
        clock.now += seconds
        action = next(steps, None)
        if action is None:
            finished = True
        else:
            action()

    follow(
        tail,
        lambda now: refreshes.append(tail.summary.records),
        clock=clock,
        sleep=sleep,
        until=lambda: finished,
    )
    snap = tail.summary.snapshot(clock.now)
    assert {row.domain: row.requests for row in snap.domains} == {"a.test": 5, "b.test": 4}
    assert snap.records == 9
    assert refreshes  # once a (fake) second


def test_json_follow_writes_each_batch_flushed(log: Path) -> None:
    """In --json mode the follower hands the matching lines, exactly as read, to the sink."""
    log.touch()
    follower = Follower(log)
    follower.open()
    batches: list[list[bytes]] = []
    tail = Tail(
        follower, RecordFilter(status=parse_status_filter("5xx")), LogSummary(), batches.append
    )
    write(log, [line(1, status=200), line(2, status=502), line(3, status=503)])
    tail.step(0.0)
    write(log, [line(4, status=404)])
    tail.step(1.0)
    assert batches == [[line(2, status=502)[:-1], line(3, status=503)[:-1]]]
    assert tail.summary.records == 2
    assert tail.summary.skipped == 2


# --- the core's windows and rates ------------------------------------------------------------


def test_nearest_rank() -> None:
    """Nearest rank: the ceil(p/100 * n)-th smallest value."""
    values = [float(v) for v in range(1, 101)]
    assert [nearest_rank(values, p) for p in (50, 95, 99)] == [50.0, 95.0, 99.0]
    assert nearest_rank([3.0], 99) == 3.0
    assert nearest_rank([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], 50) == 4.0
    assert nearest_rank([], 50) is None


def test_latency_window_keeps_the_last_n_samples() -> None:
    """The window keeps the newest `size` samples in fixed memory."""
    window = LatencyWindow(size=100)
    for i in range(1000):
        window.add(float(i), now=float(i))
    assert window.values() == [float(i) for i in range(900, 1000)]
    assert window.values(since=990.0) == [float(i) for i in range(990, 1000)]


def test_percentiles_follow_a_sliding_time_window() -> None:
    """While following, percentiles cover only the last LATENCY_SECONDS; counts cover everything."""
    summary = LogSummary()
    for i in range(10):
        summary.add(json.loads(line(i, domain="a.test", duration_ms=1000.0)), now=0.0)
    for i in range(10, 20):
        summary.add(json.loads(line(i, domain="a.test", duration_ms=5.0)), now=100.0)
    snap = summary.snapshot(now=100.0 + LATENCY_SECONDS / 2)
    row = snap.domains[0]
    assert row.requests == 20
    assert (row.p50_ms, row.p99_ms, row.latency_samples) == (5.0, 5.0, 10)


def test_domains_beyond_the_cap_are_counted_as_other() -> None:
    """Rows are bounded: domains past max_domains fold into _other, nothing is lost."""
    summary = LogSummary(max_domains=3)
    for i in range(10):
        summary.add(json.loads(line(i, domain=f"d{i}.test")))
    snap = summary.snapshot()
    assert len(snap.domains) == 4
    assert {row.domain: row.requests for row in snap.domains}["_other"] == 7
    assert snap.total.requests == 10


def test_rates_over_the_last_interval_and_the_window() -> None:
    """req/s and bytes/s since the previous refresh and over the last 10 s, per domain and total."""
    summary = LogSummary()
    rates = Rates(window=10)
    seen: dict[str, Any] = {}
    for second in range(0, 21):
        per_second = 10 if second < 15 else 30
        for i in range(per_second):
            summary.add(json.loads(line(i, domain="a.test", bytes_sent=1000)), now=second)
        seen = rates.update(float(second), summary.snapshot(float(second)))
    rate = seen["a.test"]
    assert rate.requests_now == 30
    assert rate.bytes_now == 30_000
    assert rate.requests_window == pytest.approx((6 * 30 + 4 * 10) / 10)
    assert seen["_total"] == rate
    assert len(rates.history) <= 12


def test_live_view_renders_rows_failures_and_errors(log: Path) -> None:
    """One frame of the live view shows each domain, the failure panel and the last errors."""
    follower = Follower(log)
    log.touch()
    follower.open()
    summary = LogSummary()
    for raw in mixed_log(200):
        summary.add(json.loads(raw), now=1.0)
    tail = Tail(follower, RecordFilter(), summary)
    snap = summary.snapshot(1.0)
    frame = live_view(log, snap, Rates().update(1.0, snap), tail, width=200)
    console = Console(file=io.StringIO(), width=200)
    console.print(frame)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    for name in ("www.example.com", "img.example.com", "api.example.com", "_unknown", "_total"):
        assert name in text
    assert "origin failures by (domain, origin, sni, error)" in text
    assert "origin_cert_name_mismatch" in text
    assert "req-00" in text
    assert "p99 ms" in text and "req/s 10s" in text


def test_live_view_fits_a_narrow_terminal(log: Path) -> None:
    """At 80 columns, low-priority columns give way; requests, 5xx and p99 stay."""
    log.touch()
    follower = Follower(log)
    follower.open()
    summary = LogSummary()
    for raw in mixed_log(200):
        summary.add(json.loads(raw), now=1.0)
    snap = summary.snapshot(1.0)
    frame = live_view(
        log, snap, Rates().update(1.0, snap), Tail(follower, RecordFilter(), summary), width=80
    )
    console = Console(file=io.StringIO(), width=80)
    console.print(frame)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert max(len(row) for row in text.splitlines()) <= 80
    header = next(row for row in text.splitlines() if row.startswith("domain"))
    assert header.split()[:3] == ["domain", "req/s", "requests"]
    assert "5xx" in header and "p99 ms" in header
    assert "bytes/s 10s" not in header


def test_tail_is_listed_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    """`edgenode --help` lists tail; `edgenode tail --help` exits 0."""
    assert main(["--help"]) == 0
    assert "tail" in capsys.readouterr().out
    assert main(["tail", "--help"]) == 0
    assert "--from-start" in capsys.readouterr().out


def test_the_follower_never_keeps_descriptors_open_after_close(log: Path) -> None:
    """close() releases the current and any rotated-away file."""
    write(log, [line(0)])
    follower = Follower(log)
    follower.open()
    log.rename(log.with_name("access.log.1"))
    write(log, [line(1)])
    follower.poll()
    fds = [follower.current.file.fileno()] + [r.file.fileno() for r in follower.retired]  # type: ignore[union-attr]
    follower.close()
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_line_sink_writes_the_bytes_as_read() -> None:
    """--json output is the original bytes (binary stdout) or their text, one line each."""
    raw = [line(1, path="/caf\u00e9"), line(2)]
    binary = io.BytesIO()
    stdout = io.TextIOWrapper(binary, encoding="utf-8")
    LineSink(stdout)([r[:-1] for r in raw])
    assert binary.getvalue() == b"".join(raw)
    text = io.StringIO()
    LineSink(text)([r[:-1] for r in raw])
    assert text.getvalue().encode() == b"".join(raw)


# --- origin health events (SPEC §10) -------------------------------------------------------


def origin_event(ts: float, domain: str, origin: str, up: bool, reason: str) -> bytes:
    """A line as the edge writes it when an origin is marked down or up."""
    return origin_state_line(ts, domain, origin, "a.example.test", up, reason)


def test_origins_marked_down_are_listed_until_they_come_back_and_are_not_requests(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An operator tailing the log sees which origins are down and why; the events count
    as records but never as requests, and a later `origin_up` takes an origin off."""
    requests = mixed_log(50)
    write(
        log,
        [
            *requests,
            origin_event(1_800_000_000.0, "a.example", "10.0.0.1:443", False, "3 checks failed"),
            origin_event(1_800_000_001.0, "b.example", "10.0.0.2:443", False, "ejected for 30s"),
            origin_event(1_800_000_002.0, "b.example", "10.0.0.2:443", True, "ejection over"),
        ],
    )
    assert main(["tail", "--once", str(log)]) == 0
    out = capsys.readouterr().out
    assert "origins down: 1" in out
    down = out[out.index("origins down: 1") :]
    assert "10.0.0.1:443" in down and "3 checks failed" in down
    assert "10.0.0.2:443" not in down
    assert once_table(out) == as_table(expected_rows(requests))  # events are not requests
    assert main(["tail", "--once", "--status", "5xx", "--json", str(log)]) == 0
    assert "origin_down" not in capsys.readouterr().out  # a health event has no status
