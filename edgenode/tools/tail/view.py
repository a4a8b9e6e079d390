"""What tail prints: the rich live view, the static `--once` summary and the `--json` lines."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Final

import attrs
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from edgenode.tools.tail.engine import Tail, follow
from edgenode.tools.tail.filters import RecordFilter
from edgenode.tools.tail.summary import (
    CLIENT_TLS_FAILURES,
    PERCENTILES,
    RATE_WINDOW_SECONDS,
    STATUS_CLASSES,
    DomainStats,
    Rate,
    Rates,
    Snapshot,
)

PROG: Final = "edgenode"
ONCE_COLUMNS: Final = (
    "domain",
    "requests",
    *STATUS_CLASSES,
    *(f"p{p}_ms" for p in PERCENTILES),
    "bytes",
    "https_%",  # last, so scripts that read the columns before it by position still work
)
CLIENT_TLS_ROWS: Final = 10  # (sni, error) groups shown; client SNIs can be many and random


def _tenths(value: float | None) -> str:
    """Milliseconds and percentages: one decimal, "-" when there is nothing to show."""
    return "-" if value is None else f"{value:.1f}"


def _printable(text: str) -> str:
    """`text` with control characters escaped: a client's SNI must not drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _rate(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _bytes(value: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _status_style(cls: str) -> str:
    return {"4xx": "yellow", "5xx": "red"}.get(cls, "")


def _summary_line(path: Path, snap: Snapshot, record_filter: RecordFilter, extra: str = "") -> str:
    parts = [f"{snap.records:,} records"]
    if snap.client_tls.total:  # records that are not requests, so the _total row differs
        parts[0] += f" ({_count(snap.client_tls.total, 'client TLS handshake failure')})"
    if record_filter.describe():
        parts.append(f"filter: {record_filter.describe()} ({snap.skipped:,} other records)")
    parts.append(f"{snap.unparsable:,} unparsable")
    if extra:
        parts.append(extra)
    return f"{PROG} tail {path}: " + ", ".join(parts)


def https_line(snap: Snapshot, rates: dict[str, Rate] | None = None) -> str:
    """'https 63.2 % of requests (379 of 600)'; live, also failed client handshakes per second."""
    total = snap.total
    share = "-" if total.https_percent is None else f"{total.https_percent:.1f} %"
    text = f"https {share} of requests ({total.https:,} of {total.requests:,})"
    failures = rates.get(CLIENT_TLS_FAILURES) if rates is not None else None
    if failures is not None and snap.client_tls.total:
        window = f"{RATE_WINDOW_SECONDS:.0f}s"
        text += (
            f", client TLS handshake failures {_rate(failures.requests_now)}/s"
            f" ({_rate(failures.requests_window)}/s over {window})"
        )
    return text


def once_table(snap: Snapshot) -> Table:
    """The --once summary: one row per domain, the total as footer; columns ONCE_COLUMNS."""
    columns = [_Column(name, right=name != "domain") for name in ONCE_COLUMNS]
    rows = [[_once_cell(row, name) for name in ONCE_COLUMNS] for row in snap.domains]
    return _table(columns, rows, footer=[_once_cell(snap.total, name) for name in ONCE_COLUMNS])


def _once_cell(row: DomainStats, name: str) -> str:
    value = row.column(name)
    if name.endswith(("_ms", "_%")):
        return _tenths(value)  # type: ignore[arg-type]
    return str(value)


@attrs.frozen
class _Column:
    """A column of a rendered table and how it gives way on a narrow terminal."""

    name: str
    right: bool = False
    drop: int = 0  # dropped, highest first, when the table is too wide; 0 = always shown
    flexible: bool = False  # shortened with "…" (down to `shortest`) before anything is dropped
    shortest: int = 10


Cell = str | Text


def _table(
    columns: Sequence[_Column],
    rows: Sequence[Sequence[Cell]],
    *,
    title: str | None = None,
    footer: Sequence[Cell] | None = None,
    width: int | None = None,
) -> Table:
    """A borderless table; with `width`, it is fitted to that many terminal columns.

    Columns are dropped, highest `drop` first, until the rest fit with every flexible
    column at its `shortest`; flexible columns then widen, in order, into what is left
    (ending in "…" when cut).
    """
    rows = [[_cell(value) for value in row] for row in rows]
    footer = [_cell(value) for value in footer] if footer is not None else None
    keep = list(range(len(columns)))
    limits: dict[int, int] = {}
    if width is not None:
        sized = [*rows, footer] if footer is not None else rows
        natural = [
            max(len(str(cell)) for cell in [col.name, *(row[i] for row in sized if i < len(row))])
            for i, col in enumerate(columns)
        ]

        def least(i: int) -> int:
            return min(natural[i], columns[i].shortest) if columns[i].flexible else natural[i]

        def needed(kept: list[int]) -> int:
            return sum(least(i) for i in kept) + 3 * (len(kept) - 1)  # 3: padding, separator

        for i in sorted(range(len(columns)), key=lambda i: -columns[i].drop):
            if needed(keep) <= width or columns[i].drop == 0:
                break
            keep.remove(i)
        spare = width - needed(keep)
        for i in keep:  # flexible columns widen in column order: the first matters most
            limits[i] = least(i) + max(0, min(natural[i] - least(i), spare))
            spare -= limits[i] - least(i)
        for i in reversed(keep):  # still too wide: flexible columns give way, last first
            if spare < 0 and columns[i].flexible:
                cut = min(-spare, limits[i] - 6)
                limits[i] -= cut
                spare += cut
    table = Table(
        # Text, not markup: a title may carry values read from the log.
        title=Text(title, style="bold") if title is not None else None,
        title_justify="left",
        box=box.SIMPLE if footer is not None else box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        show_footer=footer is not None,
    )
    for i in keep:
        col = columns[i]
        table.add_column(
            col.name,
            footer=footer[i] if footer is not None else "",
            justify="right" if col.right else "left",
            no_wrap=True,
            overflow="ellipsis",
            style=_status_style(col.name),
            footer_style="bold",
            width=limits.get(i),
        )
    for row in rows:
        table.add_row(*(row[i] if i < len(row) else "" for i in keep))
    return table


def _cell(value: Cell) -> Text:
    """A cell as plain text: log values (an SNI, an error detail) are never rich markup,
    so "[/x]" in one is shown as written instead of raising MarkupError."""
    return Text(_printable(value)) if isinstance(value, str) else value


def failures_table(snap: Snapshot, *, limit: int | None = None, width: int | None = None) -> Table:
    """Origin failures grouped by (domain, origin, sni, error), most frequent first."""
    columns = [
        _Column("domain", flexible=True, shortest=20),
        _Column("origin"),
        _Column("sni", flexible=True, shortest=20),
        _Column("error"),
        _Column("count", right=True),
        _Column("last", drop=2),
        _Column("detail", flexible=True, drop=1, shortest=20),
    ]
    rows: list[list[Cell]] = [
        [
            group.domain,
            group.origin or "-",
            group.sni or "(none)",  # no SNI extension was sent
            Text(group.error, style="red"),
            f"{group.count:,}",
            _when(group.last_ts, short=width is not None),
            group.last_detail or "",
        ]
        for group in snap.failures[:limit]
    ]
    title = "origin failures by (domain, origin, sni, error)"
    return _table(columns, rows, title=title, width=width)


def client_tls_section(
    snap: Snapshot, *, limit: int = CLIENT_TLS_ROWS, width: int | None = None
) -> RenderableType:
    """Failed client TLS handshakes by (client SNI, error), most frequent first.

    The heading carries the exact totals by error; the rows are the `limit` largest
    groups. The heading is a line of its own, not the table's title, so that it is not
    wrapped to the width of a narrow table.
    """
    failures = snap.client_tls
    columns = [
        _Column("sni", flexible=True, shortest=20),
        _Column("error"),
        _Column("count", right=True),
        _Column("last", drop=2),
        _Column("client", drop=3),
        _Column("detail", flexible=True, drop=1, shortest=20),
    ]
    rows: list[list[Cell]] = [
        [
            "(other names)" if group.other else group.sni or "(none)",  # (none): no SNI sent
            Text(group.error, style="red"),
            f"{group.count:,}",
            _when(group.last_ts, short=width is not None),
            group.last_client or "-",
            group.last_detail or "",
        ]
        for group in failures.groups[:limit]
    ]
    if len(failures.groups) > limit:
        rows.append([f"… {len(failures.groups) - limit} more"])
    by_error = ", ".join(f"{error} {count:,}" for error, count in failures.by_error)
    heading = f"client TLS handshake failures by (sni, error): {failures.total:,} ({by_error})"
    return Group(Text(heading, style="bold"), _table(columns, rows, width=width))


def origins_down_section(snap: Snapshot, *, width: int | None = None) -> RenderableType:
    """The origins the edge marked down (health checks or passive ejection), oldest first."""
    columns = [
        _Column("domain", flexible=True, shortest=12),
        _Column("origin"),
        _Column("sni", drop=2),
        _Column("since", drop=3),
        _Column("reason", flexible=True, drop=1, shortest=20),
    ]
    rows: list[list[Cell]] = [
        [
            down.domain,
            Text(down.origin, style="red"),
            down.sni or "-",
            _when(down.since, short=width is not None),
            down.reason or "",
        ]
        for down in snap.origins_down
    ]
    heading = f"origins down: {len(snap.origins_down)}"
    return Group(Text(heading, style="bold red"), _table(columns, rows, width=width))


def errors_table(snap: Snapshot, *, width: int | None = None) -> Table:
    """The last errors (an error code, or a 5xx), newest first, with their request ids."""
    columns = [
        _Column("ts"),
        _Column("request_id"),
        _Column("domain", flexible=True, shortest=20),
        _Column("status", right=True),
        _Column("error"),
        _Column("detail", flexible=True, drop=2, shortest=24),
    ]
    rows = [
        [
            _when(err.ts, short=width is not None),
            err.request_id,
            err.domain,
            "-" if err.status is None else str(err.status),
            err.error or "-",
            err.detail or "",
        ]
        for err in reversed(snap.recent_errors)
    ]
    return _table(columns, rows, title="last errors, newest first", width=width)


def _when(ts: str | None, *, short: bool) -> str:
    """A record's `ts`; in the live view only its time of day (UTC) with milliseconds."""
    if ts is None:
        return "-"
    return ts[11:23] if short and len(ts) >= 23 else ts


def print_once(out: IO[str], path: Path, snap: Snapshot, tail: Tail) -> None:
    """The static summary of --once: a header line, the domain table, failures, errors.

    Tables are as wide as their content (never truncated to the terminal), and
    trailing spaces are stripped, so the text is stable for scripts and tests.
    """
    extra = "1 incomplete last line (not counted)" if tail.follower.pending_bytes else ""
    parts: list[RenderableType] = [
        Text(_summary_line(path, snap, tail.filter, extra)),
        Text(https_line(snap)),
        Text(""),
    ]
    parts.append(once_table(snap))
    if snap.failures:
        parts += [Text(""), failures_table(snap)]
    if snap.origins_down:
        parts += [Text(""), origins_down_section(snap)]
    if snap.client_tls.total:
        parts += [Text(""), client_tls_section(snap)]
    if snap.recent_errors:
        parts += [Text(""), errors_table(snap)]
    colour = out.isatty()
    buffer = io.StringIO()
    console = Console(file=buffer, highlight=False, force_terminal=colour, no_color=not colour)
    unlimited = console.options.update_width(1 << 16)
    console.width = max(Measurement.get(console, unlimited, part).maximum for part in parts)
    for part in parts:
        console.print(part)
    out.write("".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines()))
    out.flush()


def live_view(
    path: Path,
    snap: Snapshot,
    rates: dict[str, Rate],
    tail: Tail,
    *,
    width: int = 160,
    max_rows: int = 20,
) -> RenderableType:
    """One frame of the live view, fitted to a terminal `width` columns wide."""
    follower = tail.follower
    state = []
    if follower.rotations:
        state.append(_count(follower.rotations, "rotation"))
    if follower.truncations:
        state.append(_count(follower.truncations, "truncation"))
    state.append(time.strftime("%H:%M:%S"))
    header = Text(_summary_line(path, snap, tail.filter, ", ".join(state)), style="bold")

    window = f"{RATE_WINDOW_SECONDS:.0f}s"
    columns = [
        _Column("domain", flexible=True, shortest=12),
        _Column("req/s", right=True),
        _Column(f"req/s {window}", right=True, drop=8),
        _Column("requests", right=True),
        _Column("https %", right=True, drop=6),
        _Column("2xx", right=True, drop=5),
        _Column("3xx", right=True, drop=9),
        _Column("4xx", right=True, drop=2),
        _Column("5xx", right=True),
        _Column("p50 ms", right=True, drop=3),
        _Column("p95 ms", right=True, drop=7),
        _Column("p99 ms", right=True),
        _Column("bytes/s", right=True, drop=4),
        _Column(f"bytes/s {window}", right=True, drop=10),
    ]
    zero = Rate(0.0, 0.0, 0.0, 0.0)

    def cells(row: DomainStats) -> list[Cell]:
        rate = rates.get(row.domain, zero)
        return [
            row.domain,
            _rate(rate.requests_now),
            _rate(rate.requests_window),
            f"{row.requests:,}",
            _tenths(row.https_percent),
            f"{row.status_2xx:,}",
            f"{row.status_3xx:,}",
            f"{row.status_4xx:,}",
            f"{row.status_5xx:,}",
            _tenths(row.p50_ms),
            _tenths(row.p95_ms),
            _tenths(row.p99_ms),
            _bytes(rate.bytes_now),
            _bytes(rate.bytes_window),
        ]

    rows = [cells(row) for row in snap.domains[:max_rows]]
    if len(snap.domains) > max_rows:
        rows.append([f"… {len(snap.domains) - max_rows} more"])
    traffic = _table(columns, rows, footer=cells(snap.total), width=width)
    parts: list[RenderableType] = [header, Text(https_line(snap, rates)), traffic]
    if snap.failures:
        parts.append(failures_table(snap, limit=8, width=width))
    if snap.origins_down:
        parts.append(origins_down_section(snap, width=width))
    if snap.client_tls.total:
        parts.append(client_tls_section(snap, limit=8, width=width))
    if snap.recent_errors:
        parts.append(errors_table(snap, width=width))
    return Group(*parts)


def run_live(path: Path, tail: Tail, clock: Callable[[], float] = time.monotonic) -> None:
    """The live view: redrawn in place every second from a snapshot, until Ctrl-C.

    When stdout is not a terminal, each frame is printed after the last (like `top -b`).
    """
    rates = Rates()
    console = Console()

    def frame(now: float) -> RenderableType:
        snap = tail.summary.snapshot(now)
        return live_view(path, snap, rates.update(now, snap), tail, width=console.width)

    if not console.is_terminal:
        follow(tail, lambda now: console.print(frame(now), "", crop=False), clock=clock)
        return
    with Live(frame(clock()), console=console, auto_refresh=False, transient=False) as live:
        follow(tail, lambda now: live.update(frame(now), refresh=True), clock=clock)


class LineSink:
    """Writes matching lines exactly as read, each batch flushed (for pipes)."""

    def __init__(self, out: IO[str]) -> None:
        out.flush()
        self.text = out
        self.binary: IO[bytes] | None = getattr(out, "buffer", None)

    def __call__(self, lines: list[bytes]) -> None:
        if self.binary is not None:
            self.binary.write(b"\n".join(lines) + b"\n")
            self.binary.flush()
        else:
            self.text.write("\n".join(line.decode("utf-8", "replace") for line in lines) + "\n")
            self.text.flush()
