"""What the data path's protocols use of their transport, as one type.

Twisted types `Protocol.transport` as `ITransport | None`; the TCP and TLS transports the
edge runs on also abort, pause and resume, take producers and give their socket. This
is those interfaces together as a `typing.Protocol`, as treq types its reactor as the
intersection of the reactor interfaces it needs (`_ITreqReactor`).
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.interfaces import IAddress


class StreamTransport(Protocol):
    """ITCPTransport + IConsumer + IPushProducer + ISystemHandle, as used here."""

    disconnecting: bool

    def write(self, data: bytes) -> None: ...

    def loseConnection(self) -> None: ...

    def abortConnection(self) -> None: ...

    def getPeer(self) -> IAddress: ...

    def getHost(self) -> IAddress: ...

    def getHandle(self) -> Any: ...

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...

    def registerProducer(self, producer: Any, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...
