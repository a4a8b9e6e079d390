"""The `edgenode tail` subcommand: its arguments, and wiring follower, filter, summary, view."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from edgenode.tools.exitcodes import ExitCode
from edgenode.tools.tail.engine import Tail, follow
from edgenode.tools.tail.filters import RecordFilter, parse_domain_filter, parse_status_filter
from edgenode.tools.tail.follower import Follower
from edgenode.tools.tail.summary import LATENCY_SECONDS, UNKNOWN_DOMAIN, LogSummary
from edgenode.tools.tail.view import PROG, LineSink, print_once, run_live


def add_tail_command(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`edgenode tail PATH`: follow the access log with a live view, or summarise it once."""
    tail = subcommands.add_parser(
        "tail",
        help="follow the access log: live requests/s, statuses, latency, origin failures",
        description=(
            "Follow an access log (JSON Lines) across rotation and truncation and show a "
            "live view refreshed every second, or with --once summarise the file as it is "
            "and exit. Besides requests it shows the share that came over HTTPS and the "
            "failed client TLS handshakes (lines with error client_tls_*), which are not "
            "requests: they count in no domain row, status class, latency or requests/s. "
            "Exit 2 if the file cannot be read."
        ),
    )
    tail.add_argument("path", metavar="PATH", help="the access log, e.g. logs/access.log")
    tail.add_argument(
        "--from-start", action="store_true", help="read the whole file first (default: its end)"
    )
    tail.add_argument(
        "--once", action="store_true", help="summarise the file as it is now and exit"
    )
    tail.add_argument(
        "--json",
        action="store_true",
        help="print the matching lines themselves, one per line, instead of the view; "
        "failed client TLS handshakes are included unless --domain or --status is given",
    )
    tail.add_argument(
        "--domain",
        action="append",
        type=parse_domain_filter,
        metavar="D",
        help=f"only this domain (repeatable; {UNKNOWN_DOMAIN} = requests for unknown hosts); "
        "leaves out failed client TLS handshakes, which have no domain",
    )
    tail.add_argument(
        "--status",
        type=parse_status_filter,
        metavar="S",
        help="only these statuses: a class (5xx), a code (502), or a comma-separated list; "
        "leaves out failed client TLS handshakes, which have no status",
    )
    tail.set_defaults(run=run_tail)


def run_tail(args: argparse.Namespace) -> int:
    path = Path(args.path)
    follower = Follower(path, from_start=args.from_start or args.once)
    try:
        follower.open()
    except OSError as err:
        print(f"{PROG}: cannot read {path}: {err.strerror or err}", file=sys.stderr)
        return ExitCode.USAGE
    record_filter = RecordFilter(frozenset(args.domain or ()), args.status)
    summary = LogSummary(latency_seconds=None if args.once else LATENCY_SECONDS)
    sink = LineSink(sys.stdout) if args.json else None
    tail = Tail(follower, record_filter, summary, sink)
    try:
        if args.once:
            tail.read_once(time.monotonic())
            if sink is None:
                print_once(sys.stdout, path, summary.snapshot(), tail)
        elif sink is not None:
            follow(tail)
        else:
            run_live(path, tail)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a follower is meant to stop
    except BrokenPipeError:
        _silence_stdout()  # `edgenode tail --json ... | head`: the reader has had enough
    finally:
        follower.close()
    return ExitCode.OK


def _silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
