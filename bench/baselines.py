"""Benchmark harness (outside the relay layers): a minimal WebSocket fan-out to compare against.

The baseline is the least a relay must do on the WebSocket side: TLS, WebSocket
framing (Autobahn, the library the relay uses), and one ``sendMessage`` per
viewer for every binary message the publisher sends. There is no MoQT: no
control stream, no polyfill framing, no tracks, groups, caches or queues.
Backpressure is Twisted's own: each viewer's transport pauses the publisher's
reading while its buffer is full, so the baseline never loses a message.

Server process (started by relay_bench.py, stopped with SIGTERM):

    PYTHONPATH=. python bench/baselines.py

prints one JSON line ``{"tcp": port, "pid": pid}`` once listening on 127.0.0.1.
The client side (`connect_baseline`) is used by relay_bench.py in the load process.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any, cast

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IListeningPort, IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from moqrelay.tls import generate_dev_chain
from moqrelay.transport.websocket import client_tls_options
from moqrelay.web import tls_context_factory

_log = Logger()

PUBLISHER_PATH = "/pub"


# -- server --------------------------------------------------------------------


@implementer(IPushProducer)
class _ViewerBackpressure:
    """Registered on a viewer's transport: a full viewer pauses the publisher."""

    def __init__(self, hub: FanOutHub) -> None:
        self.hub = hub
        self.paused = False

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self.hub.viewer_paused()

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            self.hub.viewer_resumed()

    def stopProducing(self) -> None:
        self.resumeProducing()


class FanOutHub:
    """One publisher connection and the viewers its messages go to."""

    def __init__(self) -> None:
        self.publisher: FanOutServerProtocol | None = None
        self.viewers: dict[FanOutServerProtocol, None] = {}
        self.paused_viewers = 0

    def forward(self, payload: bytes) -> None:
        for viewer in self.viewers:
            viewer.sendMessage(payload, isBinary=True)

    def viewer_paused(self) -> None:
        self.paused_viewers += 1
        if self.paused_viewers == 1 and self.publisher is not None:
            cast(Any, self.publisher.transport).pauseProducing()

    def viewer_resumed(self) -> None:
        self.paused_viewers -= 1
        if self.paused_viewers == 0 and self.publisher is not None:
            cast(Any, self.publisher.transport).resumeProducing()


class FanOutServerProtocol(WebSocketServerProtocol):
    hub: FanOutHub

    def onConnect(self, request: Any) -> None:
        self.is_publisher = request.path == PUBLISHER_PATH

    def onOpen(self) -> None:
        if self.is_publisher:
            self.hub.publisher = self
        else:
            self.backpressure = _ViewerBackpressure(self.hub)
            cast(Any, self.transport).registerProducer(self.backpressure, True)
            self.hub.viewers[self] = None

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.is_publisher:
            self.hub.forward(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.hub.publisher is self:
            self.hub.publisher = None
        elif self in self.hub.viewers:
            del self.hub.viewers[self]
            self.backpressure.stopProducing()


def fanout_server_factory(reactor: Any) -> WebSocketServerFactory:
    factory = WebSocketServerFactory(reactor=reactor)
    factory.protocol = FanOutServerProtocol
    factory.noisy = False
    hub = FanOutHub()
    FanOutServerProtocol.hub = hub
    factory.setProtocolOptions(
        webStatus=False,
        utf8validateIncoming=False,
        maxFramePayloadSize=1 << 20,
        maxMessagePayloadSize=1 << 20,
        perMessageCompressionAccept=lambda offers: None,
    )
    return factory


def main() -> None:
    from twisted.internet import reactor as global_reactor

    reactor: Any = global_reactor
    chain = generate_dev_chain()
    endpoint = SSL4ServerEndpoint(reactor, 0, tls_context_factory([chain]), interface="127.0.0.1")

    def listening(port: IListeningPort) -> None:
        line = {"tcp": getattr(port.getHost(), "port", 0), "pid": os.getpid()}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    def failed(failure: Any) -> None:
        _log.failure("the baseline could not listen", failure)
        reactor.stop()

    endpoint.listen(fanout_server_factory(reactor)).addCallbacks(listening, failed)
    reactor.run()


# -- client (load side) --------------------------------------------------------


class BaselineClient(WebSocketClientProtocol):
    """A publisher or viewer connection; viewers hand each message to ``on_message``."""

    on_message: Callable[[bytes], None] | None = None
    opened: Deferred[BaselineClient]
    closed: Deferred[None]

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.on_message is not None:
            self.on_message(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"baseline connection failed: {reason}"))
        if not self.closed.called:
            self.closed.callback(None)

    def send(self, payload: bytes) -> None:
        self.sendMessage(payload, isBinary=True)

    def close(self) -> None:
        self.sendClose()


class _ClientFactory(WebSocketClientFactory):
    protocol = BaselineClient

    def __init__(self, url: str, reactor: Any, on_message: Callable[[bytes], None] | None):
        super().__init__(url, reactor=reactor)
        self.noisy = False
        self.on_message = on_message
        self.setProtocolOptions(
            utf8validateIncoming=False,
            maxFramePayloadSize=1 << 20,
            maxMessagePayloadSize=1 << 20,
        )
        self.opened: Deferred[BaselineClient] = Deferred()
        self.closed: Deferred[None] = Deferred()

    def buildProtocol(self, addr: Any) -> BaselineClient:
        protocol = cast(BaselineClient, super().buildProtocol(addr))
        protocol.on_message = self.on_message
        protocol.opened = self.opened
        protocol.closed = self.closed
        return protocol


async def connect_baseline(
    reactor: Any, port: int, *, publisher: bool, on_message: Callable[[bytes], None] | None = None
) -> BaselineClient:
    """An open wss:// connection to the baseline server on 127.0.0.1:``port``."""
    path = PUBLISHER_PATH if publisher else "/view"
    factory = _ClientFactory(f"wss://127.0.0.1:{port}{path}", reactor, on_message)
    endpoint = wrapClientTLS(
        client_tls_options("127.0.0.1", verify=False),
        TCP4ClientEndpoint(reactor, "127.0.0.1", port),
    )
    await endpoint.connect(factory)
    client: BaselineClient = await factory.opened
    return client


if __name__ == "__main__":
    main()
