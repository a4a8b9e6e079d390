"""Tests for `edgenode tail`: the follower, the pure summary, the filters and the command.

Logs are written with the edge's own writer (`AccessRecord.to_json_line`). Expected
numbers are computed here, independently of edgenode.tools.tail. Following is driven by
explicit `Follower.poll()` calls (or `follow()` with a fake clock and sleep), so
nothing sleeps.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from edgenode.accesslog import AccessRecord
from edgenode.tools.cli import main
from edgenode.tools.tail.engine import Tail, follow
from edgenode.tools.tail.filters import RecordFilter, parse_status_filter
from edgenode.tools.tail.follower import Follower
from edgenode.tools.tail.summary import (
    LATENCY_SECONDS,
    LatencyWindow,
    LogSummary,
    Rates,
    nearest_rank,
)
from edgenode.tools.tail.view import ONCE_COLUMNS, LineSink, live_view

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


def mixed_log(n: int = 600, seed: int = 4) -> list[bytes]:
    """`n` lines over three domains and unknown hosts, every status class, varied latency."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        domain = rng.choice(DOMAINS)
        status = 421 if domain is None else rng.choice(STATUSES)
        error = ERRORS.get(status)
        lines.append(
            line(
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
        )
    return lines


def write(path: Path, lines: Iterable[bytes], mode: str = "ab") -> None:
    with path.open(mode) as f:
        f.writelines(lines)


def expected_rows(lines: Iterable[bytes]) -> dict[str, dict[str, Any]]:
    """The --once table computed straight from the JSON, without edgenode.tools.tail."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for raw in lines:
        data = json.loads(raw)
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
            name: (None if value == "-" else float(value)) if name.endswith("_ms") else int(value)
            for name, value in zip(ONCE_COLUMNS[1:], values, strict=True)
        }
    return rows


def as_table(expected: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Expected rows as the table shows them (milliseconds to one decimal)."""
    return {
        domain: {k: round(v, 1) if k.endswith("_ms") else v for k, v in row.items()}
        for domain, row in expected.items()
    }


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
    assert out.splitlines()[-1].split() == ["_total", "0", "0", "0", "0", "0", "-", "-", "-", "0"]


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
