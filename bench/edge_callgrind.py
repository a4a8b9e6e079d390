"""The real edge under callgrind: user-space instructions per request, end to end.

The edge (twistd edgenode, this checkout or `--source DIR`) runs under
`valgrind --tool=callgrind --instr-atstart=no` with the bench's nginx TLS origin (SNI,
verification, access log on); a client in another process sends `--warmup` requests, then
instrumentation is switched on (`callgrind_control -i on`) for `--requests` more,
sequential on one keep-alive connection (HTTP or HTTPS to the edge), and the counters are
dumped. Instructions ÷ requests is repeatable to a fraction of a percent on a busy
machine, unlike CPU time; it leaves out the kernel's share of the system calls.

    python3 bench/edge_callgrind.py --scheme https --requests 2000
    python3 bench/edge_callgrind.py --source /work/main --scheme http     # another checkout
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import run as benchrun  # noqa: E402  (bench/run.py: its nginx templates and helpers)
import yaml  # noqa: E402
from pki import BenchCA  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scheme", choices=("http", "https"), default="http")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--source", type=Path, default=None, help="a checkout to run instead")
    ap.add_argument("--keep", action="store_true", help="keep the callgrind output")
    ap.add_argument(
        "--cpu", action="store_true", help="no valgrind: the edge's CPU time per request (user+sys)"
    )
    ap.add_argument(
        "--strace",
        type=Path,
        default=None,
        help="count system calls (strace -c) into this file instead",
    )
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="edgecg-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ca = BenchCA()
        ca_file = ca.write_ca(tmp / "ca.pem")
        leaves = {h: ca.issue([h], tmp, h) for h in (benchrun.HOST_A, benchrun.HOST_B)}
        edge_leaf = ca.issue([benchrun.HOST_A, benchrun.HOST_B], tmp, "edge-clients")
        www = tmp / "www"
        www.mkdir()
        (www / "1k").write_bytes(os.urandom(1024))

        oport, port, tls_port, admin_port = benchrun.free_ports(4)
        blocks = "".join(
            benchrun.ORIGIN_BLOCK.format(
                addr="127.0.0.1", port=oport, name=h, cert=c, key=k, www=www, extra=""
            )
            for h, (c, k) in leaves.items()
        )
        conf = benchrun.nginx_conf(
            tmp, "origin", benchrun.ORIGIN_HTTP.format(addr="127.0.0.1", port=oport, blocks=blocks)
        )
        nginx = benchrun.nginx_binary() or "nginx"
        procs.append(
            subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp), "-e", str(tmp / "oerr.log")])
        )
        benchrun.wait_until(lambda: benchrun.port_open(oport), lambda: True, 10, "origin")

        domain = {
            "origin_sni": {"enabled": True},
            "origins": [{"address": "127.0.0.1", "port": oport}],
        }
        cert, key = edge_leaf
        config: dict[str, object] = {
            "listen": f"tcp:{port}:interface=127.0.0.1",
            "admin": {
                "listen": f"tcp:{admin_port}:interface=127.0.0.1",
                "token_file": "admin.token",
            },
            "access_log": str(tmp / "access.log"),
            "tls": {"ca_file": str(ca_file)},
            "domains": {benchrun.HOST_A: domain, benchrun.HOST_B: domain},
        }
        if args.scheme == "https":  # only then: a checkout from before SPEC §8 runs http
            config["listen_tls"] = f"tcp:{tls_port}:interface=127.0.0.1"
            config["tls"] = {
                "ca_file": str(ca_file),
                "certificates": [{"cert_file": str(cert), "key_file": str(key)}],
            }
        (tmp / "edge.yaml").write_text(yaml.safe_dump(config))
        env = dict(os.environ)
        if args.source is not None:
            env["PYTHONPATH"] = os.pathsep.join(
                [str(args.source.resolve()), *filter(None, [env.get("PYTHONPATH")])]
            )
        out = tmp / "cg.out"
        tool = (
            ["strace", "-f", "-c", "-o", str(args.strace)]
            if args.strace
            else ["taskset", "-c", "0"]
            if args.cpu
            else [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={out}",
            ]
        )
        cmd = [
            *tool,
            os.path.realpath(sys.executable),
            "-c",
            benchrun.TWISTD_WITH_PROVENANCE,
            "-n",
            "--pidfile=",
            "--logfile",
            str(tmp / "twistd.log"),
            "edgenode",
            "--config",
            str(tmp / "edge.yaml"),
        ]
        with open(tmp / "edge.out", "wb") as edge_out:  # the child keeps its own copy
            edge = subprocess.Popen(
                cmd, cwd=tmp, env=env, stdout=edge_out, stderr=subprocess.STDOUT
            )
        procs.append(edge)
        benchrun.wait_until(
            lambda: (
                benchrun.port_open(port) and (args.scheme == "http" or benchrun.port_open(tls_port))
            ),
            lambda: edge.poll() is None,
            300,
            "edge",
        )
        provenance = [
            ln
            for ln in (tmp / "edge.out").read_text().splitlines()
            if benchrun.PROVENANCE_TAG in ln
        ]

        if args.scheme == "https":
            ctx = ssl.create_default_context(cafile=str(ca_file))
            conn: http.client.HTTPConnection = benchrun.SNIConnection(
                tls_port, benchrun.HOST_A, ctx
            )
        else:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.timeout = 60

        def get(n: int) -> None:
            for _ in range(n):
                conn.request("GET", "/1k", headers={"Host": benchrun.HOST_A})
                resp = conn.getresponse()
                body = resp.read()
                assert resp.status == 200 and len(body) == 1024, (resp.status, body[:200])

        get(args.warmup)
        if args.cpu:

            def ticks() -> int:
                fields = Path(f"/proc/{edge.pid}/stat").read_text().rsplit(")", 1)[1].split()
                return sum(int(f) for f in fields[11:15])  # utime stime cutime cstime

            c0 = ticks()
            get(args.requests)
            us = (ticks() - c0) * 1e6 / os.sysconf("SC_CLK_TCK") / args.requests
            label = str(args.source) if args.source else "this checkout"
            print(f"{label} {args.scheme}: {us:.1f} µs CPU/request")
            return 0
        if args.strace:
            get(args.requests)
            conn.close()
            # strace itself ignores SIGTERM while tracing: stop its tracee, the edge.
            children = Path(f"/proc/{edge.pid}/task/{edge.pid}/children").read_text().split()
            for child in children:
                os.kill(int(child), 15)
            edge.wait(60)
            print(f"strace -c of {args.warmup} + {args.requests} requests: {args.strace}")
            return 0
        subprocess.run(
            ["callgrind_control", "-i", "on", str(edge.pid)], check=True, capture_output=True
        )
        t0 = time.monotonic()
        get(args.requests)
        wall = time.monotonic() - t0
        subprocess.run(
            ["callgrind_control", "-i", "off", str(edge.pid)], check=True, capture_output=True
        )
        subprocess.run(["callgrind_control", "-d", str(edge.pid)], check=True, capture_output=True)
        conn.close()
        dumps = sorted(tmp.glob("cg.out*"), key=lambda p: p.stat().st_mtime)
        total = 0
        for dump in dumps:
            for line in dump.read_text(errors="replace").splitlines():
                m = re.match(r"(?:summary|totals): (\d+)", line)
                if m:
                    total = max(total, int(m.group(1)))  # summary is 0 after a toggle
        label = str(args.source) if args.source else "this checkout"
        print(
            f"{label} {args.scheme}: "
            f"{total / args.requests:,.0f} instructions per request "
            f"({args.requests} requests, {wall:.1f} s under callgrind)"
        )
        for ln in provenance:
            print("  ", ln)
        if args.keep:
            keep = Path(f"/tmp/edgecg-{args.scheme}-{os.getpid()}.out")
            keep.write_bytes(dumps[-1].read_bytes())
            print("   kept", keep)
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
        subprocess.run(["rm", "-rf", str(tmp)])


if __name__ == "__main__":
    sys.exit(main())
