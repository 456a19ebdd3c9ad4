"""The transport contract (moqrelay.transport.interfaces), run against every transport.

`TransportContract` holds the tests; one subclass per transport builds a
connected (client, server) pair whose both ends report to a `ContractHandler`:
the in-memory fake on `task.Clock`, and WebSocket, raw QUIC and WebTransport on
real sockets on 127.0.0.1. Every side's writer sees the same events with the
same codes whatever carries them.
"""

# mypy: disallow-untyped-calls=False
# (twisted.trial's assertion methods are not annotated.)

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from moqrelay.testing import memory_session_pair
from moqrelay.transport.interfaces import (
    ISessionHandler,
    IStream,
    IStreamReceiver,
    ITransportSession,
)
from moqrelay.transport.quic import QuicEndpoint, QuicSessionBase, connect_quic
from moqrelay.transport.quicstack import load_quic_stack
from moqrelay.transport.websocket import WebSocketTransportFactory, connect_websocket
from moqrelay.transport.webtransport import quic_applications
from tests.helpers import settle
from tests.test_quic import CHAIN, RealSocketTestCase, reactor, until
from tests.test_websocket import Tracker, client_disconnected, listen, port_number

LOW_WATER = 16 * 1024
HIGH_WATER = 64 * 1024
BURST = 512 * 1024  # far above HIGH_WATER whatever a transport has sent already

Event = tuple[str, bytes | int | None]

if TYPE_CHECKING:
    _TestCase = RealSocketTestCase
else:
    _TestCase = object


@implementer(IStreamReceiver)
class StreamLog:
    """Every event of one stream, in order: ("data", bytes), ("fin", None), ("reset", code),
    ("stop_sending", code)."""

    def __init__(self, handler: ContractHandler, stream: IStream, bidirectional: bool) -> None:
        self.handler = handler
        self.stream = stream
        self.bidirectional = bidirectional
        self.events: list[Event] = []

    def stream_data(self, data: bytes, fin: bool) -> None:
        self.handler.check_open("stream_data")
        if data:
            self.events.append(("data", data))
        if fin:
            self.events.append(("fin", None))

    def stream_reset(self, code: int) -> None:
        self.handler.check_open("stream_reset")
        self.events.append(("reset", code))

    def stream_stop_sending(self, code: int) -> None:
        self.handler.check_open("stream_stop_sending")
        self.events.append(("stop_sending", code))

    @property
    def data(self) -> bytes:
        return b"".join(value for _, value in self.events if isinstance(value, bytes))

    @property
    def fin(self) -> bool:
        return ("fin", None) in self.events

    def kinds(self) -> list[str]:
        """The event kinds, consecutive data events merged into one."""
        kinds: list[str] = []
        for kind, _ in self.events:
            if not (kind == "data" and kinds and kinds[-1] == "data"):
                kinds.append(kind)
        return kinds


@implementer(ISessionHandler)
class ContractHandler:
    """Records what a transport reports on one side; flags any call after session_closed."""

    def __init__(self, session: ITransportSession) -> None:
        self.session = session
        self.opened: list[StreamLog] = []
        self.datagrams: list[bytes] = []
        self.closed: list[tuple[int, str]] = []
        self.after_close: list[str] = []

    def check_open(self, what: str) -> None:
        if self.closed:
            self.after_close.append(what)

    def own(self, stream: IStream, bidirectional: bool) -> StreamLog:
        """Listen to a stream this side opened."""
        log = StreamLog(self, stream, bidirectional)
        stream.set_receiver(log)
        return log

    def stream_opened(self, stream: IStream, bidirectional: bool) -> None:
        self.check_open("stream_opened")
        self.opened.append(self.own(stream, bidirectional))

    def datagram_received(self, data: bytes) -> None:
        self.check_open("datagram_received")
        self.datagrams.append(data)

    def session_closed(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))


class TransportContract(_TestCase):
    """The contract tests; a subclass (also a trial TestCase) supplies one transport.

    The server side of every pair has ``LOW_WATER`` and ``HIGH_WATER`` as its marks.
    """

    datagrams: ClassVar[bool] = True
    setup_carries_path: ClassVar[bool] = False

    async def pair(self) -> tuple[ContractHandler, ContractHandler]:
        """A connected (client, server) pair."""
        raise NotImplementedError

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Let the transport run until ``predicate()`` holds (bounded)."""
        raise NotImplementedError

    async def gone(self) -> None:
        """Let the transport run until both ends of every closed session are gone."""
        raise NotImplementedError

    async def closed_both(self, client: ContractHandler, server: ContractHandler) -> None:
        await self.until(lambda: bool(client.closed and server.closed))
        await self.gone()
        self.assertEqual(client.after_close + server.after_close, [])

    async def test_both_sides_provide_the_interface(self) -> None:
        client, server = await self.pair()
        for side, is_client in ((client, True), (server, False)):
            session = side.session
            self.assertTrue(verifyObject(ITransportSession, session))
            self.assertTrue(verifyObject(IStream, session.open_uni_stream()))
            self.assertEqual(session.is_client, is_client)
            self.assertEqual(session.setup_carries_path, self.setup_carries_path)
            self.assertIsInstance(session.authority, str)
            self.assertIsInstance(session.transport_name, str)
            self.assertIsInstance(session.peer, str)

    # -- streams ---------------------------------------------------------------------

    async def test_streams_open_both_ways(self) -> None:
        client, server = await self.pair()
        await self.open_both_kinds(client, server, server_bit=0)
        await self.open_both_kinds(server, client, server_bit=1)

    async def open_both_kinds(
        self, opener: ContractHandler, accepter: ContractHandler, server_bit: int
    ) -> None:
        bidi = opener.session.open_bidi_stream()
        uni = opener.session.open_uni_stream()
        self.assertEqual((bidi.stream_id & 3, uni.stream_id & 3), (server_bit, 2 | server_bit))
        reply = opener.own(bidi, True)
        bidi.write(b"bidi")
        uni.write(b"uni")
        uni.finish()
        await self.until(lambda: len(accepter.opened) == 2 and accepter.opened[1].fin)
        seen = {log.stream.stream_id: log for log in accepter.opened}
        self.assertEqual(sorted(seen), sorted([bidi.stream_id, uni.stream_id]))
        self.assertTrue(seen[bidi.stream_id].bidirectional)
        self.assertFalse(seen[uni.stream_id].bidirectional)
        self.assertEqual(seen[uni.stream_id].data, b"uni")
        seen[bidi.stream_id].stream.write(b"reply")
        seen[bidi.stream_id].stream.finish()
        await self.until(lambda: reply.fin)
        self.assertEqual(reply.events, [("data", b"reply"), ("fin", None)])

    async def test_all_data_then_one_fin(self) -> None:
        client, server = await self.pair()
        await self.data_then_fin(client, server)
        await self.data_then_fin(server, client)

    async def data_then_fin(self, writer: ContractHandler, reader: ContractHandler) -> None:
        chunks = [b"a", bytes(range(256)) * 400, b"last"]
        stream = writer.session.open_uni_stream()
        for chunk in chunks:
            stream.write(chunk)
        stream.finish()
        stream.write(b"after fin: dropped")
        stream.finish()
        await self.until(lambda: bool(reader.opened) and reader.opened[0].fin)
        [log] = reader.opened
        self.assertEqual(log.data, b"".join(chunks))
        self.assertEqual(log.kinds(), ["data", "fin"])
        reader.opened.clear()

    async def test_reset_reaches_the_reader_once_with_its_code(self) -> None:
        client, server = await self.pair()
        await self.reset_once(client, server, 0x42)
        await self.reset_once(server, client, 0xFFFF_FFF0)

    async def reset_once(
        self, writer: ContractHandler, reader: ContractHandler, code: int
    ) -> None:
        stream = writer.session.open_uni_stream()
        stream.write(b"partial")
        await self.until(lambda: bool(reader.opened) and bool(reader.opened[0].data))
        stream.reset(code)
        stream.reset(code + 1)
        stream.write(b"after reset: dropped")
        stream.finish()
        [log] = reader.opened
        await self.until(lambda: len(log.events) > 1)
        self.assertEqual(log.events, [("data", b"partial"), ("reset", code)])
        reader.opened.clear()

    async def test_stop_sending_reaches_the_writer_once_with_its_code(self) -> None:
        client, server = await self.pair()
        await self.stop_sending_once(client, server, 0x21, bidirectional=True)
        await self.stop_sending_once(server, client, 0x22, bidirectional=False)

    async def stop_sending_once(
        self, writer: ContractHandler, reader: ContractHandler, code: int, *, bidirectional: bool
    ) -> None:
        session = writer.session
        stream = session.open_bidi_stream() if bidirectional else session.open_uni_stream()
        mine = writer.own(stream, bidirectional)
        stream.write(b"first")
        await self.until(lambda: bool(reader.opened) and bool(reader.opened[0].data))
        [theirs] = reader.opened
        theirs.stream.stop_sending(code)
        await self.until(lambda: bool(mine.events))
        self.assertEqual(mine.events, [("stop_sending", code)])
        stream.write(b"after STOP_SENDING: dropped")
        stream.finish()
        # A later stream gets through: the session is unharmed.
        later = session.open_uni_stream()
        later.write(b"later")
        later.finish()
        await self.until(lambda: len(reader.opened) == 2 and reader.opened[1].fin)
        self.assertEqual(reader.opened[1].data, b"later")
        # The reader that asked to stop hears nothing more on that stream.
        self.assertEqual(theirs.events, [("data", b"first")])
        self.assertEqual(mine.events, [("stop_sending", code)])
        if bidirectional:
            # The other half is untouched: the reader can still answer on it.
            theirs.stream.write(b"reply")
            theirs.stream.finish()
            await self.until(lambda: mine.fin)
            self.assertEqual(mine.events[1:], [("data", b"reply"), ("fin", None)])
        reader.opened.clear()

    async def test_stop_sending_with_nothing_left_to_read_is_ignored(self) -> None:
        client, server = await self.pair()
        done = client.session.open_uni_stream()
        done_log = client.own(done, False)
        done.write(b"all of it")
        done.finish()
        await self.until(lambda: bool(server.opened) and server.opened[0].fin)
        server.opened[0].stream.stop_sending(0x23)  # after the FIN
        done.stop_sending(0x24)  # our own uni stream has no receive half
        later = client.session.open_uni_stream()
        later.write(b"later")
        later.finish()
        await self.until(lambda: len(server.opened) == 2 and server.opened[1].fin)
        self.assertEqual(done_log.events, [])
        self.assertEqual(server.opened[0].events, [("data", b"all of it"), ("fin", None)])
        self.assertEqual(server.opened[1].events, [("data", b"later"), ("fin", None)])

    # -- backpressure ----------------------------------------------------------------

    async def test_when_writable_fires_below_the_low_water_mark_never_inside_write(
        self,
    ) -> None:
        client, server = await self.pair()
        session = server.session
        self.assertTrue(session.when_writable().called)
        stream = session.open_uni_stream()
        stream.write(b"\0" * BURST)
        self.assertGreater(session.queued_bytes(), HIGH_WATER)
        waiter = session.when_writable()
        self.assertFalse(waiter.called)
        queued_when_fired: list[int] = []
        waiter.addCallback(lambda _: queued_when_fired.append(session.queued_bytes()))
        stream.write(b"\1" * 1000)
        stream.finish()
        self.assertFalse(waiter.called)
        await self.until(lambda: bool(queued_when_fired))
        self.assertLess(queued_when_fired[0], LOW_WATER)
        await self.until(lambda: bool(client.opened) and client.opened[0].fin)
        self.assertEqual(len(client.opened[0].data), BURST + 1000)

    async def test_pending_when_writable_never_fires_after_close(self) -> None:
        client, server = await self.pair()
        session = server.session
        session.open_uni_stream().write(b"\0" * BURST)
        waiter = session.when_writable()
        self.assertFalse(waiter.called)
        session.close(0x7, "closed while blocked")
        await self.closed_both(client, server)
        self.assertFalse(waiter.called)
        self.assertFalse(session.when_writable().called)

    # -- close -----------------------------------------------------------------------

    async def test_close_reported_once_on_both_sides_never_inside_close(self) -> None:
        for closing in ("client", "server"):
            client, server = await self.pair()
            closer = client if closing == "client" else server
            closer.session.open_uni_stream().write(b"in flight")
            closer.session.close(0x10, "bye " + closing)
            self.assertEqual(closer.closed, [])
            closer.session.close(0x11, "again")
            self.assertEqual(closer.closed, [])
            await self.closed_both(client, server)
            self.assertEqual(client.closed, [(0x10, "bye " + closing)])
            self.assertEqual(server.closed, [(0x10, "bye " + closing)])

    async def test_close_inside_stream_opened_ends_delivery_at_once(self) -> None:
        client, server = await self.pair()

        def close_on_open(stream: IStream, bidirectional: bool) -> None:
            server.opened.append(server.own(stream, bidirectional))
            server.session.close(0x9, "no streams here")

        server.stream_opened = close_on_open  # type: ignore[method-assign]
        stream = client.session.open_uni_stream()
        stream.write(b"first")
        stream.finish()
        await self.closed_both(client, server)
        self.assertEqual([log.events for log in server.opened], [[]])
        self.assertEqual(client.closed, [(0x9, "no streams here")])
        self.assertEqual(server.closed, [(0x9, "no streams here")])

    async def test_closed_session_drops_writes_and_opens(self) -> None:
        client, server = await self.pair()
        stream = client.session.open_uni_stream()
        client.session.close(0x1, "done")
        stream.write(b"dropped")
        stream.finish()
        stream.reset(3)
        late = client.session.open_uni_stream()
        late.write(b"dropped")
        late.finish()
        client.session.send_datagram(b"dropped")
        await self.closed_both(client, server)
        self.assertEqual(server.opened, [])
        self.assertEqual(server.datagrams, [])

    # -- datagrams -------------------------------------------------------------------

    async def test_datagrams_both_ways_where_supported_too_large_dropped(self) -> None:
        client, server = await self.pair()
        self.assertEqual(client.session.supports_datagrams, self.datagrams)
        self.assertEqual(server.session.supports_datagrams, self.datagrams)
        for side in (client, server):
            # Larger than any path carries in one packet: dropped, never queued or split.
            side.session.send_datagram(b"x" * 65536)
        client.session.send_datagram(b"ping")
        server.session.send_datagram(b"pong")
        if self.datagrams:
            await self.until(lambda: bool(client.datagrams and server.datagrams))
            self.assertEqual((client.datagrams, server.datagrams), ([b"pong"], [b"ping"]))
            return
        # Dropped: a stream sent after them arrives, and they never do.
        stream = client.session.open_uni_stream()
        stream.write(b"after")
        stream.finish()
        await self.until(lambda: bool(server.opened) and server.opened[0].fin)
        self.assertEqual((client.datagrams, server.datagrams), ([], []))


class MemoryContractTests(TransportContract, TestCase):
    """The in-memory fake (moqrelay.testing), driven by `task.Clock`."""

    def setUp(self) -> None:
        self.clock = Clock()

    async def pair(self) -> tuple[ContractHandler, ContractHandler]:
        handlers: list[ContractHandler] = []

        def factory(session: ITransportSession) -> ContractHandler:
            handlers.append(ContractHandler(session))
            return handlers[-1]

        memory_session_pair(
            self.clock, factory, factory, low_water=LOW_WATER, high_water=HIGH_WATER
        )
        server, client = handlers
        return client, server

    async def until(self, predicate: Callable[[], bool]) -> None:
        for _ in range(1000):
            if predicate():
                return
            settle(self.clock)
            self.clock.advance(0.01)
        raise AssertionError(f"never reached: {predicate}")

    async def gone(self) -> None:
        settle(self.clock)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class WebSocketContractTests(TransportContract, TestCase):
    """The WebSocket polyfill (Autobahn) over TCP on 127.0.0.1."""

    datagrams = False

    def setUp(self) -> None:
        self.servers: list[ContractHandler] = []
        self.clients: list[ContractHandler] = []
        self.client_lost: list[Deferred[None]] = []

        def server_factory(session: ITransportSession) -> ContractHandler:
            self.servers.append(ContractHandler(session))
            return self.servers[-1]

        factory = WebSocketTransportFactory(
            reactor, server_factory, low_water=LOW_WATER, high_water=HIGH_WATER
        )
        self.tracker = Tracker(factory)
        self.port: IListeningPort = listen(self.tracker)
        self.addCleanup(self.stop)

    async def pair(self) -> tuple[ContractHandler, ContractHandler]:
        def client_factory(session: ITransportSession) -> ContractHandler:
            self.clients.append(ContractHandler(session))
            self.client_lost.append(client_disconnected(session))
            return self.clients[-1]

        url = f"ws://127.0.0.1:{port_number(self.port)}/contract"
        await connect_websocket(reactor, url, client_factory)
        count = len(self.clients)
        await self.until(lambda: len(self.servers) == count)
        return self.clients[-1], self.servers[-1]

    async def until(self, predicate: Callable[[], bool]) -> None:
        await until(predicate, timeout=20.0)

    async def gone(self) -> None:
        await self.tracker.all_lost()
        await defer.gatherResults(self.client_lost)

    async def stop(self) -> None:
        for handler in self.clients:
            handler.session.close(0, "test over")
        await self.gone()
        await defer.maybeDeferred(self.port.stopListening)


class _QuicContract(TransportContract):
    """Raw QUIC and WebTransport: one `QuicEndpoint` on 127.0.0.1 serves both."""

    scheme = ""
    stack_name = "aioquic"

    def setUp(self) -> None:
        self.servers: list[ContractHandler] = []
        self.clients: list[ContractHandler] = []

        def server_factory(session: ITransportSession) -> ContractHandler:
            self.servers.append(ContractHandler(session))
            return self.servers[-1]

        self.endpoint = QuicEndpoint(
            reactor,
            chains=[CHAIN],
            handler_factory=server_factory,
            low_water=LOW_WATER,
            high_water=HIGH_WATER,
            applications=quic_applications(),
            stack=load_quic_stack(self.stack_name),
        )
        port: IListeningPort = reactor.listenUDP(0, self.endpoint, interface="127.0.0.1")
        self.addCleanup(self._stop_server, self.endpoint, port)
        self._clients: list[QuicEndpoint] = []
        self.addCleanup(self._stop_clients)
        self.url = f"{self.scheme}://127.0.0.1:{port_number(port)}/contract"

    async def pair(self) -> tuple[ContractHandler, ContractHandler]:
        def client_factory(session: ITransportSession) -> ContractHandler:
            self.clients.append(ContractHandler(session))
            return self.clients[-1]

        session = await connect_quic(
            reactor,
            self.url,
            client_factory,
            verify=False,
            applications=quic_applications(),
            stack=load_quic_stack(self.stack_name),
        )
        assert isinstance(session, QuicSessionBase)
        self._clients.append(session._connection.endpoint)
        count = len(self.clients)
        await self.until(lambda: len(self.servers) == count)
        return self.clients[-1], self.servers[-1]

    async def until(self, predicate: Callable[[], bool]) -> None:
        await until(predicate, timeout=20.0)

    async def gone(self) -> None:
        await self.until(
            lambda: (
                self.endpoint.connections == 0 and all(e.transport is None for e in self._clients)
            )
        )


class RawQuicContractTests(_QuicContract, RealSocketTestCase):
    scheme = "moqt"
    setup_carries_path = True


class WebTransportContractTests(_QuicContract, RealSocketTestCase):
    scheme = "https"


class RawQuicQh3ContractTests(RawQuicContractTests):
    stack_name = "qh3"


class WebTransportQh3ContractTests(WebTransportContractTests):
    stack_name = "qh3"
