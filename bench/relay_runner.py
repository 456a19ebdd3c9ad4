"""Benchmark harness (outside the relay layers): one RelayService in its own process.

relay_bench.py starts this as the relay under test:

    PYTHONPATH=. python bench/relay_runner.py [--profile FILE] [--max-streams N] [--stock-reactor]
        [--no-gc-freeze]

It listens on ephemeral ports of 127.0.0.1 (UDP for QUIC and WebTransport, TCP
for WebSocket), prints one JSON line ``{"tcp": .., "udp": .., "stats": .., "pid": ..}``
on standard output once listening, and serves ``GET /stats`` on a side TCP port
(peers, tracks, subscriptions, open downstream streams, reaper work, queued
connection losses). The stats
endpoint lives here, not in the relay. SIGTERM or SIGINT stops the service
cleanly; with ``--profile`` the reactor loop runs under cProfile and the stats
are written to FILE at exit.
"""

from __future__ import annotations

import argparse
import cProfile
import ctypes
import gc
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from moqrelay.reactor import PacedEPollReactor
from moqrelay.reactor import install as install_paced_reactor
from moqrelay.relay.config import RelayConfig
from moqrelay.relay.hub import Relay
from moqrelay.service import RelayService, freeze_startup_objects
from moqrelay.session import SessionLimits
from moqrelay.tls import generate_dev_chain
from moqrelay.transport.quicstack import DEFAULT_STACK

_log = Logger()


def relay_stats(relay: Relay, reactor: Any) -> dict[str, int]:
    """A snapshot of what the relay holds, cheap enough to poll every few milliseconds."""
    subscriptions = 0
    streams = 0
    for peer in relay.peers:
        subscriptions += len(peer.subscriptions)
        for sub in peer.subscriptions.values():
            streams += len(sub.streams)
    return {
        "peers": len(relay.peers),
        "tracks": len(relay.tracks),
        "subscriptions": subscriptions,
        "streams": streams,
        "reaper_pending": relay.reaper.pending(),
        "reaped": relay.reaper.reaped,
        "losses_pending": reactor.pending_losses()
        if isinstance(reactor, PacedEPollReactor)
        else 0,
    }


class StatsResource(Resource):
    """``GET /stats``: `relay_stats` as JSON."""

    isLeaf = True

    def __init__(self, relay: Relay, reactor: Any) -> None:
        super().__init__()
        self.relay = relay
        self.reactor = reactor

    def render_GET(self, request: Request) -> bytes:
        """The stats; with ``?gc=1``, after a full garbage collection, with the RSS in KiB."""
        request.setHeader(b"content-type", b"application/json")
        stats = relay_stats(self.relay, self.reactor)
        if request.args.get(b"gc") == [b"1"]:
            gc.collect()
            _trim_heap()
            stats["rss_kib"] = _rss_kib()
        return json.dumps(stats).encode()


def _trim_heap() -> None:
    """Give free heap pages back to the OS (glibc), so that RSS shows what is live
    rather than the allocator's high-water mark."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.malloc_trim(0)


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def build_service(reactor: Any, max_streams: int, idle_timeout: float = 30.0) -> RelayService:
    """The relay under test: defaults everywhere, a fresh dev certificate, ephemeral ports."""
    return RelayService(
        reactor,
        bind=("127.0.0.1", 0),
        chains=[generate_dev_chain()],
        config=RelayConfig(),
        limits=SessionLimits(max_incoming_streams=max_streams),
        dev=True,
        idle_timeout=idle_timeout,
        quic_stack=os.environ.get("MOQRELAY_QUIC_STACK", DEFAULT_STACK),
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Run a relay for relay_bench.py.")
    parser.add_argument("--profile", help="write cProfile stats of the reactor loop here")
    parser.add_argument("--max-streams", type=int, default=10_000)
    parser.add_argument("--idle-timeout", type=float, default=30.0)
    parser.add_argument(
        "--stock-reactor",
        action="store_true",
        help="Twisted's own epoll reactor, not the paced one twistd moqrelay installs",
    )
    parser.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="leave the startup objects to the garbage collector (twistd moqrelay freezes them)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if not args.stock_reactor:
        install_paced_reactor()
    from twisted.internet import reactor as global_reactor

    reactor: Any = global_reactor
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    service = build_service(reactor, args.max_streams, args.idle_timeout)
    service.startService()
    stats_port = reactor.listenTCP(
        0, Site(StatsResource(service.relay, reactor)), interface="127.0.0.1"
    )

    async def announce() -> None:
        (tcp,) = await service.tcp_ports()
        line = {
            "tcp": tcp,
            "udp": service.udp_port(),
            "stats": stats_port.getHost().port,
            "pid": os.getpid(),
        }
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    def failed(failure: Any) -> None:
        _log.failure("the relay could not start", failure)
        reactor.stop()

    Deferred.fromCoroutine(announce()).addErrback(failed)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    if not args.no_gc_freeze:
        reactor.callWhenRunning(freeze_startup_objects)
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(reactor.run)
        profiler.dump_stats(args.profile)
    else:
        reactor.run()


if __name__ == "__main__":
    main()
