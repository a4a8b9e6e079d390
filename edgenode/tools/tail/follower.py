"""Whole lines of a log file that is appended to, rotated and truncated, found by polling."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO


class _OpenLog:
    """One open generation of the log file: its identity, read position and partial line."""

    def __init__(self, file: IO[bytes], position: int, now: float, *, skip: bool = False) -> None:
        st = os.fstat(file.fileno())
        self.file = file
        self.identity = (st.st_dev, st.st_ino)
        self.position = position
        self.pending = b""  # bytes after the last "\n": a line still being written
        self.skipping = skip  # discard up to the next "\n" (reading started mid-line)
        self.at_eof = False
        self.last_data = now  # when it last grew; a retired file is closed once quiet
        file.seek(position)

    def close(self) -> None:
        self.file.close()


class Follower:
    """Whole lines appended to `path`, across rotation and truncation, found by polling.

    Rotation: when `path` names a different file (inode) than the one being read, the
    old file is read to its end, then the new one from its start. The old file stays
    open until it has been quiet for `drain_seconds`, so lines a writer still appends
    to it before it reopens (logrotate's `create` mode) are not lost. Truncation: when
    the file shrinks below the read position, reading restarts at 0. Each poll reads
    at most `max_read` bytes, and a line longer than `max_line` bytes is dropped
    (counted in `discarded`), so memory stays bounded whatever the file holds.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        from_start: bool = False,
        clock: Callable[[], float] = time.monotonic,
        drain_seconds: float = 5.0,
        max_line: int = 1 << 20,
        read_size: int = 1 << 16,
        max_read: int = 1 << 20,
    ) -> None:
        self.path = Path(path)
        self.from_start = from_start
        self.clock = clock
        self.drain_seconds = drain_seconds
        self.max_line = max_line
        self.read_size = read_size
        self.max_read = max_read
        self.current: _OpenLog | None = None
        self.retired: list[_OpenLog] = []  # rotated-away files still being drained, oldest first
        self.size_at_open = 0
        self.discarded = 0  # partial or oversized lines dropped
        self.rotations = 0
        self.truncations = 0

    def open(self) -> None:
        """Open `path` at its end (or its start); raise OSError if it cannot be read."""
        file = self.path.open("rb", buffering=0)
        try:
            size = os.fstat(file.fileno()).st_size
            position, skip = (0, False) if self.from_start else _start_of_last_line(file, size)
            self.current = _OpenLog(file, position, self.clock(), skip=skip)
        except BaseException:
            file.close()
            raise
        self.size_at_open = size

    def close(self) -> None:
        for log in self.retired:
            log.close()
        if self.current is not None:
            self.current.close()
        self.retired = []
        self.current = None

    @property
    def at_eof(self) -> bool:
        """Everything written so far has been read (the caller may sleep before polling)."""
        logs = [*self.retired, *([self.current] if self.current else [])]
        return all(log.at_eof for log in logs)

    @property
    def position(self) -> int:
        return self.current.position if self.current else 0

    @property
    def pending_bytes(self) -> int:
        """Bytes of a line whose "\\n" has not been written yet (a torn last line)."""
        return len(self.current.pending) if self.current else 0

    def poll(self) -> list[bytes]:
        """Check for rotation and truncation, then return the whole lines written since.

        Lines of a rotated-away file all come before those of the file that replaced it.
        Without a prior `open()`, the file is opened (when it exists) from its start.
        """
        self._check_path()
        lines: list[bytes] = []
        budget = self.max_read
        now = self.clock()
        for log in list(self.retired):
            budget = self._read(log, lines, budget)
            if not log.at_eof:
                return lines  # still catching up with an old file
            if now - log.last_data >= self.drain_seconds:
                self.retired.remove(log)
                self._close(log)
        if self.current is not None:
            self._read(self.current, lines, budget)
        return lines

    def read_available(self) -> list[bytes]:
        """The whole lines of the current file from its position: at most `max_read` bytes."""
        lines: list[bytes] = []
        if self.current is not None:
            self._read(self.current, lines, self.max_read)
        return lines

    def _check_path(self) -> None:
        if self.current is None:
            self._open_replacement()
            return
        try:
            st = os.stat(self.path)
        except OSError:
            return  # rotated away and not yet recreated: keep reading the old file
        current = self.current
        if (st.st_dev, st.st_ino) != current.identity:
            self.rotations += 1
            self.retired.append(current)
            while len(self.retired) > 4:  # only if rotated faster than we can drain
                self._close(self.retired.pop(0))
            self.current = None
            self._open_replacement()
        elif os.fstat(current.file.fileno()).st_size < current.position:
            self.truncations += 1
            if current.pending or current.skipping:
                self.discarded += 1
            current.position = 0
            current.pending = b""
            current.skipping = False
            current.at_eof = False
            current.file.seek(0)

    def _open_replacement(self) -> None:
        """Open the file `path` now names, from its start (it appeared after a rotation)."""
        try:
            file = self.path.open("rb", buffering=0)
        except OSError:
            return  # not there (yet): try again on the next poll
        self.current = _OpenLog(file, 0, self.clock())

    def _close(self, log: _OpenLog) -> None:
        if log.pending or log.skipping:
            self.discarded += 1  # a line the old file will never complete
        log.close()

    def _read(self, log: _OpenLog, lines: list[bytes], budget: int) -> int:
        """Append the whole lines of `log` to `lines`, reading up to `budget` bytes."""
        while budget > 0:
            chunk = log.file.read(min(self.read_size, budget))
            if not chunk:
                log.at_eof = True
                return budget
            log.position += len(chunk)
            log.last_data = self.clock()
            budget -= len(chunk)
            self._split(log, chunk, lines)
        log.at_eof = False
        return 0

    def _split(self, log: _OpenLog, chunk: bytes, lines: list[bytes]) -> None:
        if log.skipping:
            newline = chunk.find(b"\n")
            if newline < 0:
                return
            log.skipping = False
            chunk = chunk[newline + 1 :]
        parts = chunk.split(b"\n")
        if len(parts) == 1:
            log.pending += parts[0]
        else:
            parts[0] = log.pending + parts[0]
            log.pending = parts.pop()
            lines += [part for part in parts if part]
        if len(log.pending) > self.max_line:
            self.discarded += 1
            log.pending = b""
            log.skipping = True


def _start_of_last_line(file: IO[bytes], size: int, lookback: int = 1 << 16) -> tuple[int, bool]:
    """Where `tail -f` should start: the end, or the start of a last line still being written.

    Returns (position, skip): skip means the partial line began more than `lookback`
    bytes back, so reading starts at the end and drops the rest of that line.
    """
    if size == 0:
        return 0, False
    start = max(0, size - lookback)
    file.seek(start)
    block = file.read(size - start)
    if block.endswith(b"\n"):
        return size, False
    newline = block.rfind(b"\n")
    if newline >= 0:
        return start + newline + 1, False
    return (0, False) if start == 0 else (size, True)
