"""Benchmark harness (outside the relay layers): cheap WebSocket viewers in their own process.

relay_bench.py's ``--sinks`` option starts this so that most viewers of a fan-out or
latency run cost the load process nothing and cost little CPU at all:

    PYTHONPATH=. python bench/sinks.py MODE PORT COUNT OBJECT_SIZE [--track NAME]

It opens COUNT WebSocket viewers to ``wss://127.0.0.1:PORT`` with nothing but the standard
library for I/O (``socket``, ``ssl`` over memory BIOs without verification, ``selectors``;
one thread, every socket non-blocking). MODE ``relay`` upgrades on ``/bench`` offering the
``webtransport`` subprotocol and does the MoQT draft-14 setup over the polyfill the way our
own client does (`moqrelay.client.api`, `moqrelay.session`): CLIENT_SETUP on stream 0 (the
client's first bidi stream), SERVER_SETUP, then SUBSCRIBE (request 0) to NAME in the bench
namespace with the Largest Object filter, and SUBSCRIBE_OK. MODE ``baseline`` upgrades on
``/view`` with no subprotocol, like `bench.baselines.connect_baseline`. Client frames are
masked. Once every viewer is set up it prints one JSON line ``{"ready": COUNT, "pid": PID}``.

After setup a viewer decodes only WebSocket frame headers (`FrameReader`) and skips the
payloads. It counts, as objects, the complete binary messages of at least OBJECT_SIZE
payload bytes. That is one per object on both servers, for objects up to the polyfill's
16,360-byte frame limit (checked against the full-decoding viewers: equal counts):

- the relay writes each object to a subgroup stream as one polyfill STREAM frame, that is
  one WebSocket message holding the frame type, the stream id, the object header and the
  payload; the subgroup header (its own small message when the stream opens), the FIN
  (``09 id``) and control messages are all far smaller than an object;
- the baseline forwards each published message as one message, the object itself.

A line ``open N`` on standard input opens N more viewers, and the same kind of line
``{"ready": TOTAL, "pid": PID}`` follows once they are all set up too (COUNT may be 0: the
harness interleaves the sinks' subscriptions with its probes'). A line ``count`` answers
with one line
``{"objects": N, "bytes": B, "closed": C, "t": T}``: objects counted so far over every
viewer, B = N x OBJECT_SIZE (every object of the bench workloads has exactly that size, so
this is the payload count a full-decoding viewer reports), C = viewers whose connection has
ended since setup, and T = ``time.monotonic()`` when counted (the clock is system-wide, so
the harness can rate the counts over the sink's own interval). WebSocket pings get a masked
pong; nothing else is ever sent after setup. ``quit`` or the end of standard input closes
every connection and exits.
"""

from __future__ import annotations

import argparse
import base64
import errno
import hashlib
import json
import os
import selectors
import socket
import ssl
import sys
import time
from collections.abc import Callable
from typing import cast

from moqrelay.wire import control as c
from moqrelay.wire.polyfill import (
    MAX_STREAM_FRAME_DATA,
    ApplicationCloseFrame,
    StreamFrame,
    decode_frame,
    encode_frame,
)

NAMESPACE = (b"bench", b"relay")
RELAY_PATH = "/bench"
BASELINE_PATH = "/view"
SUBPROTOCOL = "webtransport"
IMPLEMENTATION = b"moqrelay-bench-sink/0.1"
# What MoqtSession grants as a client: the server's ids are odd, window 100.
CLIENT_MAX_REQUEST_ID = 1 + 2 * 100
CONTROL_STREAM = 0
READ_SIZE = 256 * 1024
MAX_SETUPS_IN_FLIGHT = 50
SETUP_TIMEOUT = 60.0
MAX_RESPONSE_HEAD = 16 * 1024
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


class SinkError(Exception):
    """A viewer could not be set up, or the server broke the WebSocket protocol."""


# -- frames ----------------------------------------------------------------------


class FrameReader:
    """Incremental parser of a server's WebSocket frames that skips payloads.

    ``feed`` takes bytes split anywhere. Complete binary messages (unfragmented or not)
    of at least ``min_size`` payload bytes add one to ``objects``. Control frames go to
    ``on_control(opcode, payload)``. While ``collect`` is true (it starts true when
    ``on_message`` is given), every complete data message's payload also goes to
    ``on_message``; otherwise payloads are skipped without being copied. A masked frame,
    a fragmented or oversized control frame, or a broken fragment sequence raises
    `SinkError`.
    """

    __slots__ = (
        "_control_keep",
        "_fin",
        "_head",
        "_in_message",
        "_keep",
        "_left",
        "_message_binary",
        "_message_keep",
        "_message_size",
        "_min_size",
        "_on_control",
        "_on_message",
        "_opcode",
        "collect",
        "objects",
    )

    def __init__(
        self,
        min_size: int,
        on_control: Callable[[int, bytes], None],
        on_message: Callable[[bytes], None] | None = None,
    ) -> None:
        self._min_size = min_size
        self._on_control = on_control
        self._on_message = on_message
        self.collect = on_message is not None
        self.objects = 0
        self._head = b""
        self._left = 0
        self._opcode = 0
        self._fin = False
        self._keep: bytearray | None = None
        self._control_keep = bytearray()
        self._in_message = False
        self._message_binary = False
        self._message_size = 0
        self._message_keep: bytearray | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        end = len(data)
        pos = 0
        if self._head:
            head = self._head
            joined = head + bytes(data[:14])
            used = self._header(joined, 0, len(joined))
            if not used:
                # Incomplete even with 14 more bytes: all of ``data`` is in ``joined``.
                self._head = joined
                return
            self._head = b""
            pos = used - len(head)
        while pos < end:
            left = self._left
            if left:
                take = end - pos
                if take > left:
                    take = left
                if self._keep is not None:
                    self._keep += data[pos : pos + take]
                pos += take
                self._left = left - take
                if take == left:
                    self._frame_done()
                continue
            used = self._header(data, pos, end)
            if not used:
                self._head = bytes(data[pos:end])
                return
            pos += used

    def _header(self, buf: bytes | bytearray | memoryview, pos: int, end: int) -> int:
        """Parse the frame header at ``pos``: its length, or 0 if it is not all there."""
        avail = end - pos
        if avail < 2:
            return 0
        b0 = buf[pos]
        b1 = buf[pos + 1]
        if b1 & 0x80:
            raise SinkError("the server sent a masked frame")
        size = b1 & 0x7F
        used = 2
        if size == 126:
            if avail < 4:
                return 0
            size = (buf[pos + 2] << 8) | buf[pos + 3]
            used = 4
        elif size == 127:
            if avail < 10:
                return 0
            size = int.from_bytes(buf[pos + 2 : pos + 10], "big")
            used = 10
        opcode = b0 & 0x0F
        if opcode >= OP_CLOSE:
            if not b0 & 0x80 or size > 125:
                raise SinkError(f"bad control frame (opcode {opcode:#x}, {size} bytes)")
            self._control_keep = bytearray()
            self._keep = self._control_keep
        else:
            if opcode == OP_CONTINUATION:
                if not self._in_message:
                    raise SinkError("continuation frame outside a message")
            else:
                if self._in_message:
                    raise SinkError("new message inside a fragmented one")
                self._in_message = True
                self._message_binary = opcode == OP_BINARY
                self._message_size = 0
                self._message_keep = bytearray() if self.collect else None
            self._message_size += size
            self._keep = self._message_keep
        self._opcode = opcode
        self._fin = bool(b0 & 0x80)
        self._left = size
        if not size:
            self._frame_done()
        return used

    def _frame_done(self) -> None:
        if self._opcode >= OP_CLOSE:
            self._on_control(self._opcode, bytes(self._control_keep))
            return
        if not self._fin:
            return
        self._in_message = False
        if self._message_binary and self._message_size >= self._min_size:
            self.objects += 1
        keep, self._message_keep = self._message_keep, None
        if keep is not None and self._on_message is not None:
            self._on_message(bytes(keep))


def masked_frame(opcode: int, payload: bytes, key: bytes | None = None) -> bytes:
    """One final client frame (masked, as RFC 6455 requires of clients)."""
    key = os.urandom(4) if key is None else key
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, 0x80 | size))
    elif size < 0x10000:
        header = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    masked = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
    return header + key + masked


def upgrade_request(path: str, port: int, key: bytes, subprotocol: str | None) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key.decode()}",
        "Sec-WebSocket-Version: 13",
    ]
    if subprotocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def check_upgrade(head: bytes, key: bytes, subprotocol: str | None) -> None:
    """Raise `SinkError` unless ``head`` is a 101 answer to an upgrade sent with ``key``."""
    status, *header_lines = head.decode("latin-1").split("\r\n")
    if status.split(" ")[1:2] != ["101"]:
        raise SinkError(f"upgrade refused: {status!r}")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
    if headers.get("sec-websocket-accept") != accept:
        raise SinkError("wrong Sec-WebSocket-Accept")
    if subprotocol is not None and headers.get("sec-websocket-protocol") != subprotocol:
        raise SinkError(f"the server did not select the {subprotocol!r} subprotocol")


def control_message(msg: c.ControlMessage) -> bytes:
    """A control message on the control stream, as one masked polyfill STREAM message."""
    frame = encode_frame(StreamFrame(CONTROL_STREAM, c.encode_message(msg)))
    return masked_frame(OP_BINARY, frame)


# -- viewers ---------------------------------------------------------------------

_CONNECTING = 0
_TLS = 1
_UPGRADING = 2
_SETUP = 3
_SUBSCRIBING = 4
_STREAMING = 5
_CLOSED = 6


class _Viewer:
    """One WebSocket viewer: a non-blocking state machine driven by `Sinks`.

    TLS runs over memory BIOs (`ssl.SSLObject`), so that one ``recv`` of up to
    `READ_SIZE` bytes feeds many TLS records (OpenSSL reading a socket itself would make
    two system calls per record, and the relay writes one record per object).
    """

    def __init__(self, sinks: Sinks) -> None:
        self.sinks = sinks
        self.state = _CONNECTING
        self.out = bytearray()
        self.response = bytearray()
        self.key = base64.b64encode(os.urandom(16))
        relay = sinks.mode == "relay"
        self.decoder = c.ControlStreamDecoder()
        self.reader = FrameReader(
            sinks.object_size, self._control, self._setup_message if relay else None
        )
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = sinks.context.wrap_bio(self.incoming, self.outgoing)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = sock.connect_ex(("127.0.0.1", sinks.port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            raise SinkError(f"connect: {os.strerror(code)}")
        self.sock = sock
        self.fd = sock.fileno()
        self.events = selectors.EVENT_WRITE
        sinks.selector.register(self.fd, self.events, self)

    def handle(self, events: int) -> None:
        if self.state == _CONNECTING:
            code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise SinkError(f"connect: {os.strerror(code)}")
            self.state = _TLS
            self._handshake()
        elif events & selectors.EVENT_READ:
            self._read()
        self._flush()

    def close(self) -> None:
        if self.state == _CLOSED:
            return
        self.state = _CLOSED
        self.sinks.selector.unregister(self.fd)
        self.sock.close()

    def _lost(self, why: str) -> None:
        """The connection ended: fatal during setup, counted once streaming."""
        if self.state != _STREAMING:
            raise SinkError(f"{why} during setup")
        self.close()
        self.sinks.viewer_closed()

    # -- setup -------------------------------------------------------------------

    def _handshake(self) -> None:
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            return
        self.state = _UPGRADING
        mode = self.sinks.mode
        self.tls.write(
            upgrade_request(
                RELAY_PATH if mode == "relay" else BASELINE_PATH,
                self.sinks.port,
                self.key,
                SUBPROTOCOL if mode == "relay" else None,
            )
        )

    def _upgraded(self, data: memoryview) -> None:
        self.response += data
        end = self.response.find(b"\r\n\r\n")
        if end < 0:
            if len(self.response) > MAX_RESPONSE_HEAD:
                raise SinkError("the upgrade response head is too long")
            return
        relay = self.sinks.mode == "relay"
        check_upgrade(bytes(self.response[:end]), self.key, SUBPROTOCOL if relay else None)
        rest = bytes(self.response[end + 4 :])
        self.response = bytearray()
        if relay:
            self.state = _SETUP
            setup = c.ClientSetup(
                [c.DRAFT_14],
                [
                    (c.SETUP_MAX_REQUEST_ID, CLIENT_MAX_REQUEST_ID),
                    (c.SETUP_MOQT_IMPLEMENTATION, IMPLEMENTATION),
                ],
            )
            self.tls.write(control_message(setup))
        else:
            self._ready()
        if rest:
            self.reader.feed(rest)

    def _setup_message(self, payload: bytes) -> None:
        """A whole binary message before SUBSCRIBE_OK (relay mode): the MoQT setup."""
        frame = decode_frame(payload)
        if isinstance(frame, ApplicationCloseFrame):
            raise SinkError(f"the relay closed the session: {frame.reason!r} ({frame.code:#x})")
        if not isinstance(frame, StreamFrame) or frame.stream_id != CONTROL_STREAM:
            return
        for msg in self.decoder.feed(frame.data):
            if isinstance(msg, c.ServerSetup) and self.state == _SETUP:
                if msg.version != c.DRAFT_14:
                    raise SinkError(f"the relay chose version {msg.version:#x}")
                self.state = _SUBSCRIBING
                self.tls.write(
                    control_message(
                        c.Subscribe(
                            0,
                            NAMESPACE,
                            self.sinks.track,
                            128,
                            c.GROUP_ORDER_ASCENDING,
                            True,
                            c.FILTER_LARGEST_OBJECT,
                        )
                    )
                )
            elif isinstance(msg, c.SubscribeOk) and self.state == _SUBSCRIBING:
                self.reader.collect = False
                self._ready()
            elif isinstance(msg, c.SubscribeError):
                raise SinkError(f"SUBSCRIBE_ERROR {msg!r}")

    def _ready(self) -> None:
        self.state = _STREAMING
        self.sinks.viewer_ready()

    # -- I/O -----------------------------------------------------------------------

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            self.tls.write(masked_frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            if self.state != _STREAMING:
                raise SinkError(f"the server closed the WebSocket during setup: {payload!r}")
            self.close()
            self.sinks.viewer_closed()

    def _read(self) -> None:
        net = self.sinks.net
        plain = self.sinks.plain
        while self.state != _CLOSED:
            try:
                n = self.sock.recv_into(net)
            except BlockingIOError:
                return
            except OSError as e:
                self._lost(f"the connection failed ({e})")
                return
            if not n:
                self._lost("the server closed the connection")
                return
            self.incoming.write(net[:n])
            if self.state == _TLS:
                self._handshake()
            while self.state > _TLS and self.state != _CLOSED:
                try:
                    # With a buffer, read() returns a byte count.
                    got = cast(int, self.tls.read(READ_SIZE, plain))
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLError as e:
                    self._lost(f"TLS ended ({e})")
                    return
                if not got:
                    self._lost("TLS ended (close_notify)")
                    return
                if self.state == _UPGRADING:
                    self._upgraded(plain[:got])
                else:
                    self.reader.feed(plain[:got])
            if n < READ_SIZE:
                # Most likely all there was; the selector says if more came meanwhile.
                return

    def _flush(self) -> None:
        if self.state == _CLOSED:
            return
        if self.outgoing.pending:
            self.out += self.outgoing.read()
        while self.out:
            try:
                sent = self.sock.send(self.out)
            except BlockingIOError:
                break
            except OSError as e:
                self._lost(f"the connection failed ({e})")
                return
            del self.out[:sent]
        self._want(selectors.EVENT_READ | (selectors.EVENT_WRITE if self.out else 0))

    def _want(self, events: int) -> None:
        if events != self.events:
            self.events = events
            self.sinks.selector.modify(self.fd, events, self)


class Sinks:
    """COUNT viewers, the command channel on standard input, and the select loop."""

    def __init__(self, mode: str, port: int, count: int, object_size: int, track: bytes) -> None:
        self.mode = mode
        self.port = port
        self.count = count
        self.object_size = object_size
        self.track = track
        self.selector = selectors.DefaultSelector()
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.context.check_hostname = False
        self.context.verify_mode = ssl.CERT_NONE
        # Shared by every viewer: each one parses what it reads before the next one reads.
        self.net = memoryview(bytearray(READ_SIZE))
        self.plain = memoryview(bytearray(READ_SIZE))
        self.viewers: list[_Viewer] = []
        self.ready = 0
        self.closed = 0
        self.running = True
        self.commands = b""
        self.deadline = 0.0

    def viewer_ready(self) -> None:
        self.ready += 1
        if self.ready == self.count:
            write_line({"ready": self.count, "pid": os.getpid()})
        self._start_viewers()

    def _start_viewers(self) -> None:
        """Start viewers up to `count`, at most `MAX_SETUPS_IN_FLIGHT` setting up at once."""
        in_flight = len(self.viewers) - self.ready
        more = min(self.count - len(self.viewers), MAX_SETUPS_IN_FLIGHT - in_flight)
        for _ in range(more):
            self.viewers.append(_Viewer(self))

    def viewer_closed(self) -> None:
        self.closed += 1

    def counts(self) -> dict[str, float]:
        objects = sum(v.reader.objects for v in self.viewers)
        return {
            "objects": objects,
            "bytes": objects * self.object_size,
            "closed": self.closed,
            "t": time.monotonic(),
        }

    def run(self) -> None:
        stdin = sys.stdin.fileno()
        os.set_blocking(stdin, False)
        self.selector.register(stdin, selectors.EVENT_READ, None)
        self._start_viewers()
        if not self.count:
            write_line({"ready": 0, "pid": os.getpid()})
        self.deadline = time.monotonic() + SETUP_TIMEOUT
        try:
            while self.running:
                timeout = None
                if self.ready < self.count:
                    timeout = self.deadline - time.monotonic()
                    if timeout <= 0:
                        raise SinkError(f"only {self.ready} of {self.count} viewers set up")
                for key, events in self.selector.select(timeout):
                    if key.data is None:
                        self._command(stdin)
                    else:
                        key.data.handle(events)
        finally:
            for viewer in self.viewers:
                viewer.close()
            self.selector.close()

    def _command(self, stdin: int) -> None:
        try:
            data = os.read(stdin, 4096)
        except BlockingIOError:
            return
        if not data:
            self.running = False
            return
        self.commands += data
        *lines, self.commands = self.commands.split(b"\n")
        for line in lines:
            command = line.strip()
            if command == b"count":
                write_line(self.counts())
            elif command.startswith(b"open ") and int(command[5:]) > 0:
                self.count += int(command[5:])
                self.deadline = time.monotonic() + SETUP_TIMEOUT
                self._start_viewers()
            elif command == b"quit":
                self.running = False


def write_line(record: dict[str, float]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="sinks.py", description="Cheap WebSocket viewers for relay_bench.py --sinks."
    )
    p.add_argument("mode", choices=["relay", "baseline"])
    p.add_argument("port", type=int)
    p.add_argument("count", type=int)
    p.add_argument("object_size", type=int)
    p.add_argument("--track", default="video", help="relay mode: the track to subscribe to")
    args = p.parse_args(argv)
    if args.mode == "relay" and args.object_size > MAX_STREAM_FRAME_DATA:
        p.error(f"the relay splits objects over {MAX_STREAM_FRAME_DATA} bytes into several frames")
    sinks = Sinks(args.mode, args.port, args.count, args.object_size, args.track.encode())
    try:
        sinks.run()
    except SinkError as e:
        sys.stderr.write(f"sinks: {e}\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
