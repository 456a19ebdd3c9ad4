"""Client layer: the moqrelay-pub and moqrelay-sub commands.

``moqrelay-pub`` announces a namespace and publishes a synthetic track (or
stdin) once the relay subscribes; ``moqrelay-sub`` subscribes and prints each
object or, with ``--count``, only counts them. Synthetic objects start with a
16-byte stamp (magic, sequence, send time) so the subscriber can report
per-object latency and detect loss.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall, react
from twisted.python.failure import Failure

from moqrelay.client.api import MoqtClient, ReceivedObject, TrackPublisher
from moqrelay.client.connect import connect
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


def _connect(reactor: Any, args: argparse.Namespace) -> Deferred[MoqtClient]:
    """The session the common options (_common) describe."""
    return connect(
        reactor,
        with_token(args.url, args.token),
        verify=not args.insecure,
        fingerprint=args.fingerprint,
    )


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

    async def main(reactor: Any) -> None:
        client = await _connect(reactor, args)
        await client.announce(args.namespace)
        track = client.offer_track(args.namespace, args.track.encode())
        print(
            f"announced {'/'.join(f.decode() for f in args.namespace)}; waiting for a subscriber",
            file=sys.stderr,
        )
        await track.subscribed
        print("subscribed; publishing", file=sys.stderr)
        await _publish(reactor, client, track, args)
        client.close()

    react(lambda reactor: Deferred.fromCoroutine(main(reactor)))


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

    def on_object(obj: ReceivedObject) -> None:
        stats.add(obj, time.time_ns())
        if not args.count:
            print(
                f"group {obj.group_id} object {obj.object_id} {len(obj.payload)} bytes", flush=True
            )

    async def main(reactor: Any) -> None:
        client = await _connect(reactor, args)
        filter_type = (
            c.FILTER_LARGEST_OBJECT if args.filter == "largest" else c.FILTER_NEXT_GROUP_START
        )
        sub = await client.subscribe(
            args.namespace, args.track.encode(), on_object, filter_type=filter_type
        )
        stop: Deferred[None] = Deferred()

        def finish(_: object = None) -> None:
            if not stop.called:
                stop.callback(None)

        def track_done(done: c.PublishDone | Failure) -> None:
            # Objects may trail PUBLISH_DONE on their streams: wait a moment.
            reactor.callLater(0.5, finish)

        sub.done.addBoth(track_done)
        client.closed.addBoth(finish)
        if args.duration > 0:
            timer = reactor.callLater(args.duration, finish)
            stop.addBoth(lambda _: timer.cancel() if timer.active() else None)
        await stop
        print(stats.summary(), file=sys.stderr if not args.count else sys.stdout)
        client.close()

    react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
