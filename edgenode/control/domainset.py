"""The domains a fleet edge runs (SPEC §9): the etcd documents it accepted, at a revision
(`DomainSet`); how what etcd holds becomes the next set (`DomainBook`); and the JSON form
of a set that the cache file and the workers' state file keep.

The rules `DomainBook` keeps, whatever order changes come in:

- A valid document is the domain's settings. An invalid one is rejected: the domain keeps
  the last valid document of that key, or stays absent if it never had one. So a bad
  write never takes a domain down, and a fixed one applies at once. "Last valid" is
  followed event by event: an edge that got two writes in one batch ends where an edge
  that got them one at a time does. (After a compaction or a restore the history between
  is gone: an edge then keeps what it ran, if that key still exists.)
- A deleted key removes its domain (and forgets its last valid document).
- Two keys naming one domain once normalised (`/p/domains/WWW.example.com` beside
  `/p/domains/www.example.com`): the key spelled as the normalised name wins, else the
  smallest key; the other is rejected. The choice depends on what etcd holds, never on the
  order the writes came in, so every edge makes the same one.
- Validation depends on the node config too (its timeouts are the domains' defaults, its
  certificates must cover a domain that redirects): results are cached per node config and
  per document, so a batch costs the validation of the documents it changed.

Nothing here does I/O but the cache file's read and write; the reactor, etcd and the
reload flow are edgenode.control.cluster's.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import attrs

from edgenode.config import Config, Domain, parse_domain_document
from edgenode.errors import ConfigError, Problem
from edgenode.hostnames import normalize_hostname

DOMAINS_DIR = "domains/"  # domain documents live at <prefix>domains/<name>


@attrs.frozen
class Document:
    """One accepted domain document: the etcd key it came from and its JSON text."""

    key: str
    text: str


@attrs.frozen
class DomainSet:
    """The domain documents an edge runs, read from etcd at `revision` under `prefix`
    (`cluster.etcd.prefix`), by normalised domain name."""

    revision: int
    prefix: str
    documents: Mapping[str, Document] = attrs.field(
        factory=lambda: MappingProxyType({}), converter=lambda d: MappingProxyType(dict(d))
    )

    def to_json(self) -> dict[str, Any]:
        """The cache file's (and the state file's) form: `{"revision", "prefix", "domains":
        {name: document}}`, each document the JSON object as stored in etcd."""
        return {
            "revision": self.revision,
            "prefix": self.prefix,
            "domains": {name: json.loads(doc.text) for name, doc in sorted(self.documents.items())},
        }

    @classmethod
    def from_json(cls, data: object) -> DomainSet:
        """The inverse of `to_json`; ValueError when `data` does not have its shape. Keys
        are rebuilt from the prefix and the name (the spelling etcd used is not kept)."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        revision, prefix, domains = data.get("revision"), data.get("prefix"), data.get("domains")
        if not isinstance(revision, int) or isinstance(revision, bool) or revision < 0:
            raise ValueError(f"'revision' must be a revision number, got {revision!r}")
        if not isinstance(prefix, str) or not isinstance(domains, dict):
            raise ValueError("'prefix' must be text and 'domains' an object")
        documents = {
            str(name): Document(prefix + DOMAINS_DIR + str(name), _compact(document))
            for name, document in domains.items()
        }
        return cls(revision, prefix, documents)


def _compact(document: object) -> str:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False)


def config_with(node: Config, domains: Mapping[str, Domain]) -> Config:
    """The node's config serving `domains` (the config's own `domains` are replaced)."""
    return attrs.evolve(node, domains=domains)


def validated(node: Config, domain_set: DomainSet) -> dict[str, Domain]:
    """Every document of `domain_set` validated on `node`; `ConfigError` with every problem
    of every document that fails (a worker reading its state file, a file reload)."""
    domains: dict[str, Domain] = {}
    problems: list[Problem] = []
    for name, document in domain_set.documents.items():
        try:
            domains[name] = parse_domain_document(document.key, document.text, node)
        except ConfigError as e:
            problems.extend(e.problems)
    if problems:
        raise ConfigError(problems, source="the cluster's domains")
    return domains


# --- The cache file ---------------------------------------------------------------------------


def write_cache(path: Path, domain_set: DomainSet) -> None:
    """Replace the cache file whole (written beside it, synced, renamed over it): a crash
    leaves the old file or the new one, never half of one."""
    replace_file(path, json.dumps(domain_set.to_json(), ensure_ascii=False, indent=1).encode())


def replace_file(path: Path, data: bytes) -> None:
    """Write `data` beside `path`, sync it, and rename it over `path`: a reader (or a crash)
    sees the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_cache(path: Path, prefix: str) -> DomainSet:
    """The domain set in the cache file; ValueError saying why it cannot be used (missing,
    unreadable, not ours, or written for another prefix: another fleet's domains)."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ValueError(f"no cache file {path}") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"the cache file {path} cannot be read ({exc})") from None
    try:
        domain_set = DomainSet.from_json(data)
    except ValueError as exc:
        raise ValueError(f"the cache file {path} is not a domain set ({exc})") from None
    if domain_set.prefix != prefix:
        raise ValueError(
            f"the cache file {path} holds the domains of prefix {domain_set.prefix!r}, "
            f"not {prefix!r}"
        )
    return domain_set


# --- From what etcd holds to the next set -----------------------------------------------------


@attrs.frozen
class Rejection:
    """A document in etcd that is not applied, and why."""

    key: str
    problems: tuple[Problem, ...]

    def describe(self) -> str:
        """One line: the key, the first problem, how many more."""
        more = len(self.problems) - 1
        first = str(self.problems[0]) if self.problems else "rejected"
        return f"{self.key} rejected: {first}" + (f" (and {more} more)" if more > 0 else "")


@attrs.frozen
class Proposal:
    """The set that follows from what etcd holds now, before it is applied.

    `rejected` are documents rejected for the first time (to log and count once);
    `applied` is how many domains it adds, changes or removes compared with the running set.
    """

    node: Config
    domain_set: DomainSet
    domains: Mapping[str, Domain]
    rejected: tuple[Rejection, ...]
    applied: int
    # Every document of etcd rejected in this set, and (key, value) of each, once reported.
    all_rejected: Mapping[str, Rejection] = attrs.field(
        factory=dict, eq=False, converter=lambda d: MappingProxyType(dict(d))
    )
    reported: frozenset[tuple[str, bytes]] = attrs.field(default=frozenset(), eq=False)

    @property
    def changed(self) -> bool:
        return self.applied > 0


@attrs.frozen
class _Outcome:
    """A document's validation, cached: the domain, or why not."""

    domain: Domain | None
    rejection: Rejection | None

    def problems(self) -> tuple[Problem, ...]:
        return self.rejection.problems if self.rejection is not None else ()


class DomainBook:
    """What etcd holds under `<prefix>domains/` and the set the edge runs from it.

    `snapshot` and `batch` take what the follower delivers and return a `Proposal`;
    `commit` records the one that was applied (the cluster source does, once the new
    generation is swapped in). `for_node` proposes the same on a new node config (a file
    reload). Starts empty, at revision 0.
    """

    def __init__(self, node: Config, prefix: str) -> None:
        self.node = node
        self.running = DomainSet(0, prefix)
        self.running_domains: Mapping[str, Domain] = MappingProxyType({})
        self.documents: dict[str, bytes] = {}  # etcd's view: key -> value
        # The last valid value of each key since it was last deleted: what its domain keeps
        # while a newer document is rejected. Kept event by event, so an edge that got two
        # writes in one batch ends where one that got them one at a time does.
        self.last_valid: dict[str, bytes] = {}
        self.rejected: dict[str, Rejection] = {}  # the documents in etcd rejected now
        self._outcomes: dict[tuple[str, bytes], _Outcome] = {}  # on self.node
        self._reported: set[tuple[str, bytes]] = set()  # rejections already reported
        self._names: dict[str, str] = {}  # key -> the domain name it names

    @property
    def domains_prefix(self) -> str:
        return self.running.prefix + DOMAINS_DIR

    def snapshot(self, items: Mapping[str, bytes], revision: int) -> Proposal:
        """Everything under the prefix at `revision` (after a start, a compaction, a
        restore): keys no longer there are deletions."""
        last_valid = {}
        for key, value in items.items():
            if self._outcome(self.node, key, value, self._outcomes).domain is not None:
                last_valid[key] = value
            elif key in self.last_valid:
                last_valid[key] = self.last_valid[key]
        self.documents, self.last_valid = dict(items), last_valid
        return self._propose(self.node, revision, self._outcomes)

    def batch(self, changes: Iterable[tuple[str, bytes | None]], revision: int) -> Proposal:
        """Puts (key, value) and deletes (key, None), in order, up to `revision`."""
        for key, value in changes:
            if value is None:
                self.documents.pop(key, None)
                self.last_valid.pop(key, None)
                continue
            self.documents[key] = value
            if self._outcome(self.node, key, value, self._outcomes).domain is not None:
                self.last_valid[key] = value
        return self._propose(self.node, revision, self._outcomes)

    def for_node(self, node: Config) -> Proposal:
        """The set on a new node config (a file reload): what etcd holds, validated again.
        A running domain that would be lost (no document of its key valid on `node`) makes
        it a `ConfigError`: a file reload never drops a domain."""
        outcomes: dict[tuple[str, bytes], _Outcome] = {}
        proposal = self._propose(node, self.running.revision, outcomes)
        lost = [
            self.running.documents[name]
            for name in sorted(self.running_domains)
            if name not in proposal.domains and self.running.documents[name].key in self.documents
        ]
        if lost:
            problems = [
                p
                for doc in lost
                for p in self._outcome(node, doc.key, doc.text.encode(), outcomes).problems()
            ]
            raise ConfigError(problems, source="the cluster's domains on the new config")
        return proposal

    def commit(self, proposal: Proposal) -> None:
        """`proposal` is what runs now."""
        if proposal.node is not self.node:
            self._outcomes = {}  # validated on another node config: start again
            self.node = proposal.node
        self.running = proposal.domain_set
        self.running_domains = proposal.domains
        self.rejected = dict(proposal.all_rejected)
        self._reported = set(proposal.reported)

    # -- the rules (see the module docstring) --

    def _propose(
        self, node: Config, revision: int, outcomes: dict[tuple[str, bytes], _Outcome]
    ) -> Proposal:
        documents: dict[str, Document] = {}
        domains: dict[str, Domain] = {}
        rejected: dict[str, Rejection] = {}
        for name, keys in self._keys_by_name().items():
            chosen, *others = sorted(keys, key=lambda key: (key != self.domains_prefix + name, key))
            for other in others:
                rejected[other] = _duplicate(other, chosen, name)
            outcome = self._outcome(node, chosen, self.documents[chosen], outcomes)
            if outcome.rejection is not None:
                rejected[chosen] = outcome.rejection
            kept = self._kept(node, chosen, outcomes)
            if kept is not None:
                documents[name], domains[name] = kept
        reported = frozenset((key, self.documents[key]) for key in rejected)
        new = [r for key, r in rejected.items() if (key, self.documents[key]) not in self._reported]
        domain_set = DomainSet(revision, self.running.prefix, documents)
        applied = _count_changes(self.running.documents, documents)
        return Proposal(node, domain_set, domains, tuple(new), applied, rejected, reported)

    def _keys_by_name(self) -> dict[str, list[str]]:
        """The keys of each domain name; a key that names none is a group of its own."""
        groups: dict[str, list[str]] = {}
        names: dict[str, str] = {}
        for key in self.documents:
            name = names[key] = self.name_of(key)
            groups.setdefault(name, []).append(key)
        self._names = names  # normalising costs ~5 µs a key: once per key, not per batch
        return groups

    def name_of(self, key: str) -> str:
        """The domain name `key` names (the key itself when it names none)."""
        known = self._names.get(key)
        if known is not None:
            return known
        prefix = self.domains_prefix
        segment = key[len(prefix) :] if key.startswith(prefix) else key
        try:
            return normalize_hostname(segment) if "*" not in segment else key
        except ValueError:
            return key  # rejected by the validation, with the reason

    def _kept(
        self, node: Config, key: str, outcomes: dict[tuple[str, bytes], _Outcome]
    ) -> tuple[Document, Domain] | None:
        """What runs from `key`: its last valid document (the current one, if valid), as
        valid on `node`; else nothing."""
        value = self.last_valid.get(key)
        if value is None:
            return None
        domain = self._outcome(node, key, value, outcomes).domain
        return (Document(key, value.decode()), domain) if domain is not None else None

    def _outcome(
        self, node: Config, key: str, value: bytes, outcomes: dict[tuple[str, bytes], _Outcome]
    ) -> _Outcome:
        """`value` at `key` validated on `node`, once per (key, value) in `outcomes`."""
        outcome = outcomes.get((key, value))
        if outcome is None:
            try:
                outcome = _Outcome(parse_domain_document(key, value, node), None)
            except ConfigError as e:
                outcome = _Outcome(None, Rejection(key, e.problems))
            outcomes[key, value] = outcome
        return outcome


def _duplicate(key: str, chosen: str, name: str) -> Rejection:
    problem = Problem(
        "etcd:" + key,
        f"names the same domain as {chosen} ({name!r} once normalised); give each domain "
        "one key, spelled as its normalised name",
    )
    return Rejection(key, (problem,))


def _count_changes(before: Mapping[str, Document], after: Mapping[str, Document]) -> int:
    """Domains added, removed, or with another document (as JSON: a set read back from the
    cache file, compacted, is the same as etcd's)."""
    names = before.keys() | after.keys()
    return sum(1 for name in names if not _same(before.get(name), after.get(name)))


def _same(a: Document | None, b: Document | None) -> bool:
    if a is None or b is None or a == b:
        return a == b
    return a.key == b.key and json.loads(a.text) == json.loads(b.text)
