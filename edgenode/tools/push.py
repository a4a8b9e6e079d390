"""`edgenode push --config edge.yaml domains.yaml [--prune]`: validate a fleet's domains and
write them to the etcd its edges follow, in one transaction (SPEC §9 "Writing").

1. The node config must load, with `cluster.etcd` (it says where etcd is, and every rule
   that depends on a node: timeouts, certificates for `https_redirect`, relative paths).
2. Every domain of the file is checked with every rule of `edgenode check`, and again as
   the JSON document the edges will read. Any problem: all are printed, nothing is
   written, exit 1.
3. etcd's domains are read at one revision, and the difference printed: added, changed
   (the stored document differs), removed (only with `--prune`; without it, domains in
   etcd but not in the file are listed and kept).
4. Everything is written in one transaction, guarded by `unchanged_since`: if anything
   under `<prefix>domains/` was created, changed or deleted since the read (another push,
   an etcdctl), the transaction writes nothing and push says so (exit 1). So two pushes
   at once never interleave: one wins, the other fails cleanly and can be run again.

Documents are stored as compact JSON of the entry as written (names as keys are
normalised: `<prefix>domains/<name>`). etcd unreachable: exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import attrs

from edgenode.config import Config, DomainEntry, domain_key, load_config, load_domains_file
from edgenode.control.cluster import ClusterStartError, read_token
from edgenode.control.etcd import (
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    IEtcdReactor,
    Snapshot,
    delete_op,
    put_op,
    unchanged_since,
)
from edgenode.errors import ConfigError
from edgenode.tools.exitcodes import ExitCode
from edgenode.tools.reactor import run_once

PROG = "edgenode"


@attrs.frozen
class PushPlan:
    """What a push changes in etcd, by key, against the snapshot it was read from."""

    snapshot: Snapshot
    put: tuple[tuple[str, str], ...]  # (key, document) added or changed
    added: tuple[str, ...]  # domain names
    changed: tuple[str, ...]
    removed: tuple[str, ...]  # keys deleted (--prune)
    kept: tuple[str, ...]  # keys in etcd, not in the file, not deleted (no --prune)
    unchanged: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not self.put and not self.removed


def plan_push(
    node: Config, entries: Sequence[DomainEntry], snapshot: Snapshot, *, prune: bool
) -> PushPlan:
    """The writes that make etcd hold exactly `entries` (with `prune`), or at least them."""
    written = {domain_key(node, entry.name): entry for entry in entries}
    put, added, changed, unchanged = [], [], [], []
    for key, entry in written.items():
        stored = snapshot.items.get(key)
        if stored is None:
            added.append(entry.name)
        elif not _same_document(stored.value, entry.document):
            changed.append(entry.name)
        else:
            unchanged.append(entry.name)
            continue
        put.append((key, entry.document))
    others = sorted(key for key in snapshot.items if key not in written)
    return PushPlan(
        snapshot,
        tuple(put),
        tuple(added),
        tuple(changed),
        removed=tuple(others) if prune else (),
        kept=() if prune else tuple(others),
        unchanged=tuple(unchanged),
    )


def _same_document(stored: bytes, document: str) -> bool:
    """Whether etcd already holds `document` (as JSON: spacing and key order aside)."""
    try:
        return bool(json.loads(stored) == json.loads(document))
    except ValueError:
        return False


def describe_plan(plan: PushPlan, prefix: str, endpoint: str) -> list[str]:
    lines = [f"{PROG}: etcd {endpoint}, {prefix} at revision {plan.snapshot.revision}:"]
    lines += [f"  added    {name}" for name in plan.added]
    lines += [f"  changed  {name}" for name in plan.changed]
    lines += [f"  removed  {key[len(prefix) :]}" for key in plan.removed]
    lines += [
        f"  kept     {key[len(prefix) :]} (not in the file; --prune deletes it)"
        for key in plan.kept
    ]
    if plan.unchanged:
        lines.append(f"  {len(plan.unchanged)} unchanged")
    return lines


async def push(
    client: EtcdClient,
    node: Config,
    entries: Sequence[DomainEntry],
    *,
    prune: bool = False,
    dry_run: bool = False,
) -> int:
    """Read etcd, print the difference, write it in one guarded transaction; the exit
    code. `client` is closed at the end."""
    assert node.cluster is not None
    prefix = node.cluster.etcd.domains_prefix
    try:
        snapshot = await client.range_prefix(prefix)
        plan = plan_push(node, entries, snapshot, prune=prune)
        print("\n".join(describe_plan(plan, prefix, client.endpoint)))
        if plan.empty:
            print(f"{PROG}: etcd already holds these domains; nothing to write")
            return ExitCode.OK
        if dry_run:
            print(f"{PROG}: --dry-run: nothing written")
            return ExitCode.OK
        operations = [put_op(key, document.encode()) for key, document in plan.put]
        operations += [delete_op(key) for key in plan.removed]
        result = await client.txn(unchanged_since(prefix, snapshot), operations)
    except EtcdUnavailable as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return ExitCode.USAGE
    except EtcdError as e:
        print(f"{PROG}: {e}{_txn_hint(str(e))}", file=sys.stderr)
        return ExitCode.FAILED
    finally:
        await client.close()
    if not result.succeeded:
        print(
            f"{PROG}: etcd changed under {prefix} since it was read (another push?); nothing "
            "was written; run push again",
            file=sys.stderr,
        )
        return ExitCode.FAILED
    n = len(plan.put) + len(plan.removed)
    print(
        f"{PROG}: wrote {n} change{'' if n == 1 else 's'} in one transaction, revision "
        f"{result.revision}"
    )
    return ExitCode.OK


def _txn_hint(message: str) -> str:
    if "too many operations" in message:
        return (
            "\n  (one push guards every key under the prefix in one transaction, bounded by "
            "etcd's --max-txn-ops, 128 by default: raise it on the etcd members, or push "
            "fewer domains at a time)"
        )
    return ""


# --- The command ------------------------------------------------------------------------------


def add_push_command(subcommands: argparse._SubParsersAction[Any]) -> None:
    """`edgenode push --config F DOMAINS [--prune]`."""
    command = subcommands.add_parser(
        "push",
        help="validate domains and write them to the etcd a fleet follows",
        description=(
            "Validate every domain of DOMAINS (a YAML file with a `domains:` mapping, as in "
            "a config) with every rule of `edgenode check` on the node config, print the "
            "difference with etcd, and write it in one etcd transaction. Exit 0 when "
            "written (or nothing to write), 1 on any problem or if etcd changed meanwhile "
            "(nothing is written), 2 if etcd cannot be reached."
        ),
    )
    command.add_argument(
        "--config", required=True, metavar="FILE", help="an edge config with cluster.etcd"
    )
    command.add_argument("domains", metavar="DOMAINS", help="YAML file with a domains: mapping")
    command.add_argument(
        "--prune", action="store_true", help="also delete domains in etcd that the file lacks"
    )
    command.add_argument(
        "--dry-run", action="store_true", help="print the difference, write nothing"
    )
    command.add_argument("--timeout", type=float, default=5.0, help="seconds per etcd request")
    command.set_defaults(run=run_push)


def run_push(args: argparse.Namespace) -> int:
    try:
        node = load_config(args.config)
    except ConfigError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return ExitCode.FAILED
    if node.cluster is None:
        print(
            f"{PROG}: {args.config} has no cluster.etcd: push writes to the etcd a fleet "
            "follows; give the config of one of its edges",
            file=sys.stderr,
        )
        return ExitCode.USAGE
    try:
        entries = load_domains_file(args.domains, node)
    except ConfigError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        print(f"{PROG}: nothing written", file=sys.stderr)
        return ExitCode.FAILED
    try:
        read_token(node.cluster.etcd)
    except ClusterStartError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return ExitCode.USAGE
    return run_in_reactor(node, entries, args)


def run_in_reactor(node: Config, entries: Sequence[DomainEntry], args: argparse.Namespace) -> int:
    """Run the global reactor for one push (a CLI process runs it once)."""

    async def main(reactor: IEtcdReactor) -> int:
        assert node.cluster is not None
        settings = node.cluster.etcd
        token = read_token(settings)
        client = EtcdClient(reactor, settings.endpoints, token=token, timeout=args.timeout)
        return await push(client, node, entries, prune=args.prune, dry_run=args.dry_run)

    return run_once(main, "push")
