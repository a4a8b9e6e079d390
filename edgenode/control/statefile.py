"""The run directory and the state file: what a worker starts, and reloads, from.

The config a worker runs is the text the supervisor validated, with its generation (and,
in a fleet, the domain documents it accepted from etcd at their revision), in the state
file (`RunDir.state`): whatever happens to the config file or to etcd later, a restarted
worker starts on exactly what the others run. The file is replaced whole, so a worker
starting meanwhile reads the old state or the new one. The run directory also holds the
workers' metrics files (`RunDir.metrics`, edgenode.control.workermetrics); it is made
fresh per run and removed at stop.

The supervisor writes it (edgenode.control.supervisor); a worker reads it at start
(edgenode.control.service) and on every reload (edgenode.control.reloading).
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path

import attrs

from edgenode.config import Config, apply_overrides, parse_config
from edgenode.control.domainset import DomainSet, config_with, replace_file, validated


@attrs.frozen
class WorkerState:
    """What a worker starts (and reloads) from: the config the supervisor validated."""

    generation: int
    text: str  # the YAML text the supervisor validated
    source: str  # the config file it came from: relative paths are relative to it
    overrides: Mapping[str, str]
    family: socket.AddressFamily  # of the listening socket on LISTEN_FD
    tls_family: socket.AddressFamily | None = None  # of LISTEN_TLS_FD's; None = no HTTPS
    # A fleet edge's domains (SPEC §9): the documents the supervisor accepted from etcd.
    domains: DomainSet | None = None

    def config(self) -> Config:
        """The config, parsed as the supervisor parsed it, with the cluster's domains if it
        has any (validated again, with the same rules); raises `ConfigError`."""
        config = parse_config(self.text, base_dir=Path(self.source).parent, source=self.source)
        config = apply_overrides(config, self.overrides)
        if self.domains is not None:
            config = config_with(config, validated(config, self.domains))
        return config


class RunDir:
    """The supervisor's directory for one run: the state file and the metrics files."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="edgenode-"))
        self.state = self.path / "state.json"
        self.metrics = self.path / "metrics"
        self.metrics.mkdir()

    def write_state(self, state: WorkerState) -> None:
        """Replace the state file whole (a worker starting right now reads old or new)."""
        data = {
            "generation": state.generation,
            "text": state.text,
            "source": state.source,
            "overrides": dict(state.overrides),
            "family": int(state.family),
            "tls_family": None if state.tls_family is None else int(state.tls_family),
            "cluster": None if state.domains is None else state.domains.to_json(),
        }
        replace_file(self.state, json.dumps(data).encode())

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def read_state(path: str | Path) -> WorkerState:
    """The state file at `path`, as `RunDir.write_state` wrote it."""
    data = json.loads(Path(path).read_text())
    return WorkerState(
        generation=data["generation"],
        text=data["text"],
        source=data["source"],
        overrides=data["overrides"],
        family=socket.AddressFamily(data["family"]),
        tls_family=None
        if data.get("tls_family") is None
        else socket.AddressFamily(data["tls_family"]),
        domains=None if data.get("cluster") is None else DomainSet.from_json(data["cluster"]),
    )
