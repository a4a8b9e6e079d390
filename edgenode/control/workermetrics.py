"""The supervisor's /metrics: its own registry, then the workers' counts added up.

Each worker publishes its counts once a second, and a last time when it stops, into
prometheus-client's multiprocess files under `RunDir.metrics` (`Monitor.publish`); the
supervisor adds them up at scrape time, with the request-duration histogram rebuilt
(`supervisor_families`), and reads one worker's own request counter for GET /workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from edgenode.datapath.monitor import supervisor_families


class WorkerMetrics:
    """The supervisor's /metrics: its own registry, then the workers' files added up (each
    worker publishes its counts there once a second, `Monitor.publish`)."""

    def __init__(self, own: Callable[[], bytes], directory: Path) -> None:
        self._own = own
        self.directory = directory
        self.registry = CollectorRegistry()
        self.registry.register(_WorkerFiles(directory))

    def render(self) -> bytes:
        return self._own() + generate_latest(self.registry)

    def requests_of(self, pid: int) -> int:
        """Requests the worker with this pid answered (its own counter file)."""
        path = self.directory / f"counter_{pid}.db"
        if not path.exists():
            return 0
        total = 0.0
        for metric in MultiProcessCollector.merge([str(path)], accumulate=False):
            if metric.name == "edgenode_requests":
                total += sum(s.value for s in metric.samples if s.name == "edgenode_requests_total")
        return int(total)


class _WorkerFiles:
    """The workers' multiprocess files added up, with the request-duration histogram rebuilt
    from what the workers published of it (`supervisor_families`)."""

    def __init__(self, directory: Path) -> None:
        self._files = MultiProcessCollector(None, path=str(directory))

    def collect(self) -> Iterator[Metric]:
        return supervisor_families(self._files.collect())
