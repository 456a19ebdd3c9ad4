"""Client layer: the moqrelay-pub and moqrelay-sub commands.

``moqrelay-pub`` announces a namespace and publishes a synthetic track (or
stdin) once the relay subscribes; ``moqrelay-sub`` subscribes and prints each
object or, with ``--count``, only counts them. Synthetic objects start with a
16-byte stamp (magic, sequence, send time) so the subscriber can report
per-object latency and detect loss.

An expected failure (a bad URL, a relay that cannot be reached, a session the
relay closes, say for a bad or expired token, a refused request) prints one
line, ``moqrelay-sub: refused: may not subscribe to live/a``, to stderr and
exits with status 1; a traceback means a bug. Bad arguments are argparse's
(usage, status 2). A closed stdout (``moqrelay-sub ... | head``) ends the
command quietly with status 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import struct
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import urlencode, urlsplit, urlunsplit

from twisted.internet import defer
from twisted.internet import error as neterror
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall, react
from twisted.python.failure import Failure

from moqrelay.client.api import (
    MoqtClient,
    ReceivedObject,
    RequestRejected,
    SessionLost,
    TrackPublisher,
)
from moqrelay.client.connect import connect
from moqrelay.transport.connect import SCHEMES
from moqrelay.transport.quic import QuicConnectError
from moqrelay.wire import control as c

STAMP = struct.Struct("!4sIQ")
MAGIC = b"MQRT"


def parse_namespace(text: str) -> tuple[bytes, ...]:
    """``live/demo`` -> ``(b"live", b"demo")``, as the JS and Rust clients map paths."""
    fields = tuple(part.encode() for part in text.strip("/").split("/") if part)
    if not fields:
        raise argparse.ArgumentTypeError("a namespace needs at least one field")
    return fields


def stamped_payload(sequence: int, size: int, now_ns: int) -> bytes:
    stamp = STAMP.pack(MAGIC, sequence & 0xFFFFFFFF, now_ns)
    return stamp + b"\0" * max(0, size - len(stamp))


def read_stamp(payload: bytes) -> tuple[int, int] | None:
    """(sequence, send time in ns) of a synthetic object, None for other payloads."""
    if len(payload) < STAMP.size or payload[:4] != MAGIC:
        return None
    _, sequence, sent = STAMP.unpack_from(payload)
    return sequence, sent


def with_token(url: str, token: str | None) -> str:
    """``url`` with ``?jwt=token`` added to its query (any existing query is kept)."""
    if not token:
        return url
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode({"jwt": token})) if q)
    return urlunsplit(parts._replace(query=query))


class ToolError(Exception):
    """An expected failure; its message is the one line the command prints."""


class StdoutClosed(Exception):
    """Whoever read standard output has gone (``... | head``): stop quietly."""


# What a failed connection attempt raises: refused, unreachable, timed out, TLS.
_CONNECT_ERRORS = (
    neterror.ConnectError,
    neterror.TimeoutError,
    defer.TimeoutError,
    OSError,
    QuicConnectError,
)


def redacted_url(url: str) -> str:
    """``url`` without its query and fragment (a ``?jwt=`` token must not be printed)."""
    return urlunsplit(urlsplit(url)._replace(query="", fragment=""))


def check_url(url: str) -> None:
    """ToolError unless ``url`` names a scheme we speak, a host and a valid port."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (urlsplit checks the port only when asked)
    except ValueError as e:
        raise ToolError(f"bad URL {redacted_url(url)!r}: {e}") from None
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise ToolError(
            f"bad URL {redacted_url(url)!r}: give {'|'.join(SCHEMES)}://host:port/path"
        )


def failure_line(error: BaseException) -> str | None:
    """The line an expected failure prints, None for a bug (which gets a traceback)."""
    if isinstance(error, ToolError):
        return str(error)
    if isinstance(error, RequestRejected):
        return f"refused: {error.reason}"
    if isinstance(error, SessionLost):
        return f"session closed: {error}"
    return None


def emit(line: str) -> None:
    """Print ``line`` on stdout at once; StdoutClosed if nobody reads it any more."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        raise StdoutClosed() from None


def run(prog: str, main: Callable[[Any], Coroutine[Any, Any, None]]) -> NoReturn:
    """Run ``main(reactor)`` under `react`, turning expected failures into one line."""

    async def guarded(reactor: Any) -> None:
        try:
            await main(reactor)
        except StdoutClosed:
            # Python flushes stdout at exit: point it at /dev/null so that the flush
            # cannot raise BrokenPipeError again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            raise SystemExit(0) from None
        except Exception as e:
            line = failure_line(e)
            if line is None:
                raise
            print(f"{prog}: {line}", file=sys.stderr)
            raise SystemExit(1) from None

    # aioquic warns of a failed handshake through the logging module, whose last-resort
    # handler would print a second line; the failure's own line says it all.
    logging.getLogger("quic").addHandler(logging.NullHandler())
    react(lambda reactor: Deferred.fromCoroutine(guarded(reactor)))
    raise AssertionError("react() returned")  # it always exits


async def _connect(reactor: Any, args: argparse.Namespace) -> MoqtClient:
    """The session the common options (_common) describe; ToolError if there is none."""
    check_url(args.url)
    try:
        return await connect(
            reactor,
            with_token(args.url, args.token),
            verify=not args.insecure,
            fingerprint=args.fingerprint,
        )
    except SessionLost as e:
        raise ToolError(f"session refused: {e}") from None
    except _CONNECT_ERRORS as e:
        raise ToolError(f"cannot connect to {redacted_url(args.url)}: {e}") from None


async def _closing(reactor: Any, client: MoqtClient, work: Coroutine[Any, Any, None]) -> None:
    """Run ``work``, then close the session, also on failure (waiting up to 1 s for it)."""
    try:
        await work
    finally:
        client.close()
        if not client.closed.called:
            gone: Deferred[None] = Deferred()
            timer = reactor.callLater(1.0, gone.callback, None)

            def closed(result: object) -> object:
                if timer.active():
                    timer.cancel()
                    gone.callback(None)
                return result

            client.closed.addBoth(closed)
            await gone


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "url", help="moqt://host:port/path, https://host:port/path, wss://... or ws://..."
    )
    parser.add_argument(
        "-N",
        "--namespace",
        type=parse_namespace,
        required=True,
        help="track namespace, fields separated by '/'",
    )
    parser.add_argument("-T", "--track", required=True, help="track name")
    parser.add_argument(
        "-k",
        "--insecure",
        action="store_true",
        help="skip certificate verification (development only)",
    )
    parser.add_argument("--fingerprint", help="pin the relay certificate's SHA-256 (hex)")
    parser.add_argument("--token", help="an access token (moqrelay-token), sent as ?jwt=")


# -- publisher ---------------------------------------------------------------


def pub_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moqrelay-pub", description="Publish a track.")
    _common(parser)
    parser.add_argument("-s", "--size", type=int, default=1024, help="object size in bytes")
    parser.add_argument(
        "-r",
        "--rate",
        type=float,
        default=30.0,
        help="objects per second (0: as fast as the session takes them)",
    )
    parser.add_argument("-g", "--group-size", type=int, default=30, help="objects per group")
    parser.add_argument("--groups", type=int, default=0, help="groups to send (0: forever)")
    parser.add_argument(
        "--stdin", action="store_true", help="publish standard input, one object per --size bytes"
    )
    return parser


@dataclass
class _PubState:
    sequence: int = 0
    group: int = 0
    object: int = 0


def _publish(
    reactor: Any, client: MoqtClient, track: TrackPublisher, args: argparse.Namespace
) -> Deferred[None]:
    finished: Deferred[None] = Deferred()
    state = _PubState()

    def next_payload() -> bytes | None:
        if args.stdin:
            chunk = sys.stdin.buffer.read(args.size)
            return chunk or None
        if args.groups and state.group >= args.groups:
            return None
        return stamped_payload(state.sequence, args.size, time.time_ns())

    def send_one() -> bool:
        payload = next_payload()
        if payload is None:
            track.end_subgroup(state.group)
            track.end()
            loop.stop()
            return False
        track.send_object(state.group, state.object, payload)
        state.sequence += 1
        state.object += 1
        if state.object >= args.group_size:
            track.end_subgroup(state.group)
            state.group += 1
            state.object = 0
        return True

    def tick() -> None:
        if args.rate > 0:
            send_one()
            return
        # As fast as possible: fill the session up to its queue bound each turn.
        transport = client.session.transport
        while transport.queued_bytes() < (1 << 20) and send_one():
            pass

    loop = LoopingCall(tick)
    loop.clock = reactor
    done = loop.start(1.0 / args.rate if args.rate > 0 else 0.001)

    def stopped(_: object) -> None:
        reactor.callLater(0.5, finished.callback, None)

    done.addCallback(stopped)
    return finished


def pub_main(argv: Sequence[str] | None = None) -> None:
    args = pub_parser().parse_args(argv)

    async def publish(reactor: Any, client: MoqtClient) -> None:
        await client.announce(args.namespace)
        track = client.offer_track(args.namespace, args.track.encode())
        print(
            f"announced {'/'.join(f.decode() for f in args.namespace)}; waiting for a subscriber",
            file=sys.stderr,
        )
        await track.subscribed
        print("subscribed; publishing", file=sys.stderr)
        await _publish(reactor, client, track, args)

    async def main(reactor: Any) -> None:
        client = await _connect(reactor, args)
        await _closing(reactor, client, publish(reactor, client))

    run("moqrelay-pub", main)


# -- subscriber --------------------------------------------------------------


def sub_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moqrelay-sub", description="Subscribe to a track.")
    _common(parser)
    parser.add_argument(
        "--count",
        action="store_true",
        help="print only a summary (objects, bytes, latency), not each object",
    )
    parser.add_argument(
        "-t",
        "--duration",
        type=float,
        default=0.0,
        help="stop after this many seconds (0: until the track ends)",
    )
    parser.add_argument("--filter", choices=["largest", "next-group"], default="largest")
    return parser


@dataclass
class SubStats:
    """What a subscriber saw; latencies in milliseconds."""

    objects: int = 0
    bytes: int = 0
    latencies: list[float] = field(default_factory=list)
    first_sequence: int | None = None
    last_sequence: int | None = None

    def add(self, obj: ReceivedObject, now_ns: int) -> None:
        self.objects += 1
        self.bytes += len(obj.payload)
        stamp = read_stamp(obj.payload)
        if stamp is not None:
            sequence, sent = stamp
            self.latencies.append((now_ns - sent) / 1e6)
            if self.first_sequence is None:
                self.first_sequence = sequence
            self.last_sequence = sequence

    def summary(self) -> str:
        text = f"{self.objects} objects, {self.bytes} bytes"
        if self.latencies:
            ordered = sorted(self.latencies)
            p50 = ordered[len(ordered) // 2]
            p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
            text += f", latency ms p50 {p50:.2f} p99 {p99:.2f} max {ordered[-1]:.2f}"
        if self.first_sequence is not None and self.last_sequence is not None:
            expected = self.last_sequence - self.first_sequence + 1
            text += f", {max(0, expected - len(self.latencies))} lost"
        return text


def sub_main(argv: Sequence[str] | None = None) -> None:
    args = sub_parser().parse_args(argv)
    stats = SubStats()

    async def watch(reactor: Any, client: MoqtClient) -> None:
        stop: Deferred[None] = Deferred()
        stdout_closed = False

        def finish(_: object = None) -> None:
            if not stop.called:
                stop.callback(None)

        def on_object(obj: ReceivedObject) -> None:
            nonlocal stdout_closed
            stats.add(obj, time.time_ns())
            if args.count or stdout_closed:
                return
            try:
                emit(f"group {obj.group_id} object {obj.object_id} {len(obj.payload)} bytes")
            except StdoutClosed:
                stdout_closed = True
                finish()

        filter_type = (
            c.FILTER_LARGEST_OBJECT if args.filter == "largest" else c.FILTER_NEXT_GROUP_START
        )
        sub = await client.subscribe(
            args.namespace, args.track.encode(), on_object, filter_type=filter_type
        )

        def track_done(done: c.PublishDone | Failure) -> None:
            # Objects may trail PUBLISH_DONE on their streams: wait a moment.
            reactor.callLater(0.5, finish)

        sub.done.addBoth(track_done)
        client.closed.addBoth(finish)
        if args.duration > 0:
            timer = reactor.callLater(args.duration, finish)
            stop.addBoth(lambda _: timer.cancel() if timer.active() else None)
        await stop
        if stdout_closed:
            raise StdoutClosed()
        if args.count:
            emit(stats.summary())
        else:
            print(stats.summary(), file=sys.stderr)

    async def main(reactor: Any) -> None:
        client = await _connect(reactor, args)
        await _closing(reactor, client, watch(reactor, client))

    run("moqrelay-sub", main)
