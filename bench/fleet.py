#!/usr/bin/env python3
"""How fast does one etcd write reach a fleet of edges, and what does watching cost?

    python3 bench/fleet.py [--edges 3] [--writes 20] [--idle 30]

Starts a real etcd (Debian's etcd-server) on loopback, one in-process TLS origin with two
vhosts (a.test, b.test, each its own certificate), and N edges (`twistd -n edgenode`,
`cluster.etcd` on that etcd), plus one edge with `workers: 2`. Then:

1. propagation: `--writes` times, one etcd put flips www.fleet.test's origin SNI between
   a.test and b.test; one thread per edge polls its admin API (GET /domains/<name>, every
   millisecond) and notes when it shows the new SNI. Reported: per write, the time to the
   last of the N edges; median and max over the writes. For the workers edge, the time
   until both workers confirmed the new generation (GET /workers).
2. etcd's side: its watch streams and watchers (etcd_debugging_mvcc_watch_stream_total,
   ..._watcher_total from its /metrics): one per edge node, the workers edge included.
3. idle cost: CPU seconds (utime + stime from /proc) over `--idle` seconds of an idle
   edge following etcd, of an idle edge with the same domain in its file, and of etcd.

Uses the test suite's fixtures (tests/support) for etcd, the origin and the edges.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.edge import EdgeProcess  # noqa: E402
from tests.support.etcd import EtcdServer  # noqa: E402
from tests.support.origin import Servers, start_reactor_thread, stop_reactor_thread  # noqa: E402
from tests.support.pki import PKI  # noqa: E402

NAME = "www.fleet.test"
PREFIX = "/bench/"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def document(port: int, sni: str) -> str:
    return json.dumps(
        {"origin_sni": {"value": sni}, "origins": [{"address": "127.0.0.1", "port": port}]}
    )


def config(pki: PKI, etcd: EtcdServer | None, port: int, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"tls": {"ca_file": str(pki.ca_file)}, **extra}
    if etcd is None:
        base["domains"] = {NAME: json.loads(document(port, "a.test"))}
    else:
        base["cluster"] = {"etcd": {"endpoints": [etcd.endpoint], "prefix": PREFIX}}
    return base


class Poller(threading.Thread):
    """Polls one edge's GET /domains/NAME until it shows `sni`; notes when."""

    def __init__(self, edge: EdgeProcess, sni: str) -> None:
        super().__init__(daemon=True)
        self.edge, self.sni = edge, sni
        self.seen: float | None = None
        self.conn = http.client.HTTPConnection("127.0.0.1", edge.admin_port or 0, timeout=5)
        self.headers = {"Authorization": f"Bearer {edge.admin_token}"}

    def run(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            self.conn.request("GET", f"/domains/{NAME}", headers=self.headers)
            body = json.loads(self.conn.getresponse().read())
            if body["origins"][0]["effective_sni"] == self.sni:
                self.seen = time.monotonic()
                return
            time.sleep(0.001)


def workers_on(edge: EdgeProcess, generation: int) -> bool:
    workers = edge.admin_request("GET", "/workers").json()["workers"]
    return all(w.get("generation") == generation and w["ready"] for w in workers)


def propagation(
    etcd: EtcdServer, edges: list[EdgeProcess], workers_edge: EdgeProcess, port: int, writes: int
) -> None:
    lasts, workers_lasts = [], []
    for n in range(writes):
        sni = "b.test" if n % 2 == 0 else "a.test"
        pollers = [Poller(edge, sni) for edge in edges]
        for poller in pollers:
            poller.start()
        start = time.monotonic()
        etcd.put(PREFIX + "domains/" + NAME, document(port, sni))
        for poller in pollers:
            poller.join()
        seen = [p.seen for p in pollers]
        if None in seen:
            raise SystemExit(f"write {n}: an edge never showed {sni}")
        lasts.append(max(s for s in seen if s is not None) - start)
        generation = workers_edge.admin_request("GET", "/healthz").json()["generation"]
        while not workers_on(workers_edge, generation) or (
            workers_edge.admin_request("GET", f"/domains/{NAME}").json()["origins"][0][
                "effective_sni"
            ]
            != sni
        ):
            time.sleep(0.001)
            generation = workers_edge.admin_request("GET", "/healthz").json()["generation"]
        workers_lasts.append(time.monotonic() - start)
        time.sleep(0.2)
    ms = [x * 1000 for x in lasts]
    wms = [x * 1000 for x in workers_lasts]
    print(f"write -> last of {len(edges)} edges showing the new SNI, {writes} writes:")
    print(f"  median {statistics.median(ms):.1f} ms, max {max(ms):.1f} ms, min {min(ms):.1f} ms")
    print("write -> both workers of the workers: 2 edge confirmed it (upper bound, polled):")
    print(f"  median {statistics.median(wms):.1f} ms, max {max(wms):.1f} ms")


def etcd_watches(etcd: EtcdServer) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", etcd.admin_port, timeout=5)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    wanted = ("etcd_debugging_mvcc_watch_stream_total", "etcd_debugging_mvcc_watcher_total")
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            found[name] = float(value)
    return found


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edges", type=int, default=3)
    parser.add_argument("--writes", type=int, default=20)
    parser.add_argument("--idle", type=float, default=30.0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="edgenode-fleet-bench-"))
    start_reactor_thread()
    servers = Servers()
    etcd = EtcdServer(work / "etcd").start()
    edges: list[EdgeProcess] = []
    others: list[EdgeProcess] = []
    try:
        pki = PKI(work / "pki")
        origin = servers.tls_origin(
            {"a.test": pki.leaf("a.test"), "b.test": pki.leaf("b.test")}, pki.leaf("default.test")
        )
        etcd.put(PREFIX + "domains/" + NAME, document(origin.port, "a.test"))
        edges = [
            EdgeProcess(work / f"edge{n}", config(pki, etcd, origin.port))
            for n in range(args.edges)
        ]
        workers_edge = EdgeProcess(work / "workers", config(pki, etcd, origin.port, workers=2))
        plain = EdgeProcess(work / "plain", config(pki, None, origin.port))
        others = [workers_edge, plain]
        for edge in [*edges, *others]:
            edge.start()
        time.sleep(2)  # the workers' start, the watches' creation
        print(f"etcd {etcd.endpoint}; {args.edges} edges, one workers: 2 edge, one file edge")
        propagation(etcd, edges, workers_edge, origin.port, args.writes)
        print(f"etcd watch streams / watchers: {etcd_watches(etcd)}")
        print(f"  ({args.edges} single edges + 1 supervisor with 2 workers = {args.edges + 1})")

        watching, idle_plain = edges[0], plain
        pids = {
            "edge following etcd": watching.pid,
            "edge with file domains": idle_plain.pid,
            "etcd": etcd._proc.pid if etcd._proc else None,
        }
        before = {k: cpu_seconds(p) for k, p in pids.items() if p}
        time.sleep(args.idle)
        after = {k: cpu_seconds(p) for k, p in pids.items() if p}
        print(f"idle CPU over {args.idle:g} s (utime + stime, {1 / CLK_TCK:g} s ticks):")
        for k in before:
            spent = after[k] - before[k]
            print(f"  {k:24s} {spent:6.2f} s ({100 * spent / args.idle:.2f} % of a core)")
    finally:
        for edge in [*edges, *others]:
            if edge.alive():
                edge.stop()
        etcd.stop()
        servers.stop_all()
        stop_reactor_thread()


if __name__ == "__main__":
    main()
