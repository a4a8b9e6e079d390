"""The reactor as each part of the edge needs it, as types.

Only control/service.py imports the global reactor; everything else is handed one. These
interfaces name what each part uses of it, the way treq types its reactor
(`_ITreqReactor`): an interface that inherits the reactor interfaces it needs. A plain
clock is `IReactorTime` (tests pass `twisted.internet.task.Clock`); the global reactor
provides all of these, and tests pass `MemoryReactorClock`.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorFDSet,
    IReactorFromThreads,
    IReactorPluggableNameResolver,
    IReactorProcess,
    IReactorSocket,
    IReactorTCP,
    IReactorTime,
)


class ITLSReactor(IReactorFDSet, IReactorTime, IReactorPluggableNameResolver):
    """The TLS transport's (edgenode.datapath.tlstransport): its own descriptors, time (an
    end is reported in a later turn), and the resolver for origins given by name."""


class IOriginReactor(IReactorTCP, ITLSReactor):
    """The origin pool's: TCP connects (plain HTTP), TLS connects, and time."""


class IEdgeReactor(
    IOriginReactor, IReactorCore, IReactorProcess, IReactorSocket, IReactorFromThreads
):
    """The services': start and stop, listeners (also adopted ones), worker processes,
    signals handed over from threads, and what the pool needs."""


def edge_reactor(reactor: object) -> IEdgeReactor:
    """The global reactor as the services use it (it provides every interface above)."""
    return cast(IEdgeReactor, reactor)
