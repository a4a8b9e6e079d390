"""The `edgenode` console script: operator tools, one subcommand each (SPEC §2).

Each subcommand is a pair: `add_<name>_command(subcommands)` registers its arguments
and sets `run`, a function taking the parsed arguments and returning the exit code.
Exit codes (SPEC §6): 0 success; 1 the thing checked failed; 2 usage error or the
target could not be reached.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from edgenode.config import Config, load_config
from edgenode.errors import ConfigError

PROG = "edgenode"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

# What `add_subparsers` returns; each `add_<name>_command` adds its parser to it.
Subcommands = argparse._SubParsersAction  # argparse has no public name for it


def main(argv: Sequence[str] | None = None) -> int:
    """Run `edgenode` with `argv` (default: the process arguments); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits for --help (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
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
        return EXIT_FAILED
    print(f"{PROG}: {args.config} is valid: {summarize(config)}")
    return EXIT_OK


def summarize(config: Config) -> str:
    """E.g. '3 domains, 5 origins, listen tcp:8080, admin tcp:8081:interface=127.0.0.1'."""
    domains = len(config.domains)
    origins = sum(len(domain.origins) for domain in config.domains.values())
    return (
        f"{_count(domains, 'domain')}, {_count(origins, 'origin')}, "
        f"listen {config.listen}, admin {config.admin.listen}"
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


# The registered subcommands, in the order `--help` lists them. `tail`, `reload` and
# `probe` (SPEC §2) are added here as they are written.
COMMANDS: tuple[Callable[[Subcommands], None], ...] = (add_check_command,)


if __name__ == "__main__":
    raise SystemExit(main())
