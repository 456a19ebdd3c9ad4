"""Tests for moqrelay.transport.webtransport: WebTransport over HTTP/3.

Every test case runs on each QUIC stack: the classes here run on aioquic, and
their ``...Qh3Tests`` subclasses at the end of the module run the same tests on qh3.
"""

# mypy: disallow-untyped-calls=False
# (twisted.trial's assertion methods are not annotated.)

from __future__ import annotations

import gc
import weakref
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from moqrelay.transport.quic import QuicConnectError, QuicSessionBase, connect_quic
from moqrelay.transport.quicstack import QuicStack, load_quic_stack
from moqrelay.transport.webtransport import (
    BROWSER_SETTINGS,
    CLOSE_WEBTRANSPORT_SESSION,
    SETTINGS_ENABLE_CONNECT_PROTOCOL,
    SETTINGS_ENABLE_WEBTRANSPORT,
    SETTINGS_H3_DATAGRAM,
    SETTINGS_WT_MAX_SESSIONS,
    WebTransportApplication,
    encode_close_capsule,
    http3_code_to_webtransport,
    pull_capsules,
    quic_applications,
    webtransport_code_to_http3,
)
from tests.test_quic import (
    CHAIN,
    HandlerFactory,
    MemoryLink,
    RealSocketTestCase,
    reactor,
    session_of,
    until,
)


class CodecTests(SynchronousTestCase):
    def test_error_code_mapping_vectors(self) -> None:
        self.assertEqual(webtransport_code_to_http3(0), 0x52E4A40FA8DB)
        self.assertEqual(webtransport_code_to_http3(0xFF), 0x52E4A40FA9E2)
        self.assertEqual(webtransport_code_to_http3(0x1C), 0x52E4A40FA8F7)
        self.assertEqual(webtransport_code_to_http3(0x1D), 0x52E4A40FA8F8)
        self.assertEqual(webtransport_code_to_http3(0xFFFFFFFF), 0x52E5AC983162)

    def test_error_code_round_trip(self) -> None:
        for code in [*range(200), 0x1234, 0xFFFF, 0xFFFFFFFE, 0xFFFFFFFF]:
            self.assertEqual(http3_code_to_webtransport(webtransport_code_to_http3(code)), code)

    def test_error_codes_outside_the_range(self) -> None:
        self.assertIsNone(http3_code_to_webtransport(0x10C))
        self.assertIsNone(http3_code_to_webtransport(0x52E4A40FA8DB - 1))
        self.assertIsNone(http3_code_to_webtransport(0x52E5AC983162 + 1))
        # A reserved (GREASE) codepoint inside the range carries no code either.
        self.assertIsNone(http3_code_to_webtransport(0x52E4A40FA8DB + 0x1E))

    def test_close_capsule_bytes(self) -> None:
        capsule = encode_close_capsule(0x105, "bye")
        self.assertEqual(
            capsule, bytes.fromhex("6843") + b"\x07" + bytes.fromhex("00000105") + b"bye"
        )
        long_reason = encode_close_capsule(1, "é" * 1000)
        [(kind, value)] = pull_capsules(bytearray(long_reason))
        self.assertEqual(kind, CLOSE_WEBTRANSPORT_SESSION)
        self.assertEqual(len(value), 4 + 1024)

    def test_capsules_parsed_incrementally(self) -> None:
        stream = bytes.fromhex("40ff03616263") + encode_close_capsule(7, "done")  # unknown, close
        buffer = bytearray()
        found: list[tuple[int, bytes]] = []
        for byte in stream:
            buffer.append(byte)
            found += pull_capsules(buffer)
        self.assertEqual(found, [(0xFF, b"abc"), (0x2843, bytes.fromhex("00000007") + b"done")])
        self.assertEqual(buffer, bytearray())


class SettingsTests(SynchronousTestCase):
    stack_name = "aioquic"

    def test_settings_for_browsers(self) -> None:
        stack = load_quic_stack(self.stack_name)
        configuration = stack.client_configuration(
            alpn_protocols=["h3"],
            idle_timeout=30.0,
            max_datagram_frame_size=65536,
            connection_id_length=8,
            server_name="localhost",
            verify=False,
        )
        h3 = stack.h3_connection(stack.new_connection(configuration), BROWSER_SETTINGS)
        settings = h3.sent_settings
        assert settings is not None
        self.assertEqual(settings[SETTINGS_WT_MAX_SESSIONS], 1)
        self.assertEqual(settings[SETTINGS_ENABLE_WEBTRANSPORT], 1)
        self.assertEqual(settings[SETTINGS_H3_DATAGRAM], 1)
        self.assertEqual(settings[SETTINGS_ENABLE_CONNECT_PROTOCOL], 1)


class WebTransportEndToEndTests(RealSocketTestCase):
    applications = quic_applications()

    async def test_streams_both_ways(self) -> None:
        _server, factory, address = self.start_server()
        client = await self.connect(f"https://{address}/moq/room?token=1")
        session = client.session
        self.assertEqual(session.transport_name, "webtransport")
        self.assertEqual(session.path, "/moq/room?token=1")
        bidi = session.open_bidi_stream()
        recorder = client.track(bidi, True)
        payload = b"0123456789" * 30_000
        bidi.write(payload)
        bidi.finish()
        for index in range(3):
            uni = session.open_uni_stream()
            uni.write(b"wt-%d" % index)
            uni.finish()
        await until(
            lambda: recorder.fin and len(client.opened) == 3 and all(r.fin for r in client.opened)
        )
        self.assertEqual(bytes(recorder.data), payload)
        self.assertEqual(
            sorted(bytes(r.data) for r in client.opened),
            [b"echo:wt-0", b"echo:wt-1", b"echo:wt-2"],
        )
        [server_handler] = factory.handlers
        self.assertEqual(server_handler.session.transport_name, "webtransport")
        self.assertEqual(server_handler.session.path, "/moq/room?token=1")
        self.assertEqual(
            sorted((r.bidirectional, bytes(r.data)) for r in server_handler.opened),
            [(False, b"wt-0"), (False, b"wt-1"), (False, b"wt-2"), (True, payload)],
        )
        await until(lambda: session.queued_bytes() == 0)

    async def test_reset_and_stop_sending_codes(self) -> None:
        _server, factory, address = self.start_server(factory_options={"stop_code": 0x1234})
        client = await self.connect(f"https://{address}/")
        bidi = client.session.open_bidi_stream()
        recorder = client.track(bidi, True)
        bidi.write(b"please stop")
        await until(lambda: recorder.stops == [0x1234])
        uni = client.session.open_uni_stream()
        uni.write(b"abandoned")
        await until(lambda: len(factory.handlers[0].opened) == 2)
        uni.reset(0xFFFFFFF0)
        await until(lambda: factory.handlers[0].opened[1].resets == [0xFFFFFFF0])

    async def test_datagrams_both_ways(self) -> None:
        _server, factory, address = self.start_server()
        client = await self.connect(f"https://{address}/")
        self.assertTrue(client.session.supports_datagrams)
        client.session.send_datagram(b"y" * 4000)
        client.session.send_datagram(b"hello")
        await until(lambda: client.datagrams == [b"echo:hello"])
        self.assertEqual(factory.handlers[0].datagrams, [b"hello"])

    async def test_client_close_sends_capsule(self) -> None:
        server, factory, address = self.start_server()
        client = await self.connect(f"https://{address}/")
        await until(lambda: len(factory.handlers) == 1)
        client.session.close(5, "done")
        client.session.close(6, "twice")
        [server_handler] = factory.handlers
        await until(lambda: bool(server_handler.closed) and bool(client.closed))
        await until(lambda: server.connections == 0 and self._clients[0].transport is None)
        self.assertEqual(server_handler.closed, [(5, "done")])
        self.assertEqual(client.closed, [(5, "done")])

    async def test_server_close_reaches_client(self) -> None:
        server, factory, address = self.start_server()
        client = await self.connect(f"https://{address}/")
        await until(lambda: len(factory.handlers) == 1)
        factory.handlers[0].session.close(0x77, "server going away")
        await until(lambda: bool(client.closed) and server.connections == 0)
        self.assertEqual(client.closed, [(0x77, "server going away")])
        self.assertEqual(factory.handlers[0].closed, [(0x77, "server going away")])

    async def test_many_streams_then_close(self) -> None:
        _server, factory, address = self.start_server()
        client = await self.connect(f"https://{address}/")
        refs = []
        for _ in range(1000):
            stream = client.session.open_uni_stream()
            stream.write(b"q")
            refs.append(weakref.ref(stream))
        del stream
        await until(lambda: len(factory.handlers) == 1 and len(factory.handlers[0].opened) >= 50)
        server_handler = factory.handlers[0]
        refs += [weakref.ref(r.stream) for r in server_handler.opened]
        client.session.close(1, "enough")
        await until(lambda: bool(server_handler.closed) and bool(client.closed))
        self.assertEqual(session_of(client).stream_count(), 0)
        self.assertEqual(session_of(server_handler).stream_count(), 0)
        gc.collect()
        self.assertEqual([r for r in refs if r() is not None], [])

    async def test_fingerprint_pinning(self) -> None:
        _server, _factory, address = self.start_server()
        client = await self.connect(f"https://{address}/", fingerprint=CHAIN.fingerprint())
        self.assertEqual(client.session.transport_name, "webtransport")
        with self.assertRaises(QuicConnectError):
            await connect_quic(
                reactor,
                f"https://{address}/",
                HandlerFactory(),
                fingerprint="ab" * 32,
                applications=self.applications,
                stack=self.stack,
            )

    async def test_refused_connect(self) -> None:
        def refuse(app: WebTransportApplication, event: Any) -> None:
            app._answer(event.stream_id, b"403")

        self.patch(WebTransportApplication, "_request", refuse)
        _server, factory, address = self.start_server()
        with self.assertRaises(QuicConnectError) as caught:
            await connect_quic(
                reactor,
                f"https://{address}/",
                HandlerFactory(),
                verify=False,
                applications=self.applications,
                stack=self.stack,
            )
        self.assertIn("403", str(caught.exception))
        self.assertEqual(factory.handlers, [])


class RawH3Client:
    """A plain HTTP/3 client of the link's stack wired to a MemoryLink's server endpoint."""

    def __init__(self, link: MemoryLink) -> None:
        self.link = link
        self.stack: QuicStack = link.stack
        configuration = self.stack.client_configuration(
            alpn_protocols=["h3"],
            idle_timeout=30.0,
            max_datagram_frame_size=65536,
            connection_id_length=8,
            server_name="localhost",
            verify=False,
        )
        self.quic = self.stack.new_connection(configuration)
        self.h3: Any = None
        self.events: list[Any] = []
        self.quic.connect(link.server_udp.address, now=link.clock.seconds())
        self.pump()

    def pump(self) -> None:
        """Run both sides for 0.1 s of clock time (pacing and ACK delays need time)."""
        for _ in range(50):
            self.link.clock.advance(0.002)
            now = self.link.clock.seconds()
            timer = self.quic.get_timer()
            if timer is not None and timer <= now:
                self.quic.handle_timer(now=now)
            for datagram, _addr in self.quic.datagrams_to_send(now=now):
                self.link.server.datagramReceived(datagram, self.link.client_udp.address)
            self.link.clock.advance(0)
            incoming, self.link.server_udp.sent = self.link.server_udp.sent, []
            for datagram, _addr in incoming:
                self.quic.receive_datagram(datagram, self.link.server_udp.address, now=now)
            event = self.quic.next_event()
            while event is not None:
                if isinstance(event, self.stack.ProtocolNegotiated):
                    self.h3 = self.stack.h3_connection(self.quic, {})
                if self.h3 is not None:
                    self.events += self.h3.handle_event(event)
                event = self.quic.next_event()

    def request(self, headers: list[tuple[bytes, bytes]], end_stream: bool = False) -> int:
        assert self.h3 is not None
        stream_id: int = self.quic.get_next_available_stream_id()
        self.h3.send_headers(stream_id, headers, end_stream=end_stream)
        self.pump()
        return stream_id

    def status(self, stream_id: int) -> bytes:
        for event in self.events:
            if isinstance(event, self.stack.H3HeadersReceived) and event.stream_id == stream_id:
                status: bytes = dict(event.headers)[b":status"]
                return status
        return b""


def _connect_headers(protocol: bytes | None, path: bytes = b"/x") -> list[tuple[bytes, bytes]]:
    headers = [
        (b":method", b"CONNECT"),
        (b":scheme", b"https"),
        (b":authority", b"localhost"),
        (b":path", path),
    ]
    if protocol is not None:
        headers.append((b":protocol", protocol))
    return headers


class ServerRequestTests(SynchronousTestCase):
    stack_name = "aioquic"

    def setUp(self) -> None:
        self.link = MemoryLink(
            stack=load_quic_stack(self.stack_name), applications=quic_applications()
        )
        self.addCleanup(self.assertEqual, self.link.clock.getDelayedCalls(), [])
        self.addCleanup(self.link.shutdown)
        self.client = RawH3Client(self.link)
        self.assertIsNotNone(self.client.h3)

    def test_answers_by_request_kind(self) -> None:
        get = [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":authority", b"localhost"),
            (b":path", b"/"),
        ]
        self.assertEqual(self.client.status(self.client.request(get, end_stream=True)), b"404")
        websocket = self.client.request(_connect_headers(b"websocket"))
        self.assertEqual(self.client.status(websocket), b"501")
        plain = self.client.request([*_connect_headers(None)[:1], (b":authority", b"x")])
        self.assertEqual(self.client.status(plain), b"501")
        first = self.client.request(_connect_headers(b"webtransport", b"/any/path?q=1"))
        self.assertEqual(self.client.status(first), b"200")
        second = self.client.request(_connect_headers(b"webtransport"))
        self.assertEqual(self.client.status(second), b"429")
        [handler] = self.link.factory.handlers
        self.assertEqual(handler.session.path, "/any/path?q=1")
        self.assertIsInstance(handler.session, QuicSessionBase)

    def test_connect_stream_fin_closes_session(self) -> None:
        session_id = self.client.request(_connect_headers(b"webtransport"))
        assert self.client.h3 is not None
        self.client.h3.send_data(session_id, b"", end_stream=True)
        self.client.pump()
        [handler] = self.link.factory.handlers
        self.assertEqual(handler.closed, [(0, "")])
        self.link.run(1.0)
        self.assertEqual(handler.closed, [(0, "")])
        self.assertEqual(self.link.server.connections, 0)

    def test_connect_stream_reset_closes_session(self) -> None:
        session_id = self.client.request(_connect_headers(b"webtransport"))
        self.client.quic.reset_stream(session_id, 0x10C)
        self.client.pump()
        [handler] = self.link.factory.handlers
        self.assertEqual(len(handler.closed), 1)

    def test_close_capsule_from_peer(self) -> None:
        session_id = self.client.request(_connect_headers(b"webtransport"))
        assert self.client.h3 is not None
        capsule = encode_close_capsule(0x2A, "finished")
        self.client.h3.send_data(session_id, capsule[:3], end_stream=False)
        self.client.pump()
        [handler] = self.link.factory.handlers
        self.assertEqual(handler.closed, [])
        self.client.h3.send_data(session_id, capsule[3:], end_stream=False)
        self.client.pump()
        self.assertEqual(handler.closed, [(0x2A, "finished")])

    def test_datagram_for_unknown_session_ignored(self) -> None:
        session_id = self.client.request(_connect_headers(b"webtransport"))
        assert self.client.h3 is not None
        self.client.stack.h3_send_datagram(self.client.h3, session_id, b"for us")
        self.client.stack.h3_send_datagram(self.client.h3, session_id + 4, b"not for us")
        self.client.pump()
        [handler] = self.link.factory.handlers
        self.assertEqual(handler.datagrams, [b"for us"])


class SettingsQh3Tests(SettingsTests):
    stack_name = "qh3"


class WebTransportEndToEndQh3Tests(WebTransportEndToEndTests):
    stack_name = "qh3"


class ServerRequestQh3Tests(ServerRequestTests):
    stack_name = "qh3"
