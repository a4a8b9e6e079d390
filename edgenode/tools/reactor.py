"""Running the global reactor once, for one coroutine: how a command-line tool (probe,
push) does its network work and gets the result back, or its exception re-raised."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from twisted.internet import task
from twisted.python.failure import Failure

_T = TypeVar("_T")


def run_once(main: Callable[[Any], Coroutine[Any, Any, _T]], what: str) -> _T:
    """`await main(reactor)` on the global reactor, which stops afterwards. `task.react`
    always ends in SystemExit; the outcome is kept aside and returned (or raised) here."""
    outcome: list[_T | Failure] = []

    async def run(reactor: Any) -> None:
        try:
            outcome.append(await main(reactor))
        except Exception:
            outcome.append(Failure())

    with contextlib.suppress(SystemExit):
        task.react(run)
    if not outcome:  # pragma: no cover - react returns only after run finished
        raise RuntimeError(f"the {what} ended without a result")
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result
