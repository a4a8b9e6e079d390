"""The one reload flow (`Reloader`): where it reads the next config (`ConfigFile`,
`StateFile`) and what it updates besides the runtime holder (a `ReloadTarget`: an edge's
or a worker's `DataPath`, a supervisor's `Workers`).

Every service reloads through it (POST /reload, SIGHUP, a supervisor's command), and its
answer is a Deferred[ReloadResult] in every one of them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, cast

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from edgenode.config import Config, apply_overrides, load_config_and_text
from edgenode.control.admin import ReloadResult
from edgenode.control.domainset import DomainSet
from edgenode.control.statefile import read_state
from edgenode.datapath.monitor import Monitor
from edgenode.errors import ConfigError, Problem
from edgenode.runtime import Runtime, RuntimeHolder, build_runtime, config_diff

log = Logger()


# --- Where a reload reads the next config ----------------------------------------------------


@attrs.frozen
class Candidate:
    """The config a reload would apply: parsed and validated, its generation, its text."""

    config: Config
    generation: int
    text: str  # the YAML the config came from: a supervisor hands it to its workers
    # A fleet edge's (SPEC §9): the etcd documents its domains came from, at their revision;
    # a supervisor hands them to its workers too. None: the domains are the file's.
    domains: DomainSet | None = None


class ConfigSource(Protocol):
    def next(self, old: Runtime) -> Candidate:
        """The config to replace `old` with; raises `ConfigError`."""
        ...


class ConfigFile:
    """An edge's or a supervisor's: the config file it started on, with the command line's
    overrides on top, as the next generation."""

    def __init__(self, source: Path | None, overrides: Mapping[str, str]) -> None:
        self.source = source
        self.overrides = overrides

    def next(self, old: Runtime) -> Candidate:
        if self.source is None:
            raise ConfigError([Problem("", "the running config has no file to re-read")])
        config, text = load_config_and_text(self.source)
        return Candidate(apply_overrides(config, self.overrides), old.generation + 1, text)


class StateFile:
    """A worker's: the state file its supervisor wrote, on the supervisor's generation."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def next(self, old: Runtime) -> Candidate:
        try:
            state = read_state(self.path)
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError([Problem("", f"cannot read the state file: {e}")]) from None
        return Candidate(state.config(), state.generation, state.text, state.domains)


# --- The reload flow -------------------------------------------------------------------------

Errors = tuple[dict[str, str], ...]  # ReloadResult.errors
Reports = tuple[dict[str, Any], ...]  # ReloadResult.workers


class ReloadTarget(Protocol):
    """What a reload updates besides the runtime holder: a data path, or the workers."""

    restart_note: str  # what becomes of a change that needs a restart, for the log

    def stage(self, candidate: Candidate) -> None:
        """Before the swap: whatever must be in place once the new generation is current."""
        ...

    def applied(self, new: Runtime, old: Runtime) -> str:
        """After the swap: apply what the runtime does not carry; say what was done."""
        ...

    async def confirmed(self, trigger: str, generation: int) -> tuple[Errors, Reports]:
        """Whether every process now runs `generation`: the errors, each worker's report."""
        ...


class Reloader:
    """The one reload flow (POST /reload, SIGHUP, a supervisor's command): read the next
    config, build all of it, swap it in whole, then have the target apply and confirm it.

    Everything is built before the swap (parse, validate, CA files, TLS contexts), so a
    config that fails anywhere changes nothing. The flow runs at once up to the target's
    confirmation (which only a supervisor waits for), so in an edge or a worker reloads
    are serialised by the reactor.
    """

    def __init__(
        self, holder: RuntimeHolder, monitor: Monitor, source: ConfigSource, target: ReloadTarget
    ) -> None:
        self.holder = holder
        self.monitor = monitor
        self.source = source
        self.target = target

    def reload(
        self, trigger: str, source: ConfigSource | None = None
    ) -> defer.Deferred[ReloadResult]:
        """Reload; the Deferred fires with the outcome, applied or not (never fails for a
        bad config: that is a ReloadResult that is not `ok`). `source` replaces the usual
        one for this reload (a fleet edge's new domains from etcd, with the running file
        settings). Everything up to the swap runs before this returns."""
        return defer.Deferred.fromCoroutine(self._reload(trigger, source or self.source))

    def reload_logged(self, trigger: str) -> None:
        """A reload nobody waits for (SIGHUP): its outcome goes to the log, a bug too."""
        self.reload(trigger).addErrback(lambda f: log.failure("reload failed", f))

    async def _reload(self, trigger: str, source: ConfigSource) -> ReloadResult:
        old = self.holder.current
        try:
            candidate = source.next(old)
            new = build_runtime(candidate.config, candidate.generation, previous=old)
        except ConfigError as e:
            return self._rejected(trigger, old, e)
        changed = config_diff(old.config, candidate.config)
        self.target.stage(candidate)
        self.holder.swap(new)
        self.monitor.reloaded(True, new.generation)
        self.monitor.serving_certificates(new.config.tls.certificates)
        done = self.target.applied(new, old)
        log.info(
            "reload ({trigger}): generation {gen}: {diff}; {done}",
            trigger=trigger,
            gen=new.generation,
            diff=json.dumps(changed, sort_keys=True),
            done=done,
        )
        for line in cast(list[str], changed["restart_required"]):
            log.warn(
                "reload: {change} needs a restart; {note}",
                change=line,
                note=self.target.restart_note,
            )
        errors, workers = await self.target.confirmed(trigger, new.generation)
        return ReloadResult(
            not errors, new.generation, changed=changed, errors=errors, workers=workers
        )

    def _rejected(self, trigger: str, old: Runtime, e: ConfigError) -> ReloadResult:
        log.warn(
            "reload ({trigger}) rejected, still running generation {gen}:\n{problems}",
            trigger=trigger,
            gen=old.generation,
            problems=str(e),
        )
        errors = tuple({"path": p.path, "message": p.message} for p in e.problems)
        self.monitor.reloaded(False, old.generation)
        return ReloadResult(False, old.generation, errors=errors)
