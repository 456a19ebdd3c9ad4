"""Tests of the sink viewers' WebSocket code (bench/sinks.py): frame parsing split anywhere."""

from __future__ import annotations

import base64
import hashlib

from twisted.trial.unittest import SynchronousTestCase

from bench import sinks
from moqrelay.wire import control as c
from moqrelay.wire.polyfill import StreamFrame, decode_frame

SIZE = 4096


def frame(opcode: int, payload: bytes, *, fin: bool = True, long: bool = False) -> bytes:
    """An unmasked server frame; ``long`` forces the 64-bit length form."""
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    if long:
        head = bytes((first, 127)) + size.to_bytes(8, "big")
    elif size < 126:
        head = bytes((first, size))
    elif size < 0x10000:
        head = bytes((first, 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((first, 127)) + size.to_bytes(8, "big")
    return head + payload


def unmask(data: bytes) -> tuple[int, bytes]:
    """Opcode and payload of one masked client frame with a 7- or 16-bit length."""
    size = data[1] & 0x7F
    pos = 2
    if size == 126:
        size = int.from_bytes(data[2:4], "big")
        pos = 4
    key = data[pos : pos + 4]
    body = data[pos + 4 :]
    assert data[1] & 0x80 and len(body) == size
    return data[0] & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(body))


# A subgroup header, objects in each length form, a fragmented object with a ping between
# its fragments, text, empty and short messages, and a pong: 5 objects in all.
OBJECT = b"\x08\x03\x00\x40\x00" + bytes(range(256)) * (SIZE // 256)
SHORT = bytes(SIZE - 1)
STREAM = b"".join(
    (
        frame(sinks.OP_BINARY, b"\x08\x03\x14\x00"),
        frame(sinks.OP_BINARY, OBJECT),
        frame(sinks.OP_BINARY, OBJECT + b"x", long=True),
        frame(sinks.OP_PING, b"are you there"),
        frame(sinks.OP_TEXT, b"t" * SIZE),
        frame(sinks.OP_BINARY, OBJECT[:100], fin=False),
        frame(sinks.OP_PING, b""),
        frame(sinks.OP_CONTINUATION, OBJECT[100:2000], fin=False),
        frame(sinks.OP_CONTINUATION, OBJECT[2000:], fin=True),
        frame(sinks.OP_BINARY, b"half" + OBJECT),
        frame(sinks.OP_BINARY, b""),
        frame(sinks.OP_PONG, b"p"),
        frame(sinks.OP_BINARY, SHORT),
        frame(sinks.OP_BINARY, OBJECT),
    )
)
CONTROLS = [(sinks.OP_PING, b"are you there"), (sinks.OP_PING, b""), (sinks.OP_PONG, b"p")]
COLLECTED = [
    b"\x08\x03\x14\x00",
    OBJECT,
    OBJECT + b"x",
    b"t" * SIZE,
    OBJECT,
    b"half" + OBJECT,
    b"",
    SHORT,
    OBJECT,
]


class Recorder:
    def __init__(self, collect: bool) -> None:
        self.controls: list[tuple[int, bytes]] = []
        self.messages: list[bytes] = []
        self.reader = sinks.FrameReader(
            SIZE,
            lambda opcode, payload: self.controls.append((opcode, payload)),
            self.messages.append if collect else None,
        )


class FrameReaderTests(SynchronousTestCase):
    def test_split_at_every_byte_boundary(self) -> None:
        for split in range(len(STREAM) + 1):
            got = Recorder(collect=False)
            got.reader.feed(STREAM[:split])
            got.reader.feed(memoryview(STREAM)[split:])
            self.assertEqual((got.reader.objects, got.controls), (5, CONTROLS), split)

    def test_split_at_many_boundaries_while_collecting(self) -> None:
        for split in range(0, len(STREAM) + 1, 7):
            got = Recorder(collect=True)
            got.reader.feed(bytearray(STREAM[:split]))
            got.reader.feed(STREAM[split:])
            self.assertEqual(got.messages, COLLECTED, split)
            self.assertEqual(got.reader.objects, 5)

    def test_one_byte_at_a_time(self) -> None:
        got = Recorder(collect=True)
        for i in range(len(STREAM)):
            got.reader.feed(STREAM[i : i + 1])
        self.assertEqual((got.reader.objects, got.controls), (5, CONTROLS))
        self.assertEqual(got.messages, COLLECTED)

    def test_collecting_stops_when_switched_off(self) -> None:
        got = Recorder(collect=True)

        def first(payload: bytes) -> None:
            got.messages.append(payload)
            got.reader.collect = False

        got.reader = sinks.FrameReader(SIZE, lambda opcode, payload: None, first)
        got.reader.feed(STREAM)
        self.assertEqual((got.messages, got.reader.objects), ([b"\x08\x03\x14\x00"], 5))

    def test_a_large_frame(self) -> None:
        got = Recorder(collect=False)
        data = frame(sinks.OP_BINARY, bytes(70_000))
        for split in (1, 2, 5, 9, 10, 11, 40_000, len(data) - 1):
            got.reader.feed(data[:split])
            got.reader.feed(data[split:])
        self.assertEqual(got.reader.objects, 8)

    def test_protocol_errors(self) -> None:
        for bad in (
            bytes((0x82, 0x81)) + b"keyk" + b"x",  # masked
            bytes((0x09, 0)),  # fragmented ping
            frame(sinks.OP_PING, bytes(126)),  # oversized control frame
            frame(sinks.OP_CONTINUATION, b"x"),  # continuation of nothing
            frame(sinks.OP_BINARY, b"x", fin=False) + frame(sinks.OP_BINARY, b"y"),
        ):
            reader = sinks.FrameReader(SIZE, lambda opcode, payload: None)
            self.assertRaises(sinks.SinkError, reader.feed, bad)


class ClientFrameTests(SynchronousTestCase):
    def test_masked_frame(self) -> None:
        for size in (0, 5, 125, 126, 300):
            payload = bytes(range(256)) * 2
            data = sinks.masked_frame(sinks.OP_PONG, payload[:size], b"\x01\x02\x03\x04")
            self.assertEqual(unmask(data), (sinks.OP_PONG, payload[:size]))
            self.assertEqual(data[0], 0x80 | sinks.OP_PONG)

    def test_control_message_is_a_masked_stream_frame_on_stream_0(self) -> None:
        setup = c.ClientSetup([c.DRAFT_14], [(c.SETUP_MAX_REQUEST_ID, 201)])
        opcode, payload = unmask(sinks.control_message(setup))
        self.assertEqual(opcode, sinks.OP_BINARY)
        polyfill = decode_frame(payload)
        assert isinstance(polyfill, StreamFrame)
        self.assertEqual(polyfill.stream_id, 0)
        self.assertEqual(c.ControlStreamDecoder().feed(polyfill.data), [setup])

    def test_upgrade(self) -> None:
        key = b"dGhlIHNhbXBsZSBub25jZQ=="
        request = sinks.upgrade_request("/bench", 443, key, "webtransport")
        self.assertIn(b"Sec-WebSocket-Protocol: webtransport\r\n", request)
        self.assertTrue(request.startswith(b"GET /bench HTTP/1.1\r\n"))
        accept = base64.b64encode(hashlib.sha1(key + sinks.WS_GUID).digest())
        self.assertEqual(accept, b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        head = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: " + accept
        sinks.check_upgrade(
            head + b"\r\nSec-WebSocket-Protocol: webtransport", key, "webtransport"
        )
        sinks.check_upgrade(head, key, None)
        self.assertRaises(sinks.SinkError, sinks.check_upgrade, head, key, "webtransport")
        self.assertRaises(
            sinks.SinkError, sinks.check_upgrade, b"HTTP/1.1 400 Bad Request", key, None
        )
        self.assertRaises(
            sinks.SinkError, sinks.check_upgrade, head.replace(b"s3p", b"xxx"), key, None
        )
