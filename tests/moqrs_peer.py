"""A publisher or subscriber built on moq-dev's library (PyPI ``moq-rs``, module ``moq``).

tests/test_interop_moqrs.py runs it as a subprocess against a relay on 127.0.0.1:

    python tests/moqrs_peer.py pub URL --broadcast test/ns --track t1 --groups 5 --frames 4
    python tests/moqrs_peer.py sub URL --broadcast test/ns --track t1 --groups 5

Each prints one line per step on stdout (``connected``, ``announced``, ``subscribed``,
``group G frames N intact``, ``done ...``) so that the test can tell how far it got;
errors go to stderr. The subscriber prints groups as they arrive; frame ``i`` of
group ``g`` carries ``b"g:i:"`` padded to ``--size`` bytes. With ``--wait-go`` the
publisher sends its first group only once a line arrives on stdin: the test sends it
when the subscriber has its SUBSCRIBE_OK, so that no group predates the subscription
(the relay's Largest Object filter would rightly leave such a group out). Everything
runs under ``--timeout``: the process always ends by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import timedelta

import moq


def payload(group: int, frame: int, size: int) -> bytes:
    head = f"{group}:{frame}:".encode()
    return head + b"\0" * max(0, size - len(head))


def say(text: str) -> None:
    print(text, flush=True)


def client(args: argparse.Namespace) -> moq.Client:
    # No reconnection: a refused session must end the process, not retry forever.
    return moq.connect(
        args.url,
        tls_verify=False,
        reconnect=False,
        websocket_enabled=args.websocket,
        websocket_delay=timedelta(0) if args.websocket else None,
    )


async def readable(fd: int) -> None:
    """Wait until ``fd`` has data (or is closed)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def publish(args: argparse.Namespace) -> None:
    async with client(args) as session:
        say("connected")
        broadcast = session.create_broadcast(args.broadcast)
        track = broadcast.publish_track(args.track)
        broadcast.announce()
        say("announced")
        await track.used()
        say("subscribed")
        if args.wait_go:
            await readable(sys.stdin.fileno())
        for group in range(args.groups):
            producer = track.append_group()
            for frame in range(args.frames):
                producer.write_frame(payload(group, frame, args.size))
            producer.finish()
            await asyncio.sleep(args.interval)
        track.finish()
        say(f"done {args.groups} groups")
        # Let the last group and the end of the track leave before the session closes.
        await asyncio.sleep(args.linger)


async def subscribe(args: argparse.Namespace) -> None:
    async with client(args) as session:
        say("connected")
        broadcast = await session.announced_broadcast(args.broadcast)
        say("announced")
        # With the default max age (0) moq skips a group as soon as a newer one arrives;
        # the test wants every group, so it tolerates groups up to --timeout old.
        subscription = moq.Subscription(max_age_us=int(args.timeout * 1e6))
        track = await broadcast.subscribe_track(args.track, subscription)
        say("subscribed")
        groups = 0
        while groups < args.groups:
            # Arrival order: next_group() would skip to the newest group when behind.
            group = await track.recv_group()
            if group is None:
                break
            frames = []
            while (frame := await group.read_frame()) is not None:
                frames.append(frame.payload)
            expected = [payload(group.sequence, i, args.size) for i in range(len(frames))]
            intact = "intact" if frames == expected else "corrupt"
            say(f"group {group.sequence} frames {len(frames)} {intact}")
            groups += 1
        track.cancel()
        say(f"done {groups} groups")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moqrs_peer", description=__doc__)
    p.add_argument("role", choices=["pub", "sub"])
    p.add_argument("url")
    p.add_argument("--broadcast", default="test/ns", help="broadcast path (the namespace)")
    p.add_argument("--track", default="t1")
    p.add_argument("--groups", type=int, default=5)
    p.add_argument("--frames", type=int, default=4, help="frames per group (publisher)")
    p.add_argument("--size", type=int, default=256, help="frame size in bytes")
    p.add_argument("--interval", type=float, default=0.05, help="seconds between groups")
    p.add_argument("--linger", type=float, default=1.0, help="seconds to wait at the end")
    p.add_argument("--timeout", type=float, default=20.0, help="give up after this long")
    p.add_argument(
        "--wait-go",
        action="store_true",
        help="publisher: once subscribed, send nothing until a line arrives on stdin",
    )
    p.add_argument("--log", help="moq's own log level on stderr (error, warn, info, debug)")
    p.add_argument(
        "--websocket",
        action="store_true",
        help="race the WebSocket fallback without a head start for QUIC",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    role = publish if args.role == "pub" else subscribe
    if args.log:
        moq.log_level(args.log)
    try:
        asyncio.run(asyncio.wait_for(role(args), args.timeout))
    except TimeoutError:
        print(f"moqrs_peer {args.role}: timed out after {args.timeout:g} s", file=sys.stderr)
        return 3
    except moq.Error as e:
        print(f"moqrs_peer {args.role}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
