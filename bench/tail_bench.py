"""How fast `edgenode tail` reads the access log, once and while following it.

    python bench/tail_bench.py [--lines 200000] [--rates 5000,20000,50000] [--seconds 10]

1. `--once`: N realistic access-log lines (written by `AccessRecord.to_json_line`, the
   edge's own writer) are summarised through `edgenode.tools.cli.main(["tail", "--once", ...])`,
   the command's own code path, and again with `--json --status 5xx`; prints lines/s.
2. Follow mode: a writer thread appends lines at a fixed rate, rotates the file
   halfway (`mv` + a new file, as the edge does on SIGUSR1), while the follower runs
   `edgenode.tools.tail.engine.follow` with the live view rendered every second to a throw-away
   console. Reports whether every line was seen exactly once and the lag from the
   write to the line being counted (p50/p99/max), and how much the process's resident
   memory grew while following (the benchmark's own bookkeeping is allocated first).

Numbers go into bench/README.md ("tail").
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import random
import resource
import sys
import tempfile
import threading
import time
from array import array
from pathlib import Path
from typing import Any

from rich.console import Console

from edgenode.accesslog import AccessRecord
from edgenode.tools.cli import main
from edgenode.tools.tail.engine import Tail, follow
from edgenode.tools.tail.filters import RecordFilter
from edgenode.tools.tail.follower import Follower
from edgenode.tools.tail.summary import LogSummary, Rates
from edgenode.tools.tail.view import live_view

DOMAINS = ["www.example.com", "img.example.com", "api.example.com", "static.example.net"]
ORIGINS = {
    "www.example.com": ["203.0.113.10:443", "203.0.113.11:443"],
    "img.example.com": ["203.0.113.20:443"],
    "api.example.com": ["203.0.113.30:443", "203.0.113.31:443"],
    "static.example.net": ["198.51.100.7:443"],
}
MISMATCH = (
    "origin presented a certificate for default.test, www.default.test; it does not cover "
    "{sni} — the origin may lack a vhost for this SNI, or origin SNI is off"
)


def make_line(i: int, rng: random.Random, now: float) -> bytes:
    """One access-log line as the edge writes it, with a realistic mix of outcomes."""
    domain: str | None = rng.choice(DOMAINS) if rng.random() > 0.01 else None
    rec = AccessRecord(
        request_id=f"req{i:09d}",
        client=f"192.0.2.{rng.randrange(1, 255)}",
        method="GET" if rng.random() < 0.9 else "POST",
        host=domain or "nowhere.example",
        path=f"/assets/{rng.randrange(10_000)}/image-{rng.randrange(100)}.jpg?v={i % 7}",
        started=now,
        generation=3,
        attempts=1,
        duration_ms=rng.lognormvariate(3.0, 0.8),
    )
    if domain is None:
        rec.status, rec.error = 421, "unknown_domain"
        rec.error_detail = "no domain is configured for host 'nowhere.example'"
        return rec.to_json_line()
    origin = rng.choice(ORIGINS[domain])
    rec.domain, rec.origin, rec.sni, rec.verify_name = domain, origin, domain, domain
    roll = rng.random()
    if roll < 0.015:
        rec.status, rec.error = 502, "origin_cert_name_mismatch"
        rec.error_detail = MISMATCH.format(sni=domain)
        rec.origin_cert = {
            "subject": "CN=default.test",
            "dns_names": ["default.test", "www.default.test"],
            "issuer": "CN=Example CA",
            "not_after": "2026-01-01T00:00:00Z",
            "sha256": "ab" * 32,
        }
        return rec.to_json_line()
    if roll < 0.02:
        rec.status, rec.error, rec.error_detail = 504, "origin_timeout", "no response in 30 s"
        rec.duration_ms = 30_000.0
        return rec.to_json_line()
    rec.tls_version, rec.tls_cipher = "TLSv1.3", "TLS_AES_256_GCM_SHA384"
    rec.connection_reused = rng.random() < 0.9
    if not rec.connection_reused:
        rec.upstream_connect_ms = rng.uniform(0.3, 3.0)
        rec.upstream_handshake_ms = rng.uniform(2.0, 12.0)
        rec.tls_resumed = False
    rec.status = rng.choices([200, 206, 304, 404, 500], [85, 3, 8, 3, 1])[0]
    rec.origin_status = rec.status
    rec.bytes_sent = 0 if rec.status == 304 else rng.randrange(200, 300_000)
    return rec.to_json_line()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    """The process's resident memory now (Linux)."""
    for text in Path("/proc/self/status").read_text().splitlines():
        if text.startswith("VmRSS:"):
            return int(text.split()[1]) / 1024
    return float("nan")


def bench_once(path: Path, n: int) -> None:
    rng = random.Random(7)
    t0 = time.time()
    with path.open("wb") as f:
        f.writelines(make_line(i, rng, t0 + i / 5000) for i in range(n))
    size = path.stat().st_size
    print(f"once: {n:,} lines, {size / 1e6:.1f} MB ({size / n:.0f} bytes/line)")
    for argv in (
        ["tail", "--once", str(path)],
        ["tail", "--once", "--json", "--status", "5xx", str(path)],
    ):
        out = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(out):
            rc = main(argv)
        elapsed = time.perf_counter() - start
        assert rc == 0, rc
        label = " ".join(argv[:-1])
        print(f"  edgenode {label}: {elapsed:.2f} s, {n / elapsed:,.0f} lines/s")
    print(f"  peak RSS: {peak_rss_mib():.0f} MiB")


class _TimedTail(Tail):
    """Tail that notes, after each step, how long each counted line took to arrive."""

    def __init__(self, *args: Any, written_at: array[float], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Preallocated, so that the RSS growth measured is the follower's own.
        self.written_at = written_at
        self.seen = bytearray(len(written_at))
        self.duplicates = 0
        self.lags = array("d", bytes(8 * len(written_at)))
        self.counted = 0

    def feed(self, lines: Any, now: float) -> int:
        lines = list(lines)
        n = super().feed(lines, now)
        done = time.monotonic()
        for line in lines:
            at = line.index(b'"request_id":"req') + 17
            i = int(line[at : at + 9])
            if self.seen[i]:
                self.duplicates += 1
            self.seen[i] = 1
            self.lags[self.counted] = done - self.written_at[i]
            self.counted += 1
        return n


def bench_follow(directory: Path, rate: int, seconds: float) -> None:
    path = directory / f"follow-{rate}.log"
    path.touch()
    n = int(rate * seconds)
    rng = random.Random(rate)
    # 5,000 distinct lines, each written many times with a fresh request id: the writer
    # stays cheap and the benchmark's own memory does not grow with n.
    templates = [make_line(i, rng, time.time()) for i in range(5000)]
    offsets = [t.index(b'"request_id":"req') + 17 for t in templates]

    def line_for(i: int) -> bytes:
        k = i % len(templates)
        t, at = templates[k], offsets[k]
        return b"%s%09d%s" % (t[:at], i, t[at + 9 :])

    written_at = array("d", bytes(8 * n))
    follower = Follower(path)
    follower.open()
    tail = _TimedTail(follower, RecordFilter(), LogSummary(), written_at=written_at)
    rates = Rates()
    null = Console(file=io.StringIO(), width=160)

    def refresh(now: float) -> None:
        snap = tail.summary.snapshot(now)
        null.file = io.StringIO()
        null.print(live_view(path, snap, rates.update(now, snap), tail))

    done = threading.Event()

    def writer() -> None:
        batch = max(1, rate // 100)  # a write every 10 ms
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        start = time.monotonic()
        for first in range(0, n, batch):
            if first >= n // 2 and first - batch < n // 2:  # rotate halfway, like mv + SIGUSR1
                os.rename(path, path.with_suffix(".log.1"))
                os.close(fd)
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            delay = start + first / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            chunk = [line_for(i) for i in range(first, min(first + batch, n))]
            stamp = time.monotonic()
            for i in range(first, first + len(chunk)):
                written_at[i] = stamp
            os.write(fd, b"".join(chunk))
        os.close(fd)
        done.set()

    thread = threading.Thread(target=writer, daemon=True)
    rss_before = rss_mib()
    start = time.monotonic()
    thread.start()
    deadline = start + seconds + 30

    def until() -> bool:
        return (done.is_set() and tail.summary.records >= n) or time.monotonic() > deadline

    follow(tail, refresh, until=until)
    elapsed = time.monotonic() - start
    rss_after = rss_mib()
    thread.join()
    follower.close()
    seen = sum(tail.seen)
    lags = sorted(tail.lags[: tail.counted])
    p50, p99 = lags[len(lags) // 2], lags[int(len(lags) * 0.99)]
    print(
        f"follow at {rate:,} lines/s for {seconds:.0f} s with a rotation halfway: "
        f"{seen:,}/{n:,} lines seen, {tail.duplicates} twice, in {elapsed:.1f} s; "
        f"lag p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {lags[-1] * 1000:.0f} ms; "
        f"RSS {rss_before:.0f} -> {rss_after:.0f} MiB"
    )


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--rates", default="5000,20000,50000")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(
        f"{time.strftime('%Y-%m-%d')}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {platform.machine()}, "
        f"load average {os.getloadavg()[0]:.1f} at the start"
    )
    with tempfile.TemporaryDirectory() as tmp:
        bench_once(Path(tmp) / "access.log", args.lines)
        for rate in (int(r) for r in args.rates.split(",")):
            bench_follow(Path(tmp), rate, args.seconds)


if __name__ == "__main__":
    sys.exit(main_bench())
