"""The tail engine: lines from the follower, through the filter, into the summary or a sink."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Final

from edgenode.accesslog import parse_line
from edgenode.tools.tail.filters import RecordFilter
from edgenode.tools.tail.follower import Follower
from edgenode.tools.tail.summary import LogSummary

POLL_SECONDS: Final = 0.25  # how often the file is stat()ed when there is nothing to read
REFRESH_SECONDS: Final = 1.0  # how often the live view is redrawn


class Tail:
    """Feeds each line the follower yields through the filter into the summary or a sink."""

    def __init__(
        self,
        follower: Follower,
        record_filter: RecordFilter,
        summary: LogSummary,
        sink: Callable[[list[bytes]], None] | None = None,
    ) -> None:
        self.follower = follower
        self.filter = record_filter
        self.summary = summary
        self.sink = sink  # --json: receives the matching lines; the summary then only counts
        self._discarded_seen = 0

    def step(self, now: float) -> int:
        """Poll once (rotation, truncation, new lines); return how many lines were read."""
        return self.feed(self.follower.poll(), now)

    def feed(self, lines: Iterable[bytes], now: float) -> int:
        summary, keep, matched = self.summary, self.filter, []
        add = summary.add if self.sink is None else None
        n = 0
        for line in lines:
            n += 1
            record = parse_line(line)
            if record is None:
                summary.unparsable += 1
            elif not keep(record):
                summary.skipped += 1
            elif add is not None:
                add(record, now)
            else:
                summary.records += 1
                matched.append(line)
        discarded = self.follower.discarded
        if discarded != self._discarded_seen:
            summary.unparsable += discarded - self._discarded_seen
            self._discarded_seen = discarded
        if matched and self.sink is not None:
            self.sink(matched)
        return n

    def read_once(self, now: float) -> None:
        """Read the file as it is now, from the follower's position to the size it had."""
        follower = self.follower
        while True:
            self.feed(follower.read_available(), now)
            if follower.at_eof or follower.position >= follower.size_at_open:
                return


def follow(
    tail: Tail,
    on_refresh: Callable[[float], None] | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    until: Callable[[], bool] | None = None,
    poll_seconds: float = POLL_SECONDS,
    refresh_seconds: float = REFRESH_SECONDS,
) -> None:
    """Poll `tail` until `until()` is true (or forever), calling `on_refresh` every second.

    A backlog is read without sleeping, at most `Follower.max_read` bytes per step,
    so the view keeps refreshing while the tool catches up.
    """
    next_refresh = clock() + refresh_seconds
    while until is None or not until():
        now = clock()
        tail.step(now)
        if on_refresh is not None and now >= next_refresh:
            on_refresh(now)
            next_refresh = now + refresh_seconds
        if tail.follower.at_eof:
            sleep(poll_seconds)
