"""`edgenode tail`: follow the access log (SPEC §6) and summarise it, live or once.

One module per layer, each usable alone:

- `follower.Follower` turns a file that is appended to, rotated (`mv` + a new file)
  and truncated into a stream of whole lines. It polls with `stat`, so it needs no
  inotify and works on any filesystem. A line is handed out only once its "\\n" has
  been written; a torn last line is held until it is completed.
- `summary.LogSummary` is the pure core: `add(record, now)` for each parsed record,
  `snapshot(now)` for plain data (counts, the https share, nearest-rank percentiles,
  origin failures, failed client TLS handshakes, the last errors). Every structure in
  it is bounded, so memory stays flat however long it runs; `summary.Rates` turns
  successive snapshots into requests/s and bytes/s.
- `filters` holds `--domain` and `--status`; `engine.Tail` feeds each line through
  them into the summary (or, for `--json`, a sink), and `engine.follow` is the poll loop.
- `view` renders: a `rich` live view refreshed every second, the static summary of
  `--once`, and the matching lines themselves for `--json`.
- `command` is the argparse subcommand that wires them together.

Nothing is imported here, so a caller that only follows a file does not load `rich`.
"""
