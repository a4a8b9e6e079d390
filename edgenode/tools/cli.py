"""The `edgenode` console script: operator tools, one subcommand each (SPEC §2).

Each subcommand is a pair: `add_<name>_command(subcommands)` registers its arguments
and sets `run`, a function taking the parsed arguments and returning the exit code.
Exit codes (SPEC §6, `exitcodes.ExitCode`): 0 success; 1 the thing checked failed; 2 usage
error or the target could not be reached.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from edgenode.certificates import expiry_warning
from edgenode.config import Config, load_config
from edgenode.endpoints import parse_server_endpoint
from edgenode.errors import ConfigError
from edgenode.tools.exitcodes import ExitCode
from edgenode.tools.probe import add_probe_command
from edgenode.tools.push import add_push_command
from edgenode.tools.tail.command import add_tail_command

PROG = "edgenode"

# What `add_subparsers` returns; each `add_<name>_command` adds its parser to it.
Subcommands = argparse._SubParsersAction  # argparse has no public name for it


def main(argv: Sequence[str] | None = None) -> int:
    """Run `edgenode` with `argv` (default: the process arguments); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits for --help (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    run: Callable[[argparse.Namespace], int] = args.run
    return run(args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Operator tools for the edgenode CDN edge."
    )
    subcommands = parser.add_subparsers(
        title="commands", dest="command", required=True, metavar="COMMAND"
    )
    for add_command in COMMANDS:
        add_command(subcommands)
    return parser


# --- check ---------------------------------------------------------------------------------


def add_check_command(subcommands: Subcommands) -> None:
    """`edgenode check FILE`: validate a config like `nginx -t`."""
    check = subcommands.add_parser(
        "check",
        help="validate a config file and print every problem",
        description="Validate a config file. Exit 0 if valid, 1 with every problem listed if not.",
    )
    check.add_argument("config", metavar="FILE", help="the YAML config, e.g. etc/edgenode.yaml")
    check.set_defaults(run=run_check)


def run_check(args: argparse.Namespace) -> int:
    """Load the config: one summary line on stdout if valid, the problems on stderr if not."""
    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return ExitCode.FAILED
    for i, cert in enumerate(config.tls.certificates):
        warning = expiry_warning(cert)
        if warning is not None:
            print(f"{PROG}: warning: tls.certificates[{i}].cert_file: {warning}", file=sys.stderr)
    print(f"{PROG}: {args.config} is valid: {summarize(config)}")
    return ExitCode.OK


def summarize(config: Config) -> str:
    """E.g. '3 domains, 5 origins, listen tcp:8080, admin tcp:8081:interface=127.0.0.1'."""
    domains = len(config.domains)
    origins = sum(len(domain.origins) for domain in config.domains.values())
    if config.cluster is not None:  # SPEC §9: `edgenode push` checks those
        etcd = config.cluster.etcd
        where = f"domains from etcd {', '.join(etcd.endpoints)} under {etcd.domains_prefix}"
        return f"{where}, listen {config.listen}, admin {config.admin.listen}"
    https = ""
    if config.listen_tls is not None:
        certificates = _count(len(config.tls.certificates), "certificate")
        https = f", listen_tls {config.listen_tls} ({certificates})"
    return (
        f"{_count(domains, 'domain')}, {_count(origins, 'origin')}, "
        f"listen {config.listen}{https}, admin {config.admin.listen}"
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


# --- reload --------------------------------------------------------------------------------


def add_reload_command(subcommands: Subcommands) -> None:
    """`edgenode reload [--config F]`: POST /reload on the running edge's admin API."""
    reload = subcommands.add_parser(
        "reload",
        help="ask the running edge to re-read its config",
        description=(
            "Read the admin address and token from the config, POST /reload, print the "
            "diff (exit 0) or the problems (exit 1). Exit 2 if the edge cannot be reached."
        ),
    )
    reload.add_argument(
        "--config", default="etc/edgenode.yaml", metavar="FILE", help="default: %(default)s"
    )
    reload.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    reload.set_defaults(run=run_reload)


def run_reload(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as err:
        # The edge would reject this file too; say so without bothering it.
        print(f"{PROG}: {err}", file=sys.stderr)
        return ExitCode.FAILED
    try:
        status, body = admin_call(config, "POST", "/reload", timeout=args.timeout)
    except (OSError, ValueError) as err:
        print(
            f"{PROG}: cannot reach the admin API at {config.admin.listen}: {err}", file=sys.stderr
        )
        return ExitCode.USAGE
    if status == 200:
        print(f"{PROG}: reloaded, generation {body['generation']}")
        for line in describe_changes(body):
            print(f"  {line}")
        return ExitCode.OK
    if status == 422:
        print(f"{PROG}: reload rejected; still running generation {body.get('generation')}:")
        for problem in body.get("errors", []):
            print(f"  {problem['path']}: {problem['message']}")
        return ExitCode.FAILED
    if status == 500 and "errors" in body:
        # Applied by the supervisor, but not confirmed by every worker (those are replaced).
        print(f"{PROG}: reload to generation {body.get('generation')} not applied everywhere:")
        for problem in body.get("errors", []):
            print(f"  {problem.get('path')}: {problem.get('message')}")
        for line in describe_changes(body):
            print(f"  {line}")
        return ExitCode.FAILED
    print(f"{PROG}: admin API answered {status}: {body}", file=sys.stderr)
    return ExitCode.USAGE


def describe_changes(body: dict[str, Any]) -> list[str]:
    changed = body.get("changed", {})
    lines = [f"added {name}" for name in changed.get("added", [])]
    lines += [f"removed {name}" for name in changed.get("removed", [])]
    for name, changes in changed.get("changed", {}).items():
        lines += [f"{name}: {change}" for change in changes]
    lines += list(changed.get("settings", []))
    lines += [f"{line} (needs a restart)" for line in body.get("restart_required", [])]
    return lines or ["no changes"]


def admin_call(
    config: Config, method: str, path: str, *, timeout: float = 10.0
) -> tuple[int, dict[str, Any]]:
    """One authenticated admin API request, using the address and token of `config`."""
    host, port = admin_address(config.admin.listen)
    token = config.admin.token_file.read_text().strip()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        body = json.loads(raw)
    except ValueError:
        body = {"raw": raw.decode("utf-8", "replace")}
    return resp.status, body


def admin_address(listen: str) -> tuple[str, int]:
    """Where to reach a `tcp:`/`tcp6:` admin listener from this host; raises ValueError
    for other kinds (an `EndpointError`, a ValueError, for a string that is none)."""
    address = parse_server_endpoint(listen).local_address()
    if address is None:
        raise ValueError(f"only tcp admin listeners can be reached by this tool, not {listen!r}")
    return address


# The registered subcommands (SPEC §2), in the order `--help` lists them.
COMMANDS: tuple[Callable[[Subcommands], None], ...] = (
    add_check_command,
    add_tail_command,
    add_reload_command,
    add_probe_command,
    add_push_command,
)


if __name__ == "__main__":
    raise SystemExit(main())
