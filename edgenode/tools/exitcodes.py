"""The exit codes every `edgenode` subcommand returns (SPEC §6), defined once."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """What the process exit status tells a script; an int, so `sys.exit` takes it as is."""

    OK = 0
    FAILED = 1  # the thing checked failed: an invalid config, a rejected reload, a bad origin
    USAGE = 2  # usage error, or the target (a file, the admin API) could not be read or reached
