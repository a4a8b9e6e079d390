"""A bounded soak (issue 7): healthy traffic, origin faults, client aborts and reloads at once.

For EDGENODE_SOAK_SECONDS (default 20; CI keeps it under 60) several client threads
send requests to three healthy domains, two to a domain whose origin rotates through
stalling, resetting and answering garbage, one keeps leaving in the middle of large
responses, and one reloads the config every ~0.5 s, alternating two files. Afterwards:
every 5xx belongs to the faulty domain and names its error code, the healthy domains
saw only 200s, the edge's RSS and open fds are back within a bounded delta of their
values after warm-up, and SIGTERM ends the edge with status 0. A longer run is just
`EDGENODE_SOAK_SECONDS=600 python3 -m pytest -q -s tests/test_soak.py`.
"""

from __future__ import annotations

import copy
import os
import random
import socket
import threading
from collections.abc import Callable
from typing import Any

import yaml

from tests.support.edge import EdgeProcess, send
from tests.support.faults import RotatingFaultOrigin
from tests.support.net import LOOPBACK
from tests.support.origin import Servers, pattern
from tests.support.pki import PKI
from tests.support.procfs import fd_count, rss_bytes
from tests.support.waiting import wait_until

EdgeFactory = Callable[..., EdgeProcess]
MiB = 1024 * 1024
SOAK_SECONDS = float(os.environ.get("EDGENODE_SOAK_SECONDS", "20"))
HEALTHY = ("a.test", "b.test", "flip.test")
FAULTY = "f.test"
FAULT_CODES = {502: "origin_protocol_error", 504: "origin_timeout"}


def soak_config(pki: PKI, healthy_port: int, faulty_port: int, flip_sni: str) -> dict[str, Any]:
    """Three healthy domains (flip.test's SNI is `flip_sni`) and f.test on the faulty origin."""

    def domain(port: int, sni: str | None = None, **extra: Any) -> dict[str, Any]:
        sni_setting: dict[str, Any] = {"enabled": True}
        if sni is not None:
            sni_setting["value"] = sni
        return {
            "origin_sni": sni_setting,
            "origins": [{"address": LOOPBACK, "port": port}],
            **extra,
        }

    return {
        "tls": {"ca_file": str(pki.ca_file)},
        # A short pooled-connection idle time, so the pool empties between measurements.
        "timeouts": {"connect": 2, "tls_handshake": 2, "response_header": 10, "idle": 1},
        "domains": {
            "a.test": domain(healthy_port),
            "b.test": domain(healthy_port),
            "flip.test": domain(healthy_port, flip_sni),
            FAULTY: domain(faulty_port, timeouts={"response_header": 0.5, "body_idle": 0.5}),
        },
    }


class Tally:
    """What the client threads saw, shared under a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.healthy: list[tuple[str, int]] = []
        self.faulty: list[tuple[int, str | None, bool]] = []  # status, X-Edge-Error, code in body
        self.problems: list[str] = []
        self.aborts = 0
        self.reloads: list[int] = []

    def problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)


def healthy_client(edge: EdgeProcess, stop: threading.Event, tally: Tally, seed: int) -> None:
    """Keep-alive GETs to the healthy domains; every answer is checked for what it carries."""
    rng = random.Random(seed)
    conn = edge.connection(timeout=10)
    i = 0
    try:
        while not stop.is_set():
            host = HEALTHY[i % len(HEALTHY)]
            i += 1
            size = rng.choice((0, 1, 100, 5000, 70000))
            path = f"/bytes/{size}" if i % 2 else f"/t{seed}/{i}"
            try:
                resp = send(conn, "GET", path, host=host)
            except (OSError, ValueError) as exc:  # http.client errors are OSError/ValueError
                tally.problem(f"{host}{path}: {type(exc).__name__}: {exc}")
                conn.close()
                conn = edge.connection(timeout=10)
                continue
            with tally.lock:
                tally.healthy.append((host, resp.status))
            if resp.status != 200:
                tally.problem(f"{host}{path}: {resp.status} {resp.text[:200]}")
            elif path.startswith("/bytes/") and resp.body != pattern(size):
                tally.problem(f"{host}{path}: wrong body ({len(resp.body)} bytes)")
            elif not path.startswith("/bytes/") and resp.json()["path"] != path:
                tally.problem(f"{host}{path}: answered for {resp.json()['path']}")
    finally:
        conn.close()


def faulty_client(edge: EdgeProcess, stop: threading.Event, tally: Tally, seed: int) -> None:
    """GETs to the faulty domain: 200, or a 5xx that names its error code."""
    conn = edge.connection(timeout=10)
    i = 0
    try:
        while not stop.is_set():
            i += 1
            path = f"/f{seed}/{i}"
            try:
                resp = send(conn, "GET", path, host=FAULTY)
            except (OSError, ValueError) as exc:
                tally.problem(f"{FAULTY}{path}: {type(exc).__name__}: {exc}")
                conn.close()
                conn = edge.connection(timeout=10)
                continue
            code = resp.header("X-Edge-Error")
            with tally.lock:
                tally.faulty.append((resp.status, code, bool(code) and code in resp.text))
    finally:
        conn.close()


def aborting_client(edge: EdgeProcess, stop: threading.Event, tally: Tally) -> None:
    """Asks for 4 MiB, reads 64 KiB, hangs up; again and again."""
    i = 0
    while not stop.is_set():
        host = HEALTHY[i % 2]
        i += 1
        try:
            with socket.create_connection((LOOPBACK, edge.port), timeout=10) as sock:
                sock.sendall(f"GET /bytes/{4 * MiB} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                received = b""
                while len(received) < 65536:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    received += chunk
            if not received.startswith(b"HTTP/1.1 200"):
                tally.problem(f"abort {host}: {received[:200]!r}")
        except OSError as exc:
            tally.problem(f"abort {host}: {type(exc).__name__}: {exc}")
        with tally.lock:
            tally.aborts += 1


def reloader(
    edge: EdgeProcess, stop: threading.Event, tally: Tally, configs: list[dict[str, Any]]
) -> None:
    """POST /reload every ~0.5 s, alternating two config files."""
    i = 0
    while not stop.wait(0.5):
        i += 1
        edge.config_path.write_text(yaml.safe_dump(configs[i % 2], sort_keys=False))
        try:
            resp = edge.admin_request("POST", "/reload")
        except OSError as exc:
            tally.problem(f"reload: {type(exc).__name__}: {exc}")
            continue
        with tally.lock:
            tally.reloads.append(resp.status)
        if resp.status != 200:
            tally.problem(f"reload: {resp.status} {resp.text[:300]}")


def run_phase(edge: EdgeProcess, seconds: float, configs: list[dict[str, Any]]) -> Tally:
    """Every kind of client at once for `seconds`; returns what they saw."""
    tally = Tally()
    stop = threading.Event()
    threads = [
        *(threading.Thread(target=healthy_client, args=(edge, stop, tally, n)) for n in range(4)),
        *(threading.Thread(target=faulty_client, args=(edge, stop, tally, n)) for n in range(2)),
        threading.Thread(target=aborting_client, args=(edge, stop, tally)),
        threading.Thread(target=reloader, args=(edge, stop, tally, configs)),
    ]
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join(30)
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"client threads did not finish: {stuck}"
    return tally


def origin_connections_open(edge: EdgeProcess) -> float:
    """The sum of edgenode_origin_connections_open over every origin (from /metrics)."""
    text = edge.admin_request("GET", "/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("edgenode_origin_connections_open{")
    )


def settled(edge: EdgeProcess, timeout: float = 15.0) -> tuple[int, int]:
    """(RSS, open fds) once no origin connection is pooled any more (bounded poll)."""
    assert edge.pid is not None
    wait_until(lambda: origin_connections_open(edge) == 0, timeout, "an empty origin pool", 0.1)
    return rss_bytes(edge.pid), fd_count(edge.pid)


def test_soak_faults_aborts_and_reloads_leave_no_unexplained_5xx_and_no_growth(
    edge_factory: EdgeFactory, servers: Servers, pki: PKI
):
    """Under mixed load with faults, aborts and reloads: only f.test 5xx, flat RSS/fds, exit 0."""
    healthy = servers.tls_origin({name: pki.leaf(name) for name in ("a.test", "b.test", "c.test")})
    faulty_origin = RotatingFaultOrigin()
    faulty_port = servers.listen_tls(faulty_origin, {FAULTY: pki.leaf(FAULTY)})
    configs = [
        soak_config(pki, healthy.port, faulty_port, "a.test"),
        soak_config(pki, healthy.port, faulty_port, "c.test"),
    ]
    edge = edge_factory(copy.deepcopy(configs[0]))

    warm = run_phase(edge, 3.0, configs)
    assert warm.problems == [], warm.problems[:20]
    rss_warm, fds_warm = settled(edge)

    tally = run_phase(edge, SOAK_SECONDS, configs)
    rss_end, fds_end = settled(edge)
    print(
        f"\nsoak {SOAK_SECONDS:g}s: {len(tally.healthy)} healthy, {len(tally.faulty)} faulty, "
        f"{tally.aborts} aborted, {len(tally.reloads)} reloads; origin faults "
        f"{faulty_origin.counts}\n"
        f"edge RSS {rss_warm / MiB:.1f} -> {rss_end / MiB:.1f} MiB "
        f"(delta {(rss_end - rss_warm) / MiB:+.1f}); open fds {fds_warm} -> {fds_end} "
        f"(delta {fds_end - fds_warm:+d})"
    )

    assert tally.problems == [], tally.problems[:20]
    assert {status for _, status in tally.healthy} == {200}
    unexplained = [
        (status, code, named)
        for status, code, named in tally.faulty
        if status != 200 and (FAULT_CODES.get(status) != code or not named)
    ]
    assert unexplained == [], unexplained[:20]
    statuses = {status for status, _, _ in tally.faulty}
    assert {502, 504} <= statuses, f"the faults never showed: {statuses}"
    assert len(tally.reloads) >= SOAK_SECONDS, tally.reloads  # ~2 a second
    assert tally.aborts > 0

    assert rss_end - rss_warm < 50 * MiB, f"RSS grew by {(rss_end - rss_warm) / MiB:.1f} MiB"
    assert fds_end - fds_warm <= 10, (fds_warm, fds_end)
    assert edge.stop() == 0

    records = edge.access_records()  # complete now: the edge flushed its log on the way out
    server_errors = [r for r in records if r["status"] >= 500]
    assert server_errors, "the access log shows none of the faults"
    for record in server_errors:
        assert record["domain"] == FAULTY and record["error"], record
    for record in records:
        if record["domain"] in HEALTHY:
            assert record["status"] in (200, 499) and record["error"] is None, record
