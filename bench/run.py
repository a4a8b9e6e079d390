#!/usr/bin/env python3
"""edgenode vs nginx as a CDN edge, in one run, on one machine (issue 6, item 1).

    python3 bench/run.py                      # full: 1k and 64k bodies, 32 and 128 connections
    python3 bench/run.py --quick              # 3 s, 1k body, 32 connections only
    python3 bench/run.py --only edgenode      # one edge (no ratios)
    python3 bench/run.py --quick --client-tls # also each cell with HTTPS from the client
    python3 bench/run.py --duration 20 --markdown /tmp/results.md
    python3 bench/run.py --quick --only nginx,aiohttp   # several edges: comma-separated
    python3 bench/run.py --quick --baseline ca29935     # also that commit's edgenode, same cells

Edge kinds: `nginx`, `edgenode` (the installed one, this checkout), `aiohttp` (the Python
peer, bench/peers/aiohttp_proxy.py: aiohttp + uvloop doing the same job, in the default
run when aiohttp and uvloop import or install), and with `--baseline REF` (a commit of
this repository, exported with `git archive` into the temp dir) or `--baseline-path DIR`
(a checkout already on disk) `edgenode@<commit>`: that copy's own `twistd edgenode`
plugin and package (PYTHONPATH=<copy> first, cwd outside any checkout), proven at start
by the `edgenode.__file__` it prints, and given only the config keys its `edgenode check`
knows (no HTTPS listener before issue 13: its https cells are skipped with a note).
With `--pure`, also `edgenode-pure`: this edgenode with its compiled twins turned off
(EDGENODE_NO_EXTENSIONS=1); the notes quote each edgenode's `data path:` start line.

What it does, in order:

1. installs Debian's `nginx` and `wrk` if missing (as root, with apt-get), and the
   project itself (`pip install -e . --config-settings editable_mode=compat`) if
   `import edgenode` fails;
2. makes a throw-away CA and one EC P-256 leaf per origin name (bench-a.test,
   bench-b.test) in a temp dir, and one leaf covering both for the edges' own HTTPS
   listener (used by the https cells of --client-tls);
3. starts an nginx TLS origin on 127.0.0.1 (two server blocks on one port, one
   certificate each, handshakes without a known SNI rejected), pinned to the load core;
4. for every (body, connections) cell and each edge: starts the edge fresh, pinned to
   the edge core (nginx: 1 worker, upstream keepalive, `proxy_ssl_server_name on`,
   `proxy_ssl_verify on`, buffered access log; edgenode: `twistd -n edgenode` with
   origin SNI, the bench CA and its access log on; aiohttp: one process, pooled TLS to
   the origin with SNI and verification, no access log unless --aiohttp-access-log),
   checks correctness (bodies byte
   for byte, the SNI the origin saw per domain), runs `wrk` for a warm-up and then
   the measured run, pinned to the load core, and samples /proc around it; an https
   cell (--client-tls) gives both edges an HTTPS listener with that leaf as well and
   points the check and wrk at it;
5. prints one table, writes it as Markdown (with the date, versions and machine), and
   stops every process it started (process groups; also on Ctrl-C and on errors).

CPU µs per request = (utime + stime + cutime + cstime of the edge's whole process tree
after the run - before) in clock ticks → µs, ÷ the requests wrk completed.
Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime
import http.client
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
LOOPBACK = "127.0.0.1"
HOST_A = "bench-a.test"
HOST_B = "bench-b.test"
BODIES = {"1k": 1024, "64k": 65536}
# Edge kinds in the order of a cell's rows; a baseline edgenode (--baseline) follows edgenode.
EDGES = ("nginx", "edgenode", "aiohttp")
# --pure: this edgenode again with its compiled twins turned off (edgenode/speedups.py).
PURE = "edgenode-pure"
THIS_EDGENODE = ("edgenode", PURE)  # the installed edgenode, either implementation
# How the client (wrk, the check) reaches the edge: plain HTTP, or HTTPS to the edge's
# own certificate (SPEC §8). The origin side is HTTPS with SNI in both.
SCHEMES = ("http", "https")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# twistd has no `python -m` entry point; this is what the console script runs.
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
# Before twistd starts: one line naming the `edgenode` package this process imported and
# the plugin module that `twistd edgenode` will use (the same lookup: twisted.plugins'
# __path__, first match wins), with the module it loads. Every edgenode module imported
# later comes from that package's directory, so the line proves which code runs.
PROVENANCE_TAG = "bench-provenance:"
TWISTD_WITH_PROVENANCE = (
    "import edgenode, twisted.plugins.edgenode_plugin as p; "
    "from twisted.application.service import ServiceMaker; "
    f"print({PROVENANCE_TAG!r}, edgenode.__file__, p.__file__, "
    "','.join(v.module for v in vars(p).values() if isinstance(v, ServiceMaker)), "
    "sep='\\t', flush=True); " + TWISTD
)
PEER_AIOHTTP = BENCH_DIR / "peers" / "aiohttp_proxy.py"


class BenchError(Exception):
    """A reason to stop the benchmark, printed as is."""


class CellSkipped(Exception):
    """An edge that cannot take part in a cell by design (a baseline without HTTPS)."""


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# --- installing what is needed --------------------------------------------------------------


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def ensure_tools() -> None:
    """Debian's nginx and wrk (and taskset), installed with apt-get when missing."""
    found = {"nginx": nginx_binary(), "wrk": shutil.which("wrk")}
    missing = [name for name, path in found.items() if not path]
    if missing:
        if os.geteuid() != 0:
            raise BenchError(
                f"{' and '.join(missing)} not installed, and installing needs root: "
                "apt-get update && apt-get install -y --no-install-recommends nginx wrk"
            )
        log(f"installing {' '.join(missing)} with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (
            ["apt-get", "update"],
            ["apt-get", "install", "-y", "--no-install-recommends", "nginx", "wrk"],
        ):
            if subprocess.run(cmd, env=env, timeout=900).returncode != 0:
                raise BenchError(f"`{shlex.join(cmd)}` failed")
        if not nginx_binary() or not shutil.which("wrk"):
            raise BenchError("apt-get ran but nginx or wrk is still not on PATH")
    if not shutil.which("taskset"):
        raise BenchError("taskset (util-linux) is needed to pin processes to cores")


def ensure_python_deps() -> None:
    """The project installed editable (its dependencies include cryptography and PyYAML).

    Checked from `/`, not from the checkout, where `edgenode` would import without being
    installed; the twistd plugin must be importable from anywhere too.
    """
    check = [
        sys.executable,
        "-c",
        "import edgenode, twisted.plugins.edgenode_plugin, cryptography, yaml, httptools",
    ]
    if subprocess.run(check, capture_output=True, cwd="/", timeout=120).returncode == 0:
        return
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-e",
        str(ROOT),
        "--config-settings",
        "editable_mode=compat",
    ]
    log(f"installing the project: {shlex.join(cmd)}")
    if subprocess.run(cmd, timeout=900).returncode != 0:
        raise BenchError(f"`{shlex.join(cmd)}` failed")
    if subprocess.run(check, capture_output=True, cwd="/", timeout=120).returncode != 0:
        raise BenchError("the project was installed but `import edgenode` still fails")
    # This interpreter imports only the dependencies (edgenode runs in subprocesses), and
    # its import caches predate the install.
    import importlib

    importlib.invalidate_caches()


AIOHTTP_DEPS = ("aiohttp", "uvloop")  # the Python peer (bench/peers/aiohttp_proxy.py)


def aiohttp_importable() -> bool:
    check = [sys.executable, "-c", "import " + ", ".join(AIOHTTP_DEPS)]
    return subprocess.run(check, capture_output=True, cwd="/", timeout=120).returncode == 0


def ensure_aiohttp(required: bool) -> bool:
    """aiohttp and uvloop for the `aiohttp` peer, pip-installed when missing.

    True when they import. When they cannot be installed: a BenchError if the run asked
    for the peer by name (`--only aiohttp`), else False and the peer is left out.
    """
    if aiohttp_importable():
        return True
    cmd = [sys.executable, "-m", "pip", "install", *AIOHTTP_DEPS]
    log(f"installing the Python peer's dependencies: {shlex.join(cmd)}")
    ok = subprocess.run(cmd, timeout=900).returncode == 0 and aiohttp_importable()
    if not ok:
        if required:
            raise BenchError(f"`{shlex.join(cmd)}` failed: the aiohttp peer cannot run")
        log("aiohttp/uvloop could not be installed: the aiohttp peer is left out of this run")
    return ok


# --- processes ------------------------------------------------------------------------------


class Processes:
    """Every long-running process of the run, each in its own process group."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        atexit.register(self.stop_all)

    def spawn(
        self,
        cmd: Sequence[str],
        output: Path,
        cwd: Path,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        with open(output, "ab") as out:
            proc = subprocess.Popen(
                list(cmd),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a group of its own: workers die with it
            )
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
        """SIGTERM to the group, up to `grace` seconds, then SIGKILL to whatever is left.

        Once the leader is reaped its pid (= the group id) could in theory be reused, so
        leftovers are then killed one by one: the members seen before the SIGTERM that
        are still in that group.
        """
        members = process_tree(proc.pid) if proc.poll() is None else []
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        if proc.poll() is None:  # not reaped: the group id is still ours
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        for pid in members:
            if pid != proc.pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    if os.getpgid(pid) == proc.pid:
                        os.kill(pid, signal.SIGKILL)
        if proc in self._procs:
            self._procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self._procs)):
            self.stop(proc, grace=3.0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports (the kernel may hand the same one out twice in a row)."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def wait_until(
    ready: Callable[[], bool], alive: Callable[[], bool], timeout: float, what: str
) -> None:
    """Poll `ready` every 50 ms until true, the process dies, or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise BenchError(f"{what} exited during start-up")
        if ready():
            return
        time.sleep(0.05)
    raise BenchError(f"{what} not ready after {timeout:.0f} s")


def wait_listening(
    proc: subprocess.Popen[bytes], ports: Sequence[int], timeout: float, what: str
) -> None:
    """Wait until each of `ports` accepts a connection, while `proc` lives."""
    for port in ports:
        wait_until(lambda port=port: port_open(port), lambda: proc.poll() is None, timeout, what)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(missing)"


# --- the baseline: another edgenode, benched beside this one ----------------------------------


@dataclass
class Baseline:
    """An edgenode other than the installed one: a commit exported to the temp dir, or a
    checkout already on disk. Its edge kind is `edgenode@<label>`."""

    root: Path  # holds its edgenode/ package and twisted/plugins/edgenode_plugin.py
    label: str  # the short commit, or `git describe` of the checkout, or the dir's name
    source: str  # how it was made, for the notes

    @property
    def kind(self) -> str:
        return f"edgenode@{self.label}"

    def env(self) -> dict[str, str]:
        """The environment its processes run with: the copy first on the module path.

        With a cwd outside any checkout (the bench's temp dir), `import edgenode` then
        finds the copy's package before the installed one (a .pth entry, later on
        sys.path), and twistd finds the copy's plugin first: twisted.plugins' __path__
        follows sys.path, and the first `edgenode_plugin` module found wins.
        """
        path = [str(self.root), *filter(None, [os.environ.get("PYTHONPATH")])]
        return dict(os.environ, PYTHONPATH=os.pathsep.join(path))

    def cli_module(self) -> str:
        """Where its `edgenode check` lives (edgenode.cli before issue 12's tools/)."""
        for module in ("edgenode.tools.cli", "edgenode.cli"):
            if (self.root / (module.replace(".", "/") + ".py")).is_file():
                return module
        raise BenchError(f"no edgenode/tools/cli.py or edgenode/cli.py under {self.root}")


def git(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(
        ["git", "-C", str(cwd), *args], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise BenchError(f"`git {shlex.join(args)}` in {cwd} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def prepare_baseline(args: argparse.Namespace, tmp: Path) -> Baseline | None:
    """The `--baseline REF` commit exported with `git archive` (no network, nothing in
    this checkout touched), or the `--baseline-path DIR` checkout; None without either."""
    if args.baseline:
        sha = git("rev-parse", "--verify", "--end-of-options", f"{args.baseline}^{{commit}}")
        label = git("rev-parse", "--short", sha)
        root = tmp / f"baseline-{label}"
        archive = tmp / f"baseline-{label}.tar"
        git("archive", "--format=tar", "-o", str(archive), sha)
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
        archive.unlink()
        source = f"commit {sha[:12]} ({args.baseline}) exported with `git archive` to {root}"
    elif args.baseline_path:
        root = Path(args.baseline_path).resolve()
        label = root.name
        with contextlib.suppress(BenchError):
            if Path(git("rev-parse", "--show-toplevel", cwd=root)).resolve() == root:
                label = git("describe", "--always", "--dirty", cwd=root)
        source = f"the checkout {root}"
    else:
        return None
    for needed in ("edgenode/__init__.py", "twisted/plugins/edgenode_plugin.py"):
        if not (root / needed).is_file():
            raise BenchError(f"the baseline {root} has no {needed}: not an edgenode checkout")
    baseline = Baseline(root, label, source)
    log(f"baseline: {baseline.kind} from {source}")
    return baseline


def drop_key(node: Any, path: str) -> bool:
    """Remove the key at `path` ('tls.certificates', 'domains.a.b.origins[0].x': the
    problem paths of `edgenode check`; a key may itself hold dots); True if found."""
    if isinstance(node, dict):
        if path in node:
            del node[path]
            return True
        for key in list(node):
            name = str(key)
            if path.startswith(name + ".") and drop_key(node[key], path[len(name) + 1 :]):
                return True
            if path.startswith(name + "[") and drop_key(node[key], path[len(name) :]):
                return True
    elif isinstance(node, list):
        match = re.fullmatch(r"\[(\d+)\]\.(.+)", path)
        if match and int(match.group(1)) < len(node):
            return drop_key(node[int(match.group(1))], match.group(2))
    return False


# --- /proc sampling -------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()  # fields[0] is field 3 (state)


def process_tree(root: int) -> list[int]:
    """`root` and every live descendant, found through the ppid field of /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:  # bounded: every pid is visited once
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def tree_cpu_ticks(root: int) -> tuple[int, int]:
    """(user, system) ticks summed over the live tree: utime+cutime, stime+cstime.

    A process that exits and is reaped moves its time into its parent's cutime/cstime,
    so the sums keep counting it: they grow monotonically across worker restarts.
    """
    user = system = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is not None:  # fields 14..17 of stat(5) = indexes 11..14 here
            utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
            user += utime + cutime
            system += stime + cstime
    return user, system


def vm_hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def core_busy_ticks(cpu: int) -> tuple[int, int]:
    """(busy, total) jiffies of one core from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            values = [int(v) for v in line.split()[1:9]]
            idle = values[3] + values[4]
            return sum(values) - idle, sum(values)
    return 0, 0


# --- the TLS origin and the nginx edge ------------------------------------------------------

NGINX_MAIN = """daemon off;
master_process on;
worker_processes {workers};
{user}
pid {dir}/{name}.pid;
error_log {dir}/{name}-error.log warn;

events {{
    worker_connections 1024;
}}

http {{
    client_body_temp_path {dir}/{name}-tmp/client_body;
    proxy_temp_path {dir}/{name}-tmp/proxy;
    fastcgi_temp_path {dir}/{name}-tmp/fastcgi;
    uwsgi_temp_path {dir}/{name}-tmp/uwsgi;
    scgi_temp_path {dir}/{name}-tmp/scgi;
    keepalive_requests 100000;
    keepalive_timeout 300s;
    tcp_nodelay on;
{http}
}}
"""

ORIGIN_HTTP = """
    access_log off;
    sendfile on;
    default_type application/octet-stream;
    ssl_protocols TLSv1.2 TLSv1.3;

    server {{
        listen {addr}:{port} ssl default_server;
        ssl_reject_handshake on;
    }}
{blocks}"""

ORIGIN_BLOCK = """
    server {{
        listen {addr}:{port} ssl;
        server_name {name};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {www};
{extra}
        location = /whoami {{
            default_type text/plain;
            return 200 "$ssl_server_name";
        }}
    }}
"""

# Fields like edgenode's access record, as far as nginx has variables for them.
EDGE_LOG_FORMAT = (
    '\'{"ts":"$time_iso8601","request_id":"$request_id","client":"$remote_addr",'
    '"method":"$request_method","host":"$host","path":"$request_uri","status":$status,'
    '"bytes_sent":$bytes_sent,"duration_s":$request_time,"origin":"$upstream_addr",'
    '"origin_status":"$upstream_status","connect_s":"$upstream_connect_time",'
    '"conn":$connection,"conn_req":$connection_requests}\''
)

EDGE_HTTP = """
    log_format edge escape=json {log_format};
    access_log {access_log} edge buffer=64k flush=1s;

    upstream bench_origin {{
        server {addr}:{origin_port};
        keepalive 256;
        keepalive_requests 100000;
        keepalive_timeout 300s;
    }}

    server {{
        listen {addr}:{port} default_server;
        server_name {host};
{location}
    }}
{tls_server}"""

# The one proxy configuration, shared by the plain and the HTTPS server of the edge.
EDGE_LOCATION = """        location / {{
            proxy_pass https://bench_origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host {host};
            # What edgenode adds too (README "Headers"), so both do the same work.
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header Via "1.1 nginx";
            add_header X-Edge-Request-Id $request_id always;
            proxy_ssl_server_name on;
            proxy_ssl_name {host};
            proxy_ssl_verify on;
            proxy_ssl_verify_depth 2;
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_session_reuse on;
            # Stream through memory buffers only, never spill a body to disk (edgenode
            # streams with backpressure and has no disk buffer either).
            proxy_max_temp_file_size 0;
        }}"""

# HTTPS from the client (the https cells): the edge's own certificate for both bench
# names, TLS 1.2 and 1.3, sessions resumable from the cache and by ticket, as edgenode
# offers (SPEC §8). $scheme is then https, so X-Forwarded-Proto says so, as edgenode's.
EDGE_TLS_SERVER = """
    server {{
        listen {addr}:{tls_port} ssl default_server;
        server_name {host};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        ssl_session_tickets on;
{location}
    }}
"""


def nginx_conf(tmp: Path, name: str, http_block: str, workers: int = 1) -> Path:
    (tmp / f"{name}-tmp").mkdir(exist_ok=True)
    path = tmp / f"{name}.conf"
    # As root the workers would run as `nobody`, who cannot enter the 0700 temp dir.
    user = "user root;" if os.geteuid() == 0 else ""
    path.write_text(
        NGINX_MAIN.format(user=user, dir=tmp, name=name, http=http_block, workers=workers)
    )
    return path


@dataclass
class Running:
    """A started edge or origin: its group leader, port and files."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_files: list[Path]
    access_log: Path | None = None
    log_mark: int = 0  # where this start's lines begin in a log file shared across starts
    tls_port: int | None = None  # the HTTPS listener for clients, in https cells

    def client_port(self, scheme: str) -> int:
        """Where a client of `scheme` connects: the HTTPS listener or the plain one."""
        if scheme != "https":
            return self.port
        if self.tls_port is None:
            raise BenchError(f"{self.name} was started without an HTTPS listener")
        return self.tls_port

    def worker_pids(self) -> list[int]:
        return [pid for pid in process_tree(self.proc.pid) if pid != self.proc.pid]


class Bench:
    def __init__(
        self, args: argparse.Namespace, tmp: Path, procs: Processes, kinds: list[str]
    ) -> None:
        self.args = args
        self.tmp = tmp
        self.procs = procs
        self.kinds = kinds  # of EDGES, in row order; a baseline is added by run()
        self.baseline: Baseline | None = None
        self.nginx = nginx_binary() or "nginx"
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) >= 2:
            self.edge_cpu, self.load_cpu = cpus[0], cpus[1]
        else:
            self.edge_cpu = self.load_cpu = cpus[0]
            log("WARNING: one core only: edge and load share it, ratios mean little")
        self.www = tmp / "www"
        self.bodies: dict[str, bytes] = {}
        self.ca_file = tmp / "ca.pem"
        self.origin: Running | None = None
        self.anomalies: list[str] = []
        self.failures: list[str] = []  # cells not timed (with --keep-going)
        self.spreads: list[str] = []  # per cell, with --repeat
        self.negotiated: dict[str, str] = {}  # per edge: TLS version and cipher to clients
        self.provenance: dict[str, str] = {}  # per edgenode kind: the code that ran
        self.dropped_keys: set[str] = set()  # config keys the baseline does not know
        self.skips: list[str] = []  # why an edge sat out some cells (notes)

    def taskset(self, cpu: int) -> list[str]:
        if cpu == self.edge_cpu and self.args.workers > 1:
            # Several edge processes: each edge may use every core (shared with the load).
            return ["taskset", "-c", ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))]
        return ["taskset", "-c", str(cpu)]

    # -- setup --

    def make_pki_and_files(self) -> None:
        sys.path.insert(0, str(BENCH_DIR))
        from pki import BenchCA  # bench/pki.py, imported once cryptography is sure to exist

        ca = BenchCA()
        ca.write_ca(self.ca_file)
        self.leaves = {host: ca.issue([host], self.tmp, host) for host in (HOST_A, HOST_B)}
        # The edges' own certificate for their HTTPS listener (https cells): both names.
        self.edge_leaf = ca.issue([HOST_A, HOST_B], self.tmp, "edge-clients")
        # What the correctness check trusts over HTTPS: the bench CA, and only it.
        self.client_tls = ssl.create_default_context(cafile=str(self.ca_file))
        self.www.mkdir()
        for name, size in BODIES.items():
            self.bodies[name] = os.urandom(size)
            (self.www / name).write_bytes(self.bodies[name])

    def start_nginx(
        self,
        name: str,
        http_block: Callable[[int, int | None], str],
        cpu: int,
        *,
        tls: bool = False,
    ) -> Running:
        """nginx from a config made by `http_block(port, tls_port)`, on free ports (3 tries).

        `tls_port` is None unless `tls`: then a second port, for the HTTPS listener.
        """
        for attempt in range(3):
            port, *more = free_ports(2 if tls else 1)
            tls_port = more[0] if more else None
            workers = self.args.workers if name == "nginx-edge" else 1
            conf = nginx_conf(self.tmp, name, http_block(port, tls_port), workers)
            error_log = self.tmp / f"{name}-error.log"
            output = self.tmp / f"{name}.out"
            error_log.unlink(missing_ok=True)
            cmd = [
                *self.taskset(cpu),
                self.nginx,
                "-c",
                str(conf),
                "-p",
                str(self.tmp),
                "-e",
                str(error_log),
            ]
            proc = self.procs.spawn(cmd, output, self.tmp)
            try:
                wait_listening(proc, (port, *more), 10, f"nginx {name}")
                return Running(name, proc, port, [error_log, output], tls_port=tls_port)
            except BenchError as exc:
                self.procs.stop(proc)
                text = tail(error_log)
                if "Address already in use" in text and attempt < 2:
                    continue
                raise BenchError(
                    f"{exc}\n--- {error_log}:\n{text}\n--- {output}:\n{tail(output)}"
                ) from None
        raise AssertionError("unreachable")

    def start_origin(self) -> None:
        extra = []
        if self.args.origin_closes:
            # Every response ends its connection: each request costs a handshake,
            # which is what TLS session resumption to origins is for.
            extra.append("        keepalive_requests 1;")
        if self.args.origin_no_resumption:
            extra.append("        ssl_session_cache off;\n        ssl_session_tickets off;")

        def http_block(port: int, tls_port: int | None) -> str:
            blocks = "".join(
                ORIGIN_BLOCK.format(
                    addr=LOOPBACK,
                    port=port,
                    name=host,
                    cert=cert,
                    key=key,
                    www=self.www,
                    extra="\n".join(extra),
                )
                for host, (cert, key) in self.leaves.items()
            )
            return ORIGIN_HTTP.format(addr=LOOPBACK, port=port, blocks=blocks)

        self.origin = self.start_nginx("origin", http_block, self.load_cpu)
        log(f"origin: nginx TLS on {LOOPBACK}:{self.origin.port}, core {self.load_cpu}")

    def start_nginx_edge(self, tag: str, client_tls: bool) -> Running:
        """The nginx edge; with `client_tls` also its HTTPS server, the same proxying."""
        assert self.origin is not None
        access_log = self.tmp / f"nginx-edge-access-{tag}.log"
        location = EDGE_LOCATION.format(host=HOST_A, ca=self.ca_file)

        def http_block(port: int, tls_port: int | None) -> str:
            tls_server = ""
            if tls_port is not None:
                cert, key = self.edge_leaf
                tls_server = EDGE_TLS_SERVER.format(
                    addr=LOOPBACK,
                    tls_port=tls_port,
                    host=HOST_A,
                    cert=cert,
                    key=key,
                    location=location,
                )
            return EDGE_HTTP.format(
                log_format=EDGE_LOG_FORMAT,
                access_log=access_log,
                addr=LOOPBACK,
                origin_port=self.origin.port,
                port=port,
                host=HOST_A,
                location=location,
                tls_server=tls_server,
            )

        edge = self.start_nginx("nginx-edge", http_block, self.edge_cpu, tls=client_tls)
        edge.access_log = access_log
        return edge

    def edgenode_config(
        self, port: int, admin_port: int, tls_port: int | None, access_log: Path
    ) -> dict[str, Any]:
        """Both domains on the origin with origin SNI; with `tls_port`, HTTPS for clients
        too (SPEC §8: `listen_tls`, `tls.certificates`), with the same leaf as nginx's."""
        assert self.origin is not None
        domain = {
            "origin_sni": {"enabled": True},
            "origins": [{"address": LOOPBACK, "port": self.origin.port}],
        }
        tls: dict[str, Any] = {"ca_file": str(self.ca_file)}
        config: dict[str, Any] = {"listen": f"tcp:{port}:interface={LOOPBACK}"}
        if tls_port is not None:
            config["listen_tls"] = f"tcp:{tls_port}:interface={LOOPBACK}"
            cert, key = self.edge_leaf
            tls["certificates"] = [{"cert_file": str(cert), "key_file": str(key)}]
        config |= {
            "admin": {
                "listen": f"tcp:{admin_port}:interface={LOOPBACK}",
                "token_file": "admin.token",
            },
            "access_log": str(access_log),
            "tls": tls,
            "domains": {HOST_A: domain, HOST_B: domain},
            "workers": self.args.workers,
        }
        return config

    def edgenode_check(self, kind: str, config: dict[str, Any], path: Path, tls: bool) -> None:
        """Write `config` to `path` and have that edgenode's `edgenode check` accept it.

        A baseline is given only the keys it knows: the keys its check calls unknown are
        dropped (and named in the notes), until it accepts the rest. One whose check does
        not know `listen_tls` has no HTTPS listener: an https cell is skipped for it.
        """
        import yaml

        baseline = None if kind in THIS_EDGENODE else self.baseline
        module = baseline.cli_module() if baseline else "edgenode.tools.cli"
        for _ in range(10):  # bounded: every pass drops at least one key
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            check = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    f"import sys; from {module} import main; sys.exit(main())",
                    "check",
                    str(path),
                ],
                capture_output=True,
                cwd=self.tmp,
                env=baseline.env() if baseline else None,
                text=True,
                timeout=60,
            )
            if check.returncode == 0:
                return
            if baseline is None and tls:
                raise BenchError(
                    "edgenode refused the config of the https cell (listen_tls and "
                    "tls.certificates, SPEC §8): this edgenode does not serve HTTPS to "
                    f"clients yet, or no longer takes that syntax. `edgenode check` said:\n"
                    f"{check.stderr.rstrip()}"
                )
            problems = [ln.strip() for ln in check.stderr.splitlines() if ln.startswith("  ")]
            unknown = [m.group(1) for ln in problems if (m := re.match(r"(\S+): unknown key ", ln))]
            if baseline is None or not unknown or len(unknown) != len(problems):
                raise BenchError(
                    f"{kind}: edgenode check rejected the bench config:\n{check.stderr}"
                )
            if tls and "listen_tls" in unknown:
                raise CellSkipped(
                    f"{kind} has no HTTPS listener for clients (its `edgenode check` does not "
                    "know `listen_tls`): its https cells are skipped"
                )
            dropped = [key for key in unknown if drop_key(config, key)]
            if not dropped:
                raise BenchError(f"{kind}: could not drop {unknown} from the bench config")
            self.dropped_keys.update(dropped)
        raise BenchError(f"{kind}: edgenode check still refuses the config:\n{check.stderr}")

    def check_provenance(self, kind: str, output: Path, mark: int) -> None:
        """The edge's `edgenode` package and twistd plugin came from the expected place: the
        baseline's directory for the baseline, and not it for this edgenode."""
        text = output.read_bytes()[mark:].decode(errors="replace")
        lines = [ln for ln in text.splitlines() if ln.startswith(PROVENANCE_TAG)]
        if not lines:
            raise BenchError(f"{kind} printed no {PROVENANCE_TAG!r} line to {output}")
        package, plugin, loads = lines[-1].split("\t")[1:4]
        package_root = Path(package).resolve().parent.parent  # <root>/edgenode/__init__.py
        plugin_root = Path(plugin).resolve().parent.parent.parent  # <root>/twisted/plugins/x
        baseline_root = self.baseline.root if self.baseline is not None else None
        if kind in THIS_EDGENODE:
            wrong = package_root == baseline_root or plugin_root != package_root
            expected = "both from one checkout, not the baseline's"
        else:
            wrong = package_root != baseline_root or plugin_root != baseline_root
            expected = f"both under {baseline_root}"
        if wrong:
            raise BenchError(
                f"{kind} ran the wrong code: `edgenode` from {package}, the twistd plugin "
                f"from {plugin} (expected {expected})"
            )
        self.provenance[kind] = f"`edgenode` from {package}, twistd plugin {plugin} (loads {loads})"

    @staticmethod
    def implementation_env(kind: str) -> dict[str, str]:
        """`edgenode` runs what the install built; `edgenode-pure` the pure-Python modules."""
        env = {k: v for k, v in os.environ.items() if k != "EDGENODE_NO_EXTENSIONS"}
        if kind == PURE:
            env["EDGENODE_NO_EXTENSIONS"] = "1"
        return env

    def check_data_path(self, kind: str, twistd_log: Path, mark: int) -> None:
        """The start log's `data path:` line (edgenode/speedups.py), into the notes: which
        implementation ran. `edgenode-pure` must say pure Python; a baseline may predate it."""
        text = twistd_log.read_bytes()[mark:].decode(errors="replace")
        found = re.search(r"data path: (.*)", text)
        if kind == PURE and (found is None or not found.group(1).startswith("pure Python")):
            raise BenchError(f"{kind} did not run its pure-Python data path: {found}")
        if found is not None:
            self.provenance[kind] += f"; data path: {found.group(1)}"

    def start_edgenode(self, kind: str, tag: str, client_tls: bool) -> Running:
        """This edgenode (kind `edgenode`, the installed one) or the baseline's."""
        slug = kind.replace("@", "-")
        baseline = None if kind in THIS_EDGENODE else self.baseline
        access_log = self.tmp / f"{slug}-access-{tag}.log"
        for attempt in range(3):
            port, admin_port, *more = free_ports(3 if client_tls else 2)
            tls_port = more[0] if more else None
            config = self.edgenode_config(port, admin_port, tls_port, access_log)
            config_path = self.tmp / f"{slug}.yaml"
            self.edgenode_check(kind, config, config_path, client_tls)
            twistd_log = self.tmp / f"{slug}-twistd.log"
            output = self.tmp / f"{slug}.out"
            cmd = [
                *self.taskset(self.edge_cpu),
                sys.executable,
                "-c",
                TWISTD_WITH_PROVENANCE,
                "-n",
                *(["--reactor", self.args.reactor] if self.args.reactor else []),
                "--pidfile=",
                "--logfile",
                str(twistd_log),
                "edgenode",
                "--config",
                str(config_path),
            ]
            mark = twistd_log.stat().st_size if twistd_log.exists() else 0
            out_mark = output.stat().st_size if output.exists() else 0
            env = baseline.env() if baseline else self.implementation_env(kind)
            proc = self.procs.spawn(cmd, output, self.tmp, env)
            try:
                wait_until(
                    lambda admin_port=admin_port: healthz(admin_port),
                    lambda proc=proc: proc.poll() is None,
                    30,
                    kind,
                )
                wait_listening(proc, (port,), 10, f"{kind} listener")
                if tls_port is not None:
                    wait_listening(proc, (tls_port,), 10, f"{kind} HTTPS listener")
                self.check_provenance(kind, output, out_mark)
                self.check_data_path(kind, twistd_log, mark)
                return Running(
                    kind,
                    proc,
                    port,
                    [twistd_log, output],
                    access_log,
                    mark,
                    tls_port=tls_port,
                )
            except BenchError as exc:
                self.procs.stop(proc)
                text = twistd_log.read_text(errors="replace")[mark:] if twistd_log.exists() else ""
                if "Address already in use" in text and attempt < 2:
                    continue
                raise BenchError(
                    f"{exc}\n--- {twistd_log}:\n{text[-4000:]}\n--- {output}:\n{tail(output)}"
                ) from None
        raise AssertionError("unreachable")

    def start_aiohttp(self, tag: str, client_tls: bool) -> Running:
        """The Python peer (bench/peers/aiohttp_proxy.py): one process, pinned like the edges;
        with `client_tls` also its HTTPS listener with the edges' certificate."""
        assert self.origin is not None
        access_log = self.tmp / f"aiohttp-access-{tag}.log"
        output = self.tmp / "aiohttp.out"
        for attempt in range(3):
            port, *more = free_ports(2 if client_tls else 1)
            tls_port = more[0] if more else None
            cmd = [
                *self.taskset(self.edge_cpu),
                sys.executable,
                str(PEER_AIOHTTP),
                "--port",
                str(port),
                "--origin",
                f"{LOOPBACK}:{self.origin.port}",
                "--ca-file",
                str(self.ca_file),
                "--route",
                f"{HOST_A}={HOST_A}",
                "--route",
                f"{HOST_B}={HOST_B}",
            ]
            if self.args.aiohttp_access_log:
                cmd += ["--access-log", str(access_log)]
            if tls_port is not None:
                cert, key = self.edge_leaf
                cmd += ["--tls-port", str(tls_port), "--tls-cert", str(cert), "--tls-key", str(key)]
            mark = output.stat().st_size if output.exists() else 0
            proc = self.procs.spawn(cmd, output, self.tmp)
            try:
                wait_listening(proc, (port, *more), 30, "aiohttp peer")
                return Running(
                    "aiohttp",
                    proc,
                    port,
                    [output],
                    access_log if self.args.aiohttp_access_log else None,
                    mark,
                    tls_port=tls_port,
                )
            except BenchError as exc:
                self.procs.stop(proc)
                text = output.read_bytes()[mark:].decode(errors="replace")
                if "address already in use" in text.lower() and attempt < 2:
                    continue
                raise BenchError(f"{exc}\n--- {output}:\n{text[-4000:]}") from None
        raise AssertionError("unreachable")

    # -- correctness --

    def check_edge(self, edge: Running, body: str, scheme: str) -> None:
        """The cell's body byte for byte, then the SNI the origin saw; BenchError if off.

        Each request is a new client connection, but the edge reuses its one pooled
        origin connection, so `/whoami` after the body also proves that connection is
        still usable after carrying that body. Over https each connection sends the
        domain as SNI and verifies the edge's certificate against the bench CA and that
        name, which wrk does not do.
        """
        port = edge.client_port(scheme)
        tls = self.client_tls if scheme == "https" else None
        # nginx proxies bench-a.test only; edgenode and the aiohttp peer route both domains.
        hosts = [HOST_A] + ([HOST_B] if edge.name != "nginx-edge" else [])
        for host in hosts:
            for name in dict.fromkeys(("1k", body)):
                status, got = get(port, f"/{name}", host, tls=tls)
                want = self.bodies[name]
                if status != 200 or got != want:
                    raise BenchError(
                        f"{edge.name} ({scheme}): GET /{name} with Host {host} answered "
                        f"{status} with {len(got)} bytes, expected 200 with the {len(want)} "
                        f"bytes of the file{'' if len(got) != len(want) else ' (content differs)'}"
                    )
            status, got = get(port, "/whoami", host, after=f"/{body}", tls=tls)
            if status != 200 or got != host.encode():
                raise BenchError(
                    f"{edge.name} ({scheme}): the origin saw SNI {got[:200]!r} (status "
                    f"{status}) for a request to {host}; expected {host!r}"
                )

    # -- measuring --

    def wrk(
        self, port: int, body: str, conns: int, seconds: float, scheme: str = "http"
    ) -> dict[str, Any]:
        """wrk against the edge; over https it neither verifies the certificate nor sends
        the domain as SNI (it sends the URL's host, 127.0.0.1), and keeps every
        connection alive: one handshake per connection, then only TLS records."""
        cmd = [
            *self.taskset(self.load_cpu),
            "wrk",
            "-t1",
            f"-c{conns}",
            f"-d{seconds:g}s",
            "--latency",
            "-H",
            f"Host: {HOST_A}",
            f"{scheme}://{LOOPBACK}:{port}/{body}",
        ]
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=seconds + 30)
        finally:
            if proc.poll() is None:  # not reaped, so the group id is still wrk's
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if proc.returncode != 0:
            raise BenchError(f"`{shlex.join(cmd)}` exited {proc.returncode}:\n{out}")
        return parse_wrk(out, cmd)

    def start_edge(self, edge_kind: str, tag: str, client_tls: bool) -> Running:
        if edge_kind == "nginx":
            return self.start_nginx_edge(tag, client_tls)
        if edge_kind == "aiohttp":
            return self.start_aiohttp(tag, client_tls)
        return self.start_edgenode(edge_kind, tag, client_tls)  # edgenode or the baseline

    def measure(self, edge_kind: str, body: str, conns: int, scheme: str) -> dict[str, Any]:
        tag = f"{body}-{conns}-{scheme}"
        edge = self.start_edge(edge_kind, tag, client_tls=scheme == "https")
        try:
            self.check_edge(edge, body, scheme)
            port = edge.client_port(scheme)
            if scheme == "https":
                self.negotiated[edge_kind] = negotiated_tls(port, HOST_A, self.client_tls)
            self.wrk(port, body, conns, self.args.warmup, scheme)
            root = edge.proc.pid
            cpu0 = tree_cpu_ticks(root)
            core0 = core_busy_ticks(self.load_cpu)
            edge_core0 = core_busy_ticks(self.edge_cpu)
            t0 = time.monotonic()
            result = self.wrk(port, body, conns, self.args.duration, scheme)
            wall = time.monotonic() - t0
            cpu1 = tree_cpu_ticks(root)
            core1 = core_busy_ticks(self.load_cpu)
            edge_core1 = core_busy_ticks(self.edge_cpu)
            if edge.proc.poll() is not None:
                raise BenchError(f"{edge.name} died during the run")
            # nginx: the worker's peak RSS; the others: their process (and any workers) summed.
            pids = edge.worker_pids() if edge_kind == "nginx" else process_tree(root)
            hwm_kib = sum(vm_hwm_kib(pid) for pid in pids)
        finally:
            self.procs.stop(edge.proc)
        sys_us = (cpu1[1] - cpu0[1]) * 1e6 / CLK_TCK
        cpu_us = (sum(cpu1) - sum(cpu0)) * 1e6 / CLK_TCK
        requests = result["requests"]
        result.update(
            edge=edge_kind,
            body=body,
            conns=conns,
            client=scheme,
            cpu_us_per_req=cpu_us / requests if requests else float("nan"),
            # The kernel's share (system calls, the loopback TCP they drive): what a
            # faster user space cannot remove.
            sys_us_per_req=sys_us / requests if requests else float("nan"),
            edge_busy=cpu_us / 1e6 / wall,
            load_busy=(core1[0] - core0[0]) / max(1, core1[1] - core0[1]),
            # The edge core's busy share not spent by the edge: other processes (noise).
            edge_core_other=max(
                0.0,
                (edge_core1[0] - edge_core0[0] - (sum(cpu1) - sum(cpu0)))
                / max(1, edge_core1[1] - edge_core0[1]),
            ),
            rss_mib=hwm_kib / 1024,
        )
        self.after_run(edge, result)
        return result

    def after_run(self, edge: Running, result: dict[str, Any]) -> None:
        """Note what looks wrong: errors, a quiet access log, errors in the edge's logs."""
        label = row_label(result)
        if result["errors"]:
            self.anomalies.append(f"{label}: wrk reported errors: {result['error_text']}")
        if edge.access_log is not None:  # None: the aiohttp peer without --aiohttp-access-log
            lines = count_lines(edge.access_log)
            result["log_lines"] = lines
            if lines < result["requests"]:
                self.anomalies.append(
                    f"{label}: access log has {lines} lines for {result['requests']} measured "
                    "requests (access log not on?)"
                )
            edge.access_log.unlink(missing_ok=True)  # they get large; the count is kept
        if edge.name.startswith("edgenode"):
            twistd_log = edge.log_files[0]
            text = twistd_log.read_text(errors="replace")[edge.log_mark :]
            bad = [ln for ln in text.splitlines() if re.search(r"Traceback|Unhandled|CRITICAL", ln)]
            if bad:
                self.anomalies.append(f"{label}: twistd log: {len(bad)} lines like {bad[0]!r}")
        elif edge.name == "aiohttp":
            text = edge.log_files[0].read_bytes()[edge.log_mark :].decode(errors="replace")
            pattern = r"Traceback|Error handling request|Unclosed|Exception"
            bad = [ln for ln in text.splitlines() if re.search(pattern, ln)]
            if bad:
                self.anomalies.append(f"{label}: peer output: {len(bad)} lines like {bad[0]!r}")
        else:
            text = edge.log_files[0].read_text(errors="replace")
            bad = [ln for ln in text.splitlines() if re.search(r"\[(error|crit|alert|emerg)\]", ln)]
            if bad:
                self.anomalies.append(f"{label}: error log: {len(bad)} lines like {bad[0]!r}")

    def median_run(self, runs: list[dict[str, Any]]) -> dict[str, Any]:
        """The run with the median CPU µs/req; the spread over all runs goes into the notes."""
        ordered = sorted(runs, key=lambda r: r["cpu_us_per_req"])
        chosen = ordered[(len(ordered) - 1) // 2]
        if len(runs) > 1:
            cpu = [r["cpu_us_per_req"] for r in ordered]
            rps = sorted(r["rps"] for r in runs)
            self.spreads.append(
                f"{row_label(chosen)}: over {len(runs)} runs "
                f"CPU µs/req {cpu[0]:.1f} to {cpu[-1]:.1f}, req/s {rps[0]:,.0f} to {rps[-1]:,.0f}"
            )
        return chosen

    def run_cell(
        self, edges: list[str], body: str, conns: int, scheme: str
    ) -> list[dict[str, Any]]:
        """Every edge on one cell, `--repeat` times; one row per edge (median run)."""
        repeat = self.args.repeat
        runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in edges}
        failed: set[str] = set()
        skipped: set[str] = set()
        # Rounds alternate the edges, so all see the same stretch of machine noise.
        for round_no in range(repeat):
            for kind in edges:
                if kind in failed or kind in skipped:
                    continue
                label = row_label({"edge": kind, "body": body, "conns": conns, "client": scheme})
                log(
                    f"{label}: {self.args.warmup:g} s warm-up + {self.args.duration:g} s"
                    + (f" (round {round_no + 1}/{repeat})" if repeat > 1 else "")
                )
                try:
                    result = self.measure(kind, body, conns, scheme)
                except CellSkipped as exc:
                    log(f"  skipped: {exc}")
                    if str(exc) not in self.skips:
                        self.skips.append(str(exc))
                    skipped.add(kind)
                    continue
                except BenchError as exc:
                    if not self.args.keep_going:
                        raise
                    log(f"FAILED, not timed: {exc}")
                    self.failures.append(f"{label}: {exc}")
                    failed.add(kind)
                    continue
                log(
                    f"  {result['rps']:.0f} req/s, p99 {result['p99_ms']:.2f} ms, "
                    f"{result['cpu_us_per_req']:.1f} µs CPU/req, "
                    f"{result['rss_mib']:.1f} MiB"
                )
                runs[kind].append(result)
        rows = []
        for kind in edges:
            row = {"edge": kind, "body": body, "conns": conns, "client": scheme}
            other = sorted(r["edge_core_other"] for r in runs[kind])
            if other and other[-1] > 0.05:
                self.anomalies.append(
                    f"{row_label(row)}: other processes used "
                    + (f"{other[0]:.0%} to " if len(other) > 1 else "")
                    + f"{other[-1]:.0%} of the edge core during the measured run"
                    + ("s" if len(other) > 1 else "")
                )
            if kind in skipped:
                rows.append(row | {"skipped": True})
            elif kind in failed:
                rows.append(row | {"failed": True})
            else:
                rows.append(self.median_run(runs[kind]))
        return rows

    def run(self) -> list[dict[str, Any]]:
        self.baseline = prepare_baseline(self.args, self.tmp)
        if self.baseline is not None and "edgenode" in self.kinds:
            at = self.kinds.index("edgenode") + 1  # the baseline's row right under edgenode's
            self.kinds.insert(at, self.baseline.kind)
        elif self.baseline is not None:
            self.kinds.append(self.baseline.kind)
        if self.args.pure and "edgenode" in self.kinds:
            self.kinds.insert(self.kinds.index("edgenode") + 1, PURE)
        self.make_pki_and_files()
        self.start_origin()
        edges = self.kinds
        results = []
        # The https row of a cell comes right after its plain row, so they read side by side.
        cells = [
            (b, c, s)
            for b in self.args.bodies
            for c in self.args.connections
            for s in self.args.schemes
        ]
        for body, conns, scheme in cells:
            results += self.run_cell(edges, body, conns, scheme)
        assert self.origin is not None
        origin_errors = [
            ln
            for ln in tail(self.origin.log_files[0], 1000).splitlines()
            if re.search(r"\[(error|crit|alert|emerg)\]", ln)
        ]
        if origin_errors:
            self.anomalies.append(
                f"origin error log: {len(origin_errors)} lines like {origin_errors[0]!r}"
            )
        return results


def healthz(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=2)
        conn.request("GET", "/healthz")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


class SNIConnection(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1 sending `server_name` as SNI and verifying the certificate
    against it (HTTPSConnection alone would send and check the address it connects to)."""

    def __init__(self, port: int, server_name: str, context: ssl.SSLContext) -> None:
        super().__init__(LOOPBACK, port, timeout=10, context=context)
        self.server_name = server_name
        self.tls_context = context

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)  # TCP only; the handshake is ours
        self.sock = self.tls_context.wrap_socket(self.sock, server_hostname=self.server_name)


def negotiated_tls(port: int, server_name: str, context: ssl.SSLContext) -> str:
    """'TLSv1.3 TLS_AES_256_GCM_SHA384': what the edge chose for a client like wrk (both
    take OpenSSL's default TLS 1.3 suites), so the https rows compare like with like."""
    try:
        with (
            socket.create_connection((LOOPBACK, port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            cipher = tls.cipher()
            return f"{tls.version()} {cipher[0] if cipher else '?'}"
    except OSError as exc:
        raise BenchError(
            f"TLS handshake with port {port} (SNI {server_name}) failed: {exc}"
        ) from exc


def get(
    port: int, path: str, host: str, after: str = "", tls: ssl.SSLContext | None = None
) -> tuple[int, bytes]:
    """GET `path` with `host` on a new connection: plain, or over TLS with SNI = `host`."""
    conn = (
        SNIConnection(port, host, tls)
        if tls is not None
        else http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    )
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        return response.status, response.read()
    except OSError as exc:  # ssl.SSLError (a certificate that does not verify) included
        context = f", right after a GET {after} that succeeded" if after else ""
        scheme = "https" if tls is not None else "http"
        raise BenchError(
            f"GET {path} (Host {host}) over {scheme} on port {port} failed{context}: {exc}"
        ) from exc
    finally:
        conn.close()


def count_lines(path: Path) -> int:
    count = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                count += chunk.count(b"\n")
    except FileNotFoundError:
        pass
    return count


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse_wrk(out: str, cmd: Sequence[str]) -> dict[str, Any]:
    """req/s, p50/p99 (ms), completed requests and errors from wrk's --latency output."""

    def need(pattern: str) -> re.Match[str]:
        match = re.search(pattern, out, re.MULTILINE)
        if match is None:
            raise BenchError(f"no {pattern!r} in the output of `{shlex.join(cmd)}`:\n{out}")
        return match

    latency = r"^\s+{}%\s+([\d.]+)(us|ms|s|m|h)\s*$"
    p50 = need(latency.format(50))
    p99 = need(latency.format(99))
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = 0
    texts = []
    if socket_errors:
        errors += sum(int(v) for v in socket_errors.groups())
        texts.append(socket_errors.group(0))
    if non2xx:
        errors += int(non2xx.group(1))
        texts.append(non2xx.group(0))
    return {
        "rps": float(need(r"^Requests/sec:\s+([\d.]+)").group(1)),
        "requests": int(need(r"^\s+(\d+) requests in ").group(1)),
        "p50_ms": _ms(*p50.groups()),
        "p99_ms": _ms(*p99.groups()),
        "errors": errors,
        "error_text": "; ".join(texts),
    }


# --- the table ------------------------------------------------------------------------------

COLUMNS = (
    ("edge", "edge"),
    ("body", "body"),
    ("conns", "conns"),
    ("client", "client"),  # http or https: shown only when the run had https cells
    ("req/s", "rps"),
    ("p50 ms", "p50_ms"),
    ("p99 ms", "p99_ms"),
    ("CPU µs/req", "cpu_us_per_req"),
    ("of it sys", "sys_us_per_req"),
    ("edge core %", "edge_busy"),
    ("load core %", "load_busy"),
    ("peak RSS MiB", "rss_mib"),
    ("errors", "errors"),
    ("req/s ratio", "r_rps"),
    ("CPU ratio", "r_cpu"),
    ("p99 ratio", "r_p99"),
    ("RSS ratio", "r_rss"),
    # edgenode ÷ the baseline edgenode (--baseline): shown only when a baseline ran.
    ("req/s vs baseline", "b_rps"),
    ("CPU vs baseline", "b_cpu"),
)
BASELINE_COLUMNS = ("b_rps", "b_cpu")


LABELS = ("edge", "body", "conns", "client")  # the columns that name a row (left-aligned)


def row_label(row: dict[str, Any]) -> str:
    """'edgenode 1k/32', or 'edgenode 1k/32 https' for a cell with HTTPS from the client."""
    label = f"{row['edge']} {row['body']}/{row['conns']}"
    return label + (" https" if row.get("client") == "https" else "")


def columns(results: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """COLUMNS, without `client` when every row is plain HTTP (tables as before --client-tls)
    and without the `vs baseline` ones when no row has them (no --baseline)."""
    shown = list(COLUMNS)
    if all(r.get("client", "http") == "http" for r in results):
        shown = [c for c in shown if c[1] != "client"]
    if not any(key in r for r in results for key in BASELINE_COLUMNS):
        shown = [c for c in shown if c[1] not in BASELINE_COLUMNS]
    return shown


def add_ratios(results: list[dict[str, Any]], baseline_kind: str | None = None) -> None:
    """Each row other than nginx's divided by the nginx row of the same cell (and scheme)
    in this run; with a baseline, each edgenode row also by the baseline's row."""
    ok = [r for r in results if not r.get("failed") and not r.get("skipped")]

    def by_cell(kind: str | None) -> dict[tuple[Any, ...], dict[str, Any]]:
        return {(r["body"], r["conns"], r["client"]): r for r in ok if r["edge"] == kind}

    nginx, old = by_cell("nginx"), by_cell(baseline_kind)
    for row in ok:
        cell_key = (row["body"], row["conns"], row["client"])
        base = nginx.get(cell_key)
        if row["edge"] != "nginx" and base is not None:
            for key, metric in (
                ("r_rps", "rps"),
                ("r_cpu", "cpu_us_per_req"),
                ("r_p99", "p99_ms"),
                ("r_rss", "rss_mib"),
            ):
                row[key] = row[metric] / base[metric] if base[metric] else float("nan")
        before = old.get(cell_key)
        if row["edge"] in THIS_EDGENODE and before is not None:
            for key, metric in (("b_rps", "rps"), ("b_cpu", "cpu_us_per_req")):
                row[key] = row[metric] / before[metric] if before[metric] else float("nan")


def cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if row.get("failed") and key == "rps":
        return "not timed"
    if row.get("skipped") and key == "rps":
        return "skipped"
    if value is None:
        return "—"
    if key in ("edge", "body", "client"):
        return str(value)
    if key in ("conns", "errors"):
        return str(value)
    if key == "rps":
        return f"{value:,.0f}"
    if key in ("edge_busy", "load_busy"):
        return f"{value * 100:.0f}"
    if key.startswith("r_"):
        return f"{value:.2f}"
    if key in ("cpu_us_per_req", "sys_us_per_req"):
        return f"{value:.1f}"
    return f"{value:.2f}"


def text_table(results: list[dict[str, Any]]) -> str:
    shown = columns(results)
    rows = [[title for title, _ in shown]] + [[cell(r, k) for _, k in shown] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(shown))]
    lines = []
    for n, row in enumerate(rows):
        lines.append(
            "  ".join(
                v.ljust(w) if key in LABELS else v.rjust(w)
                for (_, key), v, w in zip(shown, row, widths, strict=True)
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(results: list[dict[str, Any]]) -> str:
    shown = columns(results)
    head = "| " + " | ".join(title for title, _ in shown) + " |"
    rule = "|" + "|".join("---" if key in LABELS else "---:" for _, key in shown) + "|"
    body = ["| " + " | ".join(cell(r, k) for _, k in shown) + " |" for r in results]
    return "\n".join([head, rule, *body])


def https_note(negotiated: dict[str, str]) -> str:
    """What an https row measures, printed under any table that has one."""
    note = (
        "https rows: wrk speaks TLS to the edge's own certificate (EC P-256; both edges offer "
        "TLS 1.2 and 1.3 and session resumption). Each wrk run opens its connections with one "
        "full handshake each and keeps them alive, so the measured run is a handful of "
        "handshakes (one per connection) and then TLS records: it measures mostly the "
        "steady-state cost of record encryption, not of handshakes. wrk does not verify the "
        "certificate and sends the URL's host, 127.0.0.1, as SNI, so both edges answer with "
        "their default (only) certificate; the correctness check before each run does verify "
        "it, against the bench CA, with the domain as SNI."
    )
    if negotiated:
        seen = ", ".join(f"{edge} {facts}" for edge, facts in negotiated.items())
        note += f" Negotiated in that check: {seen}."
    return note


# --- versions and machine -------------------------------------------------------------------


def versions(kinds: Sequence[str] = (), baseline: Baseline | None = None) -> dict[str, str]:
    import importlib.metadata

    import httptools
    import OpenSSL
    from OpenSSL import SSL

    import twisted

    nginx = subprocess.run(
        [nginx_binary() or "nginx", "-V"], capture_output=True, text=True, timeout=30
    ).stderr
    nginx_version = re.search(r"nginx version: (\S+)", nginx)
    nginx_openssl = re.search(r"built with (OpenSSL \S+)", nginx)
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=30).stdout
    git = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    peers = {}
    if "aiohttp" in kinds:
        for name in AIOHTTP_DEPS:
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                peers[name] = importlib.metadata.version(name)
    if baseline is not None:
        peers["baseline"] = f"{baseline.kind} ({baseline.source})"
    return {
        "edgenode": git or "?",
        **peers,
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "pyopenssl": OpenSSL.__version__,
        "openssl (pyOpenSSL)": SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(),
        "httptools": httptools.__version__,
        "nginx": (nginx_version.group(1).removeprefix("nginx/") if nginx_version else "?")
        + (f" ({nginx_openssl.group(1)})" if nginx_openssl else ""),
        "wrk": wrk.split("Copyright")[0].strip().removeprefix("wrk ") or "?",
    }


def machine() -> dict[str, str]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "memory": mem,
        "kernel": f"{platform.system()} {platform.release()}",
    }


def edge_notes(bench: Bench) -> list[str]:
    """What the rows of the aiohttp peer and of a baseline are, and where their code came from."""
    notes = []
    if "aiohttp" in bench.kinds:
        notes.append(
            "aiohttp rows: bench/peers/aiohttp_proxy.py, an aiohttp + uvloop reverse proxy in "
            "one process (whatever --workers says), pinned like the edges: routes by Host, "
            "TLS to the origin with SNI and verification against the bench CA, a keep-alive "
            "pool (TCPConnector), bodies streamed both ways, hop-by-hop headers dropped, "
            "X-Forwarded-For appended. "
            + (
                "With an access log (--aiohttp-access-log): one JSON line per request, "
                "buffered 64 KiB and flushed every second, as nginx's."
                if bench.args.aiohttp_access_log
                else "No access log (nginx and edgenode write one): pass "
                "--aiohttp-access-log to give it one, one JSON line per request."
            )
        )
    if bench.baseline is not None:
        kind = bench.baseline.kind
        notes.append(
            f"{kind} rows: {bench.baseline.source}, run with PYTHONPATH=<that copy> from the "
            "temp dir, so its own package and twistd plugin are used; `vs baseline` columns "
            f"are edgenode ÷ {kind}, same cell, same run."
        )
        if bench.dropped_keys:
            notes.append(
                f"{kind} does not know these keys of the bench config, left out for it: "
                + ", ".join(sorted(bench.dropped_keys))
                + "."
            )
    notes += bench.skips
    notes += [f"{kind} ran {where}." for kind, where in bench.provenance.items()]
    return notes


def render_markdown(
    results: list[dict[str, Any]],
    args: argparse.Namespace,
    started: datetime.datetime,
    edge_cpu: int,
    load_cpu: int,
    anomalies: list[str],
    failures: list[str],
    spreads: list[str],
    negotiated: dict[str, str],
    kinds: Sequence[str] = EDGES,
    notes: Sequence[str] = (),
    baseline: Baseline | None = None,
) -> str:
    command = shlex.join(["python3", "bench/run.py", *args.argv])
    others = [k for k in kinds if k != "edgenode"]
    title = "edgenode vs " + ", ".join(others) if "edgenode" in kinds else ", ".join(kinds)
    lines = [
        f"# {title}, {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `{command}` ({args.warmup:g} s warm-up, then {args.duration:g} s "
        f"measured per run"
        + (f", {args.repeat} runs per row (median shown)" if args.repeat > 1 else "")
        + f"; edge on core {edge_cpu}, wrk and the origin on core {load_cpu}).",
        "",
        markdown_table(results),
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine().items()) + ".",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions(kinds, baseline).items()) + ".",
        "",
        "CPU µs/req = (utime+stime+cutime+cstime of the edge's process tree after the run - "
        "before, from /proc/<pid>/stat, in clock ticks → µs) ÷ requests wrk completed; "
        "`of it sys` is the stime+cstime part (the kernel: system calls and the loopback TCP "
        "they drive). "
        "edge core % = that CPU time ÷ wall time; load core % = busy share of the core "
        "shared by wrk and the origin (near 100 % means the load side, not the edge, set "
        "the pace). Peak RSS = VmHWM (nginx: its worker). Ratios are each edge ÷ nginx from "
        "this run (vs baseline: edgenode ÷ the baseline edgenode); they carry across runs, "
        "absolute figures do not.",
    ]
    if notes:
        lines += ["", "About the edges:", ""] + [f"- {n}" for n in notes]
    if any(r.get("client") == "https" for r in results):
        lines += ["", https_note(negotiated)]
    if spreads:
        lines += ["", "Spread over the repeated runs (the table shows the median one):", ""]
        lines += [f"- {sp}" for sp in spreads]
    if failures:
        lines += ["", "Failed their correctness check (not timed):", ""]
        lines += [f"- {f}" for f in failures]
    if anomalies:
        lines += ["", "Noticed during the run:", ""] + [f"- {a}" for a in anomalies]
    return "\n".join(lines) + "\n"


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark edgenode against nginx as a CDN edge in front of a TLS origin.",
    )
    parser.add_argument(
        "--duration", type=float, help="seconds per measured run (default 10; --quick: 3)"
    )
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="seconds of warm-up before each run (2)"
    )
    parser.add_argument("--quick", action="store_true", help="3 s runs, 1k body, 32 connections")
    parser.add_argument(
        "--only",
        metavar="KINDS",
        help=f"comma-separated edge kinds of {', '.join(EDGES)}, and `baseline` (default: all; "
        "aiohttp when aiohttp and uvloop import or install). Without nginx there are no "
        "ratios to nginx",
    )
    baseline = parser.add_mutually_exclusive_group()
    baseline.add_argument(
        "--baseline",
        metavar="REF",
        help="also bench the edgenode of this commit of this repository (e.g. ca29935), "
        "exported with `git archive`, as edge kind edgenode@<commit>, in the same cells",
    )
    baseline.add_argument(
        "--baseline-path",
        metavar="DIR",
        help="the same with a checkout already on disk (its edgenode/ and twisted/plugins/)",
    )
    parser.add_argument(
        "--pure",
        action="store_true",
        help="also bench this edgenode with its compiled twins turned off "
        f"(EDGENODE_NO_EXTENSIONS=1), as edge kind {PURE}, in the same cells",
    )
    parser.add_argument(
        "--aiohttp-access-log",
        action="store_true",
        help="give the aiohttp peer an access log too (one JSON line per request, buffered)",
    )
    parser.add_argument(
        "--bodies", default="1k,64k", help=f"comma-separated, of {', '.join(BODIES)}"
    )
    parser.add_argument("--connections", default="32,128", help="comma-separated wrk -c values")
    parser.add_argument(
        "--schemes",
        default="http",
        help="how wrk reaches the edge, comma-separated of http, https (default http); "
        "https gives both edges an HTTPS listener with a bench-CA certificate",
    )
    parser.add_argument(
        "--client-tls",
        action="store_true",
        help="also run every cell with HTTPS from the client, beside the plain one: "
        "the same as --schemes http,https (works with --quick)",
    )
    parser.add_argument(
        "--markdown",
        metavar="PATH",
        help="where to write the Markdown (default bench/results-<date>[-quick].md)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per edge and cell, alternating the edges; the table shows the run with "
        "the median CPU µs/req and the notes the spread (default 1)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs)")
    parser.add_argument(
        "--reactor",
        default=None,
        help="twistd's --reactor for the edgenode edges (e.g. asyncio, uvloop); default epoll",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="edge processes: nginx worker_processes and edgenode `workers` (default 1)",
    )
    parser.add_argument(
        "--origin-closes",
        action="store_true",
        help="the origin closes every connection after one response (keepalive_requests 1)",
    )
    parser.add_argument(
        "--origin-no-resumption",
        action="store_true",
        help="the origin refuses TLS session resumption (no session cache, no tickets)",
    )
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="a cell that fails its correctness check is reported as not timed (exit 1 at "
        "the end) instead of aborting the whole run",
    )
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(raw)
    args.argv = raw
    if args.only is not None:
        only = [k.strip() for k in args.only.split(",") if k.strip()]
        if not only or not set(only) <= {*EDGES, "baseline"}:
            parser.error(f"--only: comma-separated, of {', '.join(EDGES)}, baseline")
        if "baseline" in only and not (args.baseline or args.baseline_path):
            parser.error("--only baseline needs --baseline REF or --baseline-path DIR")
        args.only = only
    has_baseline = args.baseline or args.baseline_path
    if has_baseline and args.only is not None and not {"baseline", "edgenode"} & set(args.only):
        parser.error("--baseline is benched beside edgenode: --only must name edgenode")
    if args.quick:
        args.bodies, args.connections = "1k", "32"
    if args.duration is None:
        args.duration = 3.0 if args.quick else 10.0
    args.bodies = [b.strip() for b in args.bodies.split(",") if b.strip()]
    unknown = [b for b in args.bodies if b not in BODIES]
    if unknown or not args.bodies:
        parser.error(f"--bodies: choose from {', '.join(BODIES)}")
    schemes = {s.strip() for s in args.schemes.split(",") if s.strip()}
    if args.client_tls:
        schemes |= set(SCHEMES)
    if not schemes or not schemes <= set(SCHEMES):
        parser.error(f"--schemes: choose from {', '.join(SCHEMES)}")
    args.schemes = [s for s in SCHEMES if s in schemes]  # http first: plain rows lead
    try:
        args.connections = [int(c) for c in args.connections.split(",")]
    except ValueError:
        parser.error("--connections: comma-separated integers")
    if not all(1 <= c <= 1000 for c in args.connections):
        parser.error("--connections: 1..1000 each")
    if not (0.5 <= args.duration <= 600 and 0 <= args.warmup <= 60 and 1 <= args.repeat <= 20):
        parser.error("--duration 0.5..600, --warmup 0..60, --repeat 1..20")
    return args


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally: processes get stopped


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    # Ctrl-C even when started from a shell that set SIGINT to ignored (`cmd &`), but a
    # SIGHUP that `nohup` ignores stays ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, _terminate)
    started = datetime.datetime.now(datetime.UTC)
    procs = Processes()
    tmp = Path(tempfile.mkdtemp(prefix="edgenode-bench-"))
    try:
        ensure_tools()
        ensure_python_deps()
        kinds = [k for k in EDGES if args.only is None or k in args.only]
        if "aiohttp" in kinds and not ensure_aiohttp(required=args.only is not None):
            kinds.remove("aiohttp")
        bench = Bench(args, tmp, procs, kinds)
        results = bench.run()
    except BenchError as exc:
        log(f"ABORTED: {exc}")
        if not args.keep:
            log(f"(run with --keep to keep the logs and configs in {tmp})")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        procs.stop_all()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    add_ratios(results, bench.baseline.kind if bench.baseline else None)
    notes = edge_notes(bench)
    print()
    print(text_table(results))
    for note in notes:
        print(f"note: {note}")
    if "https" in args.schemes:
        print(f"note: {https_note(bench.negotiated)}")
    for spread in bench.spreads:
        print(f"spread: {spread}")
    for note in bench.anomalies:
        print(f"note: {note}")
    for failure in bench.failures:
        print(f"FAILED: {failure}")
    if args.markdown:
        path = Path(args.markdown)
    else:
        suffix = "-quick" if args.quick else (f"-only-{'+'.join(args.only)}" if args.only else "")
        path = BENCH_DIR / f"results-{started:%Y-%m-%d}{suffix}.md"
    path.write_text(
        render_markdown(
            results,
            args,
            started,
            bench.edge_cpu,
            bench.load_cpu,
            bench.anomalies,
            bench.failures,
            bench.spreads,
            bench.negotiated,
            bench.kinds,
            notes,
            bench.baseline,
        )
    )
    print(f"\nMarkdown: {path}")
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
