#!/usr/bin/env python3
"""How evenly do edgenode's workers share the load? Inherited socket vs SO_REUSEPORT.

    python3 bench/workers_spread.py [--workers 2] [--seconds 5] [--repeat 3]

For each variant (EDGENODE_WORKER_SHARE=inherit: one listening socket, bound by the
supervisor and inherited by every worker; =reuseport: one socket per worker, all bound by
the supervisor in one SO_REUSEPORT group, each inherited by its worker) it starts
`twistd -n edgenode` with `workers: N` in front of a plain-HTTP nginx origin (1 KiB
answers, so the edge is what is busy) and drives it three ways:

- keepalive: wrk, 32 keep-alive connections;
- close: wrk, 32 connections, `Connection: close` (a new connection per request);
- sequential: one client, one request per new connection, one at a time.

It prints, per scenario, the requests each worker answered (the workers' own counters,
from the admin API's GET /workers) and the CPU seconds each used (/proc). Needs nginx
and wrk (Debian packages); only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
HOST = "spread.test"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port} after {timeout}s")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Edge:
    def __init__(self, tmp: Path, share: str, workers: int, origin_port: int) -> None:
        self.dir = tmp / f"edge-{share}"
        self.dir.mkdir()
        self.port, self.admin_port = free_port(), free_port()
        (self.dir / "admin.token").write_text("spread-token\n")
        config = {
            "listen": f"tcp:{self.port}:interface=127.0.0.1:backlog=1024",
            "workers": workers,
            "admin": {"listen": f"tcp:{self.admin_port}:interface=127.0.0.1"},
            "access_log": "access.log",
            "domains": {
                HOST: {
                    "origin_protocol": "http",
                    "origins": [{"address": "127.0.0.1", "port": origin_port}],
                }
            },
        }
        (self.dir / "edge.yaml").write_text(json.dumps(config))
        env = {**os.environ, "EDGENODE_WORKER_SHARE": share}
        cmd = [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "--logfile", "twistd.log"]
        cmd += ["edgenode", "--config", "edge.yaml"]
        self.proc = subprocess.Popen(cmd, cwd=self.dir, env=env)
        wait_port(self.admin_port)
        deadline = time.monotonic() + 20
        while self.health().get("workers", {}).get("ready") != workers:
            if time.monotonic() > deadline:
                raise SystemExit("workers did not become ready")
            time.sleep(0.1)

    def admin(self, path: str) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=10)
        conn.request("GET", path, headers={"Authorization": "Bearer spread-token"})
        return json.loads(conn.getresponse().read())

    def health(self) -> Any:
        return self.admin("/healthz")

    def snapshot(self) -> dict[int, tuple[int, float]]:
        return {
            w["pid"]: (w["requests"], cpu_seconds(w["pid"]))
            for w in self.admin("/workers")["workers"]
        }

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def wrk(port: int, seconds: float, close: bool) -> None:
    cmd = ["wrk", "-t1", "-c32", f"-d{int(seconds)}s", "-H", f"Host: {HOST}"]
    if close:
        cmd += ["-H", "Connection: close"]
    out = subprocess.run(
        [*cmd, f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True
    ).stdout
    errors = re.search(r"Socket errors: .*|Non-2xx.*", out)
    if errors:
        print(f"    wrk: {errors.group(0)}")


def sequential(port: int, n: int) -> None:
    for _ in range(n):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/", headers={"Host": HOST})
        conn.getresponse().read()
        conn.close()


def spread(edge: Edge, run: Any) -> tuple[list[int], list[float]]:
    before = edge.snapshot()
    run()
    time.sleep(1.2)  # counters are exact; let the access log flush before the next scenario
    after = edge.snapshot()
    pids = sorted(after)
    requests = [after[p][0] - before.get(p, (0, 0.0))[0] for p in pids]
    cpu = [round(after[p][1] - before.get(p, (0, 0.0))[1], 2) for p in pids]
    return requests, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--sequential", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="spread-") as name:
        tmp = Path(name)
        origin_port = free_port()
        body = "x" * 1024
        (tmp / "nginx.conf").write_text(
            f"daemon off; worker_processes 1; pid {tmp}/nginx.pid; error_log {tmp}/error.log;\n"
            f"events {{}}\nhttp {{ access_log off; server {{ listen 127.0.0.1:{origin_port}; "
            f'location / {{ return 200 "{body}"; }} }} }}\n'
        )
        nginx = subprocess.Popen(["nginx", "-c", str(tmp / "nginx.conf"), "-p", str(tmp)])
        try:
            wait_port(origin_port)
            for share in ("inherit", "reuseport"):
                edge = Edge(tmp, share, args.workers, origin_port)
                try:
                    for scenario, run in (
                        ("keepalive", partial(wrk, edge.port, args.seconds, close=False)),
                        ("close", partial(wrk, edge.port, args.seconds, close=True)),
                        ("sequential", partial(sequential, edge.port, args.sequential)),
                    ):
                        for _ in range(args.repeat):
                            requests, cpu = spread(edge, run)
                            share_of_max = max(requests) / max(1, sum(requests))
                            print(
                                f"{share:9} {scenario:10} requests per worker {requests} "
                                f"(busiest {share_of_max:.0%}), CPU s per worker {cpu}",
                                flush=True,
                            )
                finally:
                    edge.stop()
        finally:
            nginx.terminate()
            nginx.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
