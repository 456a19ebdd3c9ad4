"""Benchmark harness (outside the relay layers): the relay under load, over real sockets.

Run from the repository root:

    PYTHONPATH=. python bench/relay_bench.py WORKLOAD [--transport ws|quic|webtransport]
        [--viewers N] [--seconds S] [--runs R] [--baseline] [--profile] [--no-sinks]
        [--append-results]

WORKLOAD is one of:

- ``fanout``: one publisher to N viewers (default N = 1, 10, 100) of 4 KiB objects, 30 per
  group, published as fast as the relay takes them (the publisher keeps its session queue
  under 1 MiB); delivered objects/s and Mbit/s summed over viewers, the relay's CPU seconds
  per delivered GB. ``--baseline`` adds, side by side in every run, a minimal fan-out
  without MoQT (bench/baselines.py) driven the same way: over ws an Autobahn WebSocket
  fan-out, over quic a fan-out on the relay's own QUIC stack (aioquic under
  moqrelay.transport.quic); webtransport has no baseline. ``--profile`` runs the relay
  under cProfile once and prints its top 25 functions.
- ``latency``: a 5 Mbit/s track (30 groups/s of 4 objects of 5,208 bytes) to N = 100
  viewers; p50/p99/max publish-to-receipt latency from the stamp in each payload; the relay
  with and without its gc.freeze; ``--baseline`` adds the same track through the minimal
  WebSocket fan-out and, run by run, what the relay adds to its latency.
- ``memory``: relay RSS per idle subscribed viewer with 1,000 viewers.
- ``teardown``: 1,000 viewers holding 10 open subgroups each vanish at once; the time
  until the relay has reaped them (polled from the runner's ``GET /stats``) and the p99
  latency of 10 viewers that stay, during the teardown, against their quiet p99.
- ``peer``: aiomoqt's relay against ours, both driven by aiomoqt's pub_bench and
  sub_bench (needs $MOQRELAY_INTEROP_PYTHON, or .interop-venv in the repository).
- ``all``: every workload above with its defaults, fanout and latency with ``--baseline``.

The relay runs in its own process (bench/relay_runner.py, a fresh one for every
measurement, always stopped by its pid); publisher and viewers run in this process, except
teardown's leavers, which run in a third one (bench/leavers.py) so that their own teardown
does not land in the process that times the staying viewers.

Sinks (fanout and latency over ws, and the fanout baseline; ``--no-sinks`` turns them off):
of the N viewers, only one in five, at least 1 and at most 5, are "probes" in this process,
full MoQT (or Autobahn) viewers that give latency and loss and keep the publisher at most one
group ahead of them; the others are sinks, in a third process (bench/sinks.py) that parses
only WebSocket frame headers and counts the object messages; the probes subscribe spread
evenly among the sinks. With ``--no-sinks`` every viewer decodes everything in this
process, which then limits the fan-out and the latency more than the relay does (the
first relay results in bench/RESULTS.md were measured that way). Objects/s and Mbit/s add
the probes' counts to the sinks' over the same window; "sink CPU %" is the sink process's.

Relay CPU seconds come from /proc/PID/stat (utime + stime), RSS from /proc/PID/status.
Every figure is the median of --runs runs; every ratio is computed within one run,
then its median taken. ``--append-results`` appends a dated section to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import json
import os
import platform
import pstats
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any, TypeVar, cast
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from zope.interface import implementer

from bench.baselines import (
    BaselineClient,
    QuicBaselineClient,
    connect_baseline,
    connect_quic_baseline,
)
from moqrelay.client.api import MoqtClient, ReceivedObject, TrackPublisher
from moqrelay.client.connect import connect
from moqrelay.client.tools import read_stamp, stamped_payload
from moqrelay.session import SessionLimits
from moqrelay.transport.quicstack import STACK_NAMES

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"
NS = (b"bench", b"relay")
PULSE_NS = (b"bench", b"pulse")
SCHEMES = {"ws": "wss", "quic": "moqt", "webtransport": "https"}
OBJECT_SIZE = 4096
GROUP_SIZE = 30
LATENCY_GROUPS_PER_SECOND = 30
LATENCY_PER_GROUP = 4
LATENCY_SIZE = 5_000_000 // 8 // (LATENCY_GROUPS_PER_SECOND * LATENCY_PER_GROUP)
PUBLISHER_HIGH_WATER = 1 << 20
CONNECT_BATCH = 50
CLIENT_LIMITS = SessionLimits(max_incoming_streams=100_000)

T = TypeVar("T")
Figures = dict[str, float]


# -- the processes under test --------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` so far."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for pid {pid}")


@dataclass
class Target:
    """Where the relay (or baseline) under test listens, and its process id."""

    tcp_port: int
    udp_port: int
    pid: int
    stats_port: int | None = None

    def url(self, transport: str) -> str:
        scheme = SCHEMES[transport]
        port = self.tcp_port if transport == "ws" else self.udp_port
        return f"{scheme}://127.0.0.1:{port}/bench"


class Child:
    """A process this harness started; its output goes to a temporary log file.

    Every live child is also stopped at interpreter exit, should the harness be interrupted.
    """

    live: set[Child] = set()

    def __init__(
        self, argv: list[str], name: str, cwd: Path | None = None, stdin: bool = False
    ) -> None:
        self.name = name
        self.log: IO[bytes] = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=cwd or REPO,
            env=env,
        )
        Child.live.add(self)

    def tell(self, line: str) -> None:
        """Write one line to the child's standard input (started with ``stdin=True``)."""
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def wait_for(self, predicate: Callable[[str], T | None], timeout: float = 30.0) -> T:
        """Poll the output until ``predicate`` returns something (or the child dies)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = predicate(self.output())
            if found is not None:
                return found
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} did not start:\n{self.output()[-3000:]}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; always reaps the process."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        Child.live.discard(self)

    @classmethod
    def stop_all(cls) -> None:
        for child in list(cls.live):
            child.stop(timeout=5.0)


def _json_line(text: str) -> dict[str, int] | None:
    for line in text.splitlines():
        if line.startswith("{"):
            parsed: dict[str, int] = json.loads(line)
            return parsed
    return None


def start_relay(
    profile: str | None = None,
    max_streams: int = 10_000,
    idle_timeout: float = 30.0,
    stock_reactor: bool = False,
    gc_freeze: bool = True,
) -> tuple[Child, Target]:
    argv = [
        sys.executable,
        str(BENCH_DIR / "relay_runner.py"),
        "--max-streams",
        str(max_streams),
        "--idle-timeout",
        str(idle_timeout),
    ]
    if profile:
        argv += ["--profile", profile]
    if stock_reactor:
        argv.append("--stock-reactor")
    if not gc_freeze:
        argv.append("--no-gc-freeze")
    child = Child(argv, "relay")
    try:
        ports = child.wait_for(_json_line)
    except BaseException:
        child.stop()
        raise
    return child, Target(ports["tcp"], ports["udp"], ports["pid"], ports["stats"])


def start_baseline() -> tuple[Child, Target]:
    child = Child([sys.executable, str(BENCH_DIR / "baselines.py")], "baseline")
    try:
        ports = child.wait_for(_json_line)
    except BaseException:
        child.stop()
        raise
    return child, Target(ports["tcp"], ports["udp"], ports["pid"])


async def with_process(
    start: Callable[[], tuple[Child, Target]], work: Callable[[Target], Awaitable[T]]
) -> T:
    """Run ``work`` against a freshly started process, and stop that process whatever happens."""
    child, target = start()
    try:
        return await work(target)
    except BaseException:
        sys.stderr.write(f"{child.name} output (tail):\n{child.output()[-4000:]}\n")
        raise
    finally:
        child.stop()


# -- load side -------------------------------------------------------------------


def sleep(reactor: Any, seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


async def wait_until(
    reactor: Any, predicate: Callable[[], bool], timeout: float, step: float = 0.01
) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        await sleep(reactor, step)
    return True


PROBES = 5
"""With sinks: at most this many viewers stay in the load process as probes (one in five)."""


def split_viewers(viewers: int, sinks: bool) -> tuple[int, int]:
    """(probes in the load process, sinks in the sink process) for ``viewers`` viewers."""
    probes = min(PROBES, max(1, viewers // 5)) if sinks else viewers
    return probes, viewers - probes


class SinkProcess:
    """bench/sinks.py: ``count`` cheap WebSocket viewers in a process of their own."""

    def __init__(self, child: Child, count: int) -> None:
        self.child = child
        self.count = count
        self.pid = child.process.pid
        self.readies = 1
        self.asked = 0

    @classmethod
    async def start(cls, mode: str, port: int, count: int, object_size: int) -> SinkProcess:
        """Start ``count`` sinks (``mode`` "relay" or "baseline"); fires once all are set up."""
        argv = [sys.executable, str(BENCH_DIR / "sinks.py"), mode, str(port), str(count)]
        child = Child([*argv, str(object_size)], "sinks", stdin=True)
        try:
            await deferToThread(child.wait_for, _json_line, 90.0)
        except BaseException:
            child.stop()
            raise
        return cls(child, count)

    async def _line(self, reactor: Any, prefix: str, number: int, timeout: float) -> Figures:
        """The ``number``-th (from 1) line of output that starts with ``prefix``."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.child.output().splitlines() if line.startswith(prefix)]
            if len(lines) >= number:
                found: Figures = json.loads(lines[number - 1])
                return found
            if self.child.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the sinks did not answer:\n{self.child.output()[-3000:]}")
            await sleep(reactor, 0.001)

    async def open(self, reactor: Any, count: int) -> None:
        """Open ``count`` more sinks; fires once they are set up."""
        if count <= 0:
            return
        self.child.tell(f"open {count}")
        self.count += count
        self.readies += 1
        await self._line(reactor, '{"ready"', self.readies, 90.0)

    async def interleave(
        self, reactor: Any, probes: int, sinks: int, add_probe: Callable[[], Awaitable[object]]
    ) -> None:
        """Add ``probes`` probes (``add_probe`` adds one) and ``sinks`` more sinks, the probes
        spread evenly among the sinks. The relay (and the baseline) serve their viewers in
        subscription order: probes that all came first would time the best-served viewers."""
        opened = 0
        for i in range(probes):
            before = (2 * i + 1) * sinks // (2 * probes)
            await self.open(reactor, before - opened)
            opened = before
            await add_probe()
        await self.open(reactor, sinks - opened)

    def ask(self) -> None:
        """Ask for the counts; `answer` waits for them."""
        self.child.tell("count")
        self.asked += 1

    async def answer(self, reactor: Any) -> Figures:
        """The answer to the last `ask`: objects, bytes, closed viewers, its monotonic time."""
        return await self._line(reactor, '{"objects"', self.asked, 10.0)

    async def counts(self, reactor: Any) -> Figures:
        self.ask()
        return await self.answer(reactor)

    async def stop(self, reactor: Any) -> None:
        """``quit``, a few seconds to close every connection, then `Child.stop`."""
        if self.child.process.poll() is None:
            try:
                self.child.tell("quit")
            except OSError:
                pass
            else:
                await wait_until(
                    reactor, lambda: self.child.process.poll() is not None, timeout=5.0
                )
        self.child.stop()


async def probes_and_sinks(
    reactor: Any,
    mode: str,
    port: int,
    probes: int,
    sunk: int,
    object_size: int,
    add_probes: Callable[[int], Awaitable[object]],
) -> SinkProcess | None:
    """Add ``probes`` probes (``add_probes(n)`` adds n) and, in a sink process, ``sunk``
    sinks, the probes spread evenly among the sinks (see `SinkProcess.interleave`)."""
    if not sunk:
        await add_probes(probes)
        return None
    sink = await SinkProcess.start(mode, port, 0, object_size)
    try:
        await sink.interleave(reactor, probes, sunk, lambda: add_probes(1))
    except BaseException:
        await sink.stop(reactor)
        raise
    return sink


class Viewer:
    """A subscription's object callback: counts, and records latencies while ``recording``."""

    def __init__(self) -> None:
        self.objects = 0
        self.bytes = 0
        self.recording = False
        self.latencies: list[float] = []
        self.first_sequence: int | None = None
        self.last_sequence = -1

    def __call__(self, obj: ReceivedObject) -> None:
        self.received(obj.payload)

    def received(self, payload: bytes) -> None:
        self.objects += 1
        self.bytes += len(payload)
        if self.recording:
            stamp = read_stamp(payload)
            if stamp is not None:
                sequence, sent = stamp
                self.latencies.append((time.time_ns() - sent) / 1e6)
                if self.first_sequence is None:
                    self.first_sequence = sequence
                self.last_sequence = max(self.last_sequence, sequence)

    def lost(self) -> int:
        """Objects missing between the first and last stamped ones seen while recording."""
        if self.first_sequence is None:
            return 0
        return max(0, self.last_sequence - self.first_sequence + 1 - len(self.latencies))


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


class MoqtSink:
    """Publishes through a TrackPublisher; blocked while the session queue is over 1 MiB."""

    def __init__(self, client: MoqtClient, track: TrackPublisher) -> None:
        self.client = client
        self.track = track

    def blocked(self) -> bool:
        return bool(self.client.session.transport.queued_bytes() >= PUBLISHER_HIGH_WATER)

    def when_unblocked(self) -> Deferred[None]:
        d: Deferred[None] = self.client.session.transport.when_writable()
        return d

    def send(self, group: int, obj: int, payload: bytes, last: bool) -> None:
        self.track.send_object(group, obj, payload)
        if last:
            self.track.end_subgroup(group)


@implementer(IPushProducer)
class BaselineSink:
    """Publishes WebSocket messages; blocked while the TCP transport has paused us."""

    def __init__(self, client: BaselineClient) -> None:
        self.client = client
        self.paused = False
        self.waiters: list[Deferred[None]] = []
        cast(Any, client.transport).registerProducer(self, True)

    def blocked(self) -> bool:
        return self.paused

    def when_unblocked(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.waiters.append(d)
        return d

    def send(self, group: int, obj: int, payload: bytes, last: bool) -> None:
        self.client.send(payload)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        waiters, self.waiters = self.waiters, []
        for d in waiters:
            d.callback(None)

    def stopProducing(self) -> None:
        self.resumeProducing()


class QuicBaselineSink:
    """Publishes on the QUIC baseline; blocked while the session queue is over 1 MiB."""

    def __init__(self, client: QuicBaselineClient) -> None:
        self.client = client

    def blocked(self) -> bool:
        return bool(self.client.session.queued_bytes() >= PUBLISHER_HIGH_WATER)

    def when_unblocked(self) -> Deferred[None]:
        d: Deferred[None] = self.client.session.when_writable()
        return d

    def send(self, group: int, obj: int, payload: bytes, last: bool) -> None:
        self.client.send(payload)


Sink = MoqtSink | BaselineSink | QuicBaselineSink


class Pump:
    """Publishes stamped objects as fast as the sink takes them (at most ``burst`` a turn).

    With ``viewers``, it also stays at most ``window`` objects ahead of the slowest one:
    publisher and viewers share this process, and a publisher that outran them would only
    measure the relay's slow-viewer policy (skipped groups, then TOO_FAR_BEHIND).
    """

    def __init__(
        self,
        reactor: Any,
        sink: Sink,
        size: int,
        per_group: int,
        *,
        viewers: list[Viewer] | None = None,
        window: int = GROUP_SIZE,
        limit: int | None = None,
        burst: int = 64,
    ) -> None:
        self.reactor = reactor
        self.sink = sink
        self.size = size
        self.per_group = per_group
        self.viewers = viewers or []
        self.window = window
        self.limit = limit
        self.burst = burst
        self.sent = 0
        self.running = False
        self._floor = 0
        self._call: Any = None

    def _window_full(self) -> bool:
        if not self.viewers or self.sent - self._floor < self.window:
            return False
        self._floor = min(v.objects for v in self.viewers)
        return self.sent - self._floor >= self.window

    def start(self) -> None:
        self.running = True
        self._schedule()

    def stop(self) -> None:
        self.running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self, _: object = None) -> None:
        if self.running and self._call is None:
            self._call = self.reactor.callLater(0, self._run)

    def _run(self) -> None:
        self._call = None
        for _ in range(self.burst):
            if not self.running:
                return
            if self.limit is not None and self.sent >= self.limit:
                self.running = False
                return
            if self.sink.blocked():
                self.sink.when_unblocked().addCallback(self._schedule)
                return
            if self._window_full():
                self._call = self.reactor.callLater(0.001, self._run)
                return
            group, obj = divmod(self.sent, self.per_group)
            payload = stamped_payload(self.sent, self.size, time.time_ns())
            last = obj == self.per_group - 1
            self.sink.send(group, obj, payload, last)
            self.sent += 1
        self._schedule()


class Pacer:
    """Publishes a group of ``per_group`` stamped objects ``groups_per_second`` times a second
    through ``sink`` (a relay track or a baseline publisher)."""

    def __init__(
        self,
        reactor: Any,
        sink: Sink,
        groups_per_second: float,
        per_group: int,
        size: int,
    ) -> None:
        self.sink = sink
        self.per_group = per_group
        self.size = size
        self.group = 0
        self.sent = 0
        self.loop = LoopingCall(self._tick)
        self.loop.clock = reactor
        self.interval = 1.0 / groups_per_second

    def start(self) -> None:
        self.loop.start(self.interval, now=True)

    def stop(self) -> None:
        if self.loop.running:
            self.loop.stop()

    def _tick(self) -> None:
        last = self.per_group - 1
        for obj in range(self.per_group):
            payload = stamped_payload(self.sent, self.size, time.time_ns())
            self.sink.send(self.group, obj, payload, obj == last)
            self.sent += 1
        self.group += 1


async def open_clients(reactor: Any, url: str, count: int) -> list[MoqtClient]:
    """``count`` MoQT sessions to ``url``, set up ``CONNECT_BATCH`` at a time."""
    clients: list[MoqtClient] = []
    while len(clients) < count:
        batch = min(CONNECT_BATCH, count - len(clients))
        attempts = [
            connect(reactor, url, verify=False, timeout=30.0, limits=CLIENT_LIMITS)
            for _ in range(batch)
        ]
        clients += await gatherResults(attempts, consumeErrors=True)
    return clients


async def subscribe_all(
    clients: list[MoqtClient],
    viewers: list[Viewer],
    name: bytes = b"video",
    namespace: tuple[bytes, ...] = NS,
) -> None:
    for start in range(0, len(clients), CONNECT_BATCH):
        pairs = zip(
            clients[start : start + CONNECT_BATCH],
            viewers[start : start + CONNECT_BATCH],
            strict=True,
        )
        await gatherResults(
            [client.subscribe(namespace, name, viewer) for client, viewer in pairs],
            consumeErrors=True,
        )


class Closable(TypingProtocol):
    """A client session of the harness: ours (`MoqtClient`) or a baseline's."""

    @property
    def closed(self) -> Deferred[Any]: ...

    def close(self) -> None: ...


async def close_clients(reactor: Any, clients: Sequence[Closable]) -> None:
    """Close every client not closed yet, and wait (10 s at most) until all are."""
    for client in clients:
        if not client.closed.called:
            client.close()
    await wait_until(reactor, lambda: all(c.closed.called for c in clients), timeout=10.0)


async def watchers(
    reactor: Any,
    url: str,
    count: int,
    clients: list[MoqtClient],
    name: bytes = b"video",
    namespace: tuple[bytes, ...] = NS,
) -> list[Viewer]:
    """``count`` new sessions subscribed to one track; the sessions join ``clients``."""
    sessions = await open_clients(reactor, url, count)
    clients += sessions
    counters = [Viewer() for _ in sessions]
    await subscribe_all(sessions, counters, name, namespace)
    return counters


async def publisher(
    reactor: Any, url: str, *names: bytes, namespace: tuple[bytes, ...] = NS
) -> tuple[MoqtClient, list[TrackPublisher]]:
    (client,) = await open_clients(reactor, url, 1)
    await client.announce(namespace)
    return client, [client.offer_track(namespace, name) for name in names]


class Window:
    """CPU, delivery and time measured between ``open()`` and ``close()``.

    With ``sinks``, their objects count too: their objects/s over the interval between
    their own two counts, added to the probes' (``viewers``) over this process's interval.
    """

    def __init__(self, pid: int, viewers: list[Viewer], sinks: SinkProcess | None = None) -> None:
        self.pid = pid
        self.viewers = viewers
        self.sinks = sinks

    def _snapshot(self) -> tuple[float, float, float, int, int, float]:
        return (
            time.monotonic(),
            cpu_seconds(self.pid),
            time.process_time(),
            sum(v.objects for v in self.viewers),
            sum(v.bytes for v in self.viewers),
            0.0 if self.sinks is None else cpu_seconds(self.sinks.pid),
        )

    async def _take(
        self, reactor: Any
    ) -> tuple[tuple[float, float, float, int, int, float], Figures]:
        if self.sinks is None:
            return self._snapshot(), {}
        self.sinks.ask()
        snapshot = self._snapshot()
        return snapshot, await self.sinks.answer(reactor)

    async def open(self, reactor: Any) -> None:
        self.start = await self._take(reactor)

    async def close(self, reactor: Any) -> Figures:
        end, sunk_end = await self._take(reactor)
        start, sunk_start = self.start
        wall, cpu, load_cpu, objects, nbytes, sink_cpu = (
            b - a for a, b in zip(start, end, strict=True)
        )
        obj_s = objects / wall
        bytes_s = nbytes / wall
        if self.sinks is not None:
            if sunk_end["closed"]:
                raise RuntimeError(f"{sunk_end['closed']:.0f} sinks lost their connection")
            sink_wall = sunk_end["t"] - sunk_start["t"]
            obj_s += (sunk_end["objects"] - sunk_start["objects"]) / sink_wall
            bytes_s += (sunk_end["bytes"] - sunk_start["bytes"]) / sink_wall
        figures = {
            "obj_s": obj_s,
            "mbit_s": bytes_s * 8 / 1e6,
            "cpu_per_gb": cpu / (bytes_s * wall / 1e9) if bytes_s else float("nan"),
            "relay_cpu": 100 * cpu / wall,
            "load_cpu": 100 * load_cpu / wall,
        }
        if self.sinks is not None:
            figures["sink_cpu"] = 100 * sink_cpu / wall
        return figures


async def drain(
    reactor: Any, viewers: list[Viewer], expected: int, sinks: SinkProcess | None = None
) -> int:
    """Wait until every viewer (and sink) has ``expected`` objects or delivery stalls for
    0.5 s; return how many objects they all have."""
    deadline = time.monotonic() + 10.0
    everyone = len(viewers) + (0 if sinks is None else sinks.count)
    last = -1
    while True:
        total = sum(v.objects for v in viewers)
        if sinks is not None:
            total += int((await sinks.counts(reactor))["objects"])
        if total >= expected * everyone or total == last or time.monotonic() >= deadline:
            return total
        last = total
        await sleep(reactor, 0.5)


# -- workloads (one run each) ----------------------------------------------------


async def relay_audience(
    reactor: Any,
    target: Target,
    transport: str,
    viewers: int,
    sinks: bool,
    size: int,
    clients: list[MoqtClient],
) -> tuple[MoqtClient, TrackPublisher, list[Viewer], SinkProcess | None]:
    """A publisher of the bench track and ``viewers`` viewers subscribed to it: probes in
    this process (their counters returned), the rest sinks of ``size``-byte objects when
    ``sinks``. Every session joins ``clients``; the caller stops the sink process."""
    if sinks and transport != "ws":
        raise ValueError("sinks are WebSocket viewers")
    url = target.url(transport)
    probes, sunk = split_viewers(viewers, sinks)
    pub, (track,) = await publisher(reactor, url, b"video")
    clients.append(pub)
    counters: list[Viewer] = []

    async def add_probes(count: int) -> None:
        counters.extend(await watchers(reactor, url, count, clients))

    sink = await probes_and_sinks(
        reactor, "relay", target.tcp_port, probes, sunk, size, add_probes
    )
    return pub, track, counters, sink


async def fanout_run(
    reactor: Any,
    target: Target,
    transport: str,
    viewers: int,
    seconds: float,
    *,
    limit: int | None = None,
    warmup: float = 0.5,
    sinks: bool = False,
) -> Figures:
    """One publisher to ``viewers`` viewers, as fast as it goes (or ``limit`` objects).

    With ``sinks`` (ws only), all viewers but the probes (`split_viewers`) are sinks
    (bench/sinks.py).
    """
    clients: list[MoqtClient] = []
    pump: Pump | None = None
    sink: SinkProcess | None = None
    try:
        pub, track, counters, sink = await relay_audience(
            reactor, target, transport, viewers, sinks, OBJECT_SIZE, clients
        )
        pump = Pump(
            reactor,
            MoqtSink(pub, track),
            OBJECT_SIZE,
            GROUP_SIZE,
            viewers=counters,
            limit=limit,
        )
        return await time_pumped(
            reactor, target, pump, pub, counters, sink, viewers, seconds, warmup
        )
    finally:
        await wind_down(reactor, pump, sink, clients)


async def baseline_probes(
    reactor: Any,
    connect_one: Callable[..., Coroutine[Any, Any, BaselineClient | QuicBaselineClient]],
    port: int,
    clients: list[BaselineClient | QuicBaselineClient],
    counters: list[Viewer],
    count: int,
) -> None:
    """``count`` more baseline viewers, ``CONNECT_BATCH`` at a time, each counted by a Viewer."""
    for start in range(0, count, CONNECT_BATCH):
        batch = [Viewer() for _ in range(min(CONNECT_BATCH, count - start))]
        clients.extend(
            await gatherResults(
                [
                    Deferred.fromCoroutine(
                        connect_one(reactor, port, publisher=False, on_message=v.received)
                    )
                    for v in batch
                ],
                consumeErrors=True,
            )
        )
        counters.extend(batch)


async def baseline_audience(
    reactor: Any,
    target: Target,
    transport: str,
    viewers: int,
    sinks: bool,
    size: int,
    clients: list[BaselineClient | QuicBaselineClient],
) -> tuple[Sink, list[Viewer], SinkProcess | None]:
    """`relay_audience` for the minimal fan-out of ``transport`` (ws or quic): a publisher
    (returned as the sink to publish through) and ``viewers`` viewers, ready to receive."""
    if transport not in ("ws", "quic"):
        raise ValueError(f"no {transport} baseline")
    if sinks and transport != "ws":
        raise ValueError("sinks are WebSocket viewers")
    probes, sunk = split_viewers(viewers, sinks)
    connect_one = connect_baseline if transport == "ws" else connect_quic_baseline
    port = target.tcp_port if transport == "ws" else target.udp_port
    pub = await connect_one(reactor, port, publisher=True)
    clients.append(pub)
    counters: list[Viewer] = []
    add_probes = partial(baseline_probes, reactor, connect_one, port, clients, counters)
    sink = await probes_and_sinks(
        reactor, "baseline", target.tcp_port, probes, sunk, size, add_probes
    )
    if isinstance(pub, QuicBaselineClient):
        # A QUIC baseline viewer is ready once the server has registered it.
        return QuicBaselineSink(pub), counters, sink
    # The server registers a viewer when its upgrade completes, before the client sees it.
    await sleep(reactor, 0.2)
    return BaselineSink(pub), counters, sink


async def baseline_fanout_run(
    reactor: Any,
    target: Target,
    viewers: int,
    seconds: float,
    *,
    transport: str = "ws",
    limit: int | None = None,
    warmup: float = 0.5,
    sinks: bool = False,
) -> Figures:
    """The same load as `fanout_run` over ``transport`` (ws or quic), against the minimal
    fan-out of that transport (bench/baselines.py)."""
    clients: list[BaselineClient | QuicBaselineClient] = []
    pump: Pump | None = None
    sink: SinkProcess | None = None
    try:
        publishing, counters, sink = await baseline_audience(
            reactor, target, transport, viewers, sinks, OBJECT_SIZE, clients
        )
        pump = Pump(reactor, publishing, OBJECT_SIZE, GROUP_SIZE, viewers=counters, limit=limit)
        return await time_pumped(
            reactor, target, pump, clients[0], counters, sink, viewers, seconds, warmup
        )
    finally:
        await wind_down(reactor, pump, sink, clients)


async def latency_run(
    reactor: Any,
    target: Target,
    transport: str,
    viewers: int,
    seconds: float,
    *,
    sinks: bool = False,
) -> Figures:
    """A paced 5 Mbit/s track to ``viewers`` viewers; latency percentiles in ms.

    With ``sinks`` (ws only), only the probes (`split_viewers`) time and count losses.
    """
    clients: list[MoqtClient] = []
    pacer: Pacer | None = None
    sink: SinkProcess | None = None
    try:
        pub, track, counters, sink = await relay_audience(
            reactor, target, transport, viewers, sinks, LATENCY_SIZE, clients
        )
        pacer = Pacer(
            reactor,
            MoqtSink(pub, track),
            LATENCY_GROUPS_PER_SECOND,
            LATENCY_PER_GROUP,
            LATENCY_SIZE,
        )
        return await time_paced(reactor, target, pacer, counters, sink, viewers, seconds)
    finally:
        await wind_down(reactor, pacer, sink, clients)


async def time_pumped(
    reactor: Any,
    target: Target,
    pump: Pump,
    publisher: Closable,
    counters: list[Viewer],
    sink: SinkProcess | None,
    viewers: int,
    seconds: float,
    warmup: float,
) -> Figures:
    """Run ``pump`` for ``warmup`` s, then time ``seconds`` of it; throughput figures, and
    what was sent and delivered once the viewers have drained."""
    pump.start()
    await sleep(reactor, warmup)
    window = Window(target.pid, counters, sink)
    await window.open(reactor)
    await sleep(reactor, seconds)
    figures = await window.close(reactor)
    pump.stop()
    if publisher.closed.called:
        raise RuntimeError(f"the publisher's session ended: {publisher.closed.result}")
    delivered = await drain(reactor, counters, pump.sent, sink)
    figures["sent"] = pump.sent
    figures["delivered"] = delivered
    figures["delivered_pct"] = 100 * delivered / (pump.sent * viewers) if pump.sent else 0
    return figures


async def wind_down(
    reactor: Any,
    source: Pump | Pacer | None,
    sink: SinkProcess | None,
    clients: Sequence[Closable],
) -> None:
    """After a run, whatever happened: stop publishing, stop the sinks, close the clients."""
    if source is not None:
        source.stop()
    if sink is not None:
        await sink.stop(reactor)
    await close_clients(reactor, clients)


async def time_paced(
    reactor: Any,
    target: Target,
    pacer: Pacer,
    counters: list[Viewer],
    sink: SinkProcess | None,
    viewers: int,
    seconds: float,
) -> Figures:
    """Run ``pacer`` for 1 s, then time ``seconds`` of it; latency percentiles in ms."""
    pacer.start()
    await sleep(reactor, 1.0)
    for v in counters:
        v.recording = True
    window = Window(target.pid, counters, sink)
    await window.open(reactor)
    await sleep(reactor, seconds)
    figures = await window.close(reactor)
    for v in counters:
        v.recording = False
    pacer.stop()
    delivered = await drain(reactor, counters, pacer.sent, sink)
    latencies = [ms for v in counters for ms in v.latencies]
    result = {
        "p50": percentile(latencies, 0.5),
        "p99": percentile(latencies, 0.99),
        "max": max(latencies, default=float("nan")),
        "mbit_s": figures["mbit_s"],
        "lost": sum(v.lost() for v in counters),
        "delivered_pct": 100 * delivered / (pacer.sent * viewers) if pacer.sent else 0,
        "relay_cpu": figures["relay_cpu"],
        "load_cpu": figures["load_cpu"],
    }
    if "sink_cpu" in figures:
        result["sink_cpu"] = figures["sink_cpu"]
    return result


async def baseline_latency_run(
    reactor: Any, target: Target, viewers: int, seconds: float, *, sinks: bool = False
) -> Figures:
    """The same paced track as `latency_run` over ws, through the minimal WebSocket fan-out."""
    clients: list[BaselineClient | QuicBaselineClient] = []
    pacer: Pacer | None = None
    sink: SinkProcess | None = None
    try:
        publishing, counters, sink = await baseline_audience(
            reactor, target, "ws", viewers, sinks, LATENCY_SIZE, clients
        )
        pacer = Pacer(
            reactor,
            publishing,
            LATENCY_GROUPS_PER_SECOND,
            LATENCY_PER_GROUP,
            LATENCY_SIZE,
        )
        return await time_paced(reactor, target, pacer, counters, sink, viewers, seconds)
    finally:
        await wind_down(reactor, pacer, sink, clients)


async def memory_run(reactor: Any, target: Target, transport: str, viewers: int) -> Figures:
    """Relay RSS growth per idle subscribed viewer."""
    url = target.url(transport)
    clients: list[MoqtClient] = []
    try:
        pub, (track,) = await publisher(reactor, url, b"video")
        clients.append(pub)
        # One viewer first, so the track and its upstream subscription exist before "before".
        first = await open_clients(reactor, url, 1)
        clients += first
        await subscribe_all(first, [Viewer()])
        track.send_object(0, 0, stamped_payload(0, 1024, time.time_ns()))
        await sleep(reactor, 0.5)
        before = rss_bytes(target.pid)
        started = time.monotonic()
        await watchers(reactor, url, viewers, clients)
        connect_seconds = time.monotonic() - started
        await sleep(reactor, 0.5)
        after = rss_bytes(target.pid)
        return {
            "kib_per_viewer": (after - before) / viewers / 1024,
            "rss_before_mib": before / 2**20,
            "rss_after_mib": after / 2**20,
            "setup_per_s": viewers / connect_seconds,
        }
    finally:
        await close_clients(reactor, clients)


class _StatsFetch(Protocol):
    """One ``GET /stats`` over HTTP/1.0: the body is everything after the blank line."""

    def __init__(self, path: bytes = b"/stats") -> None:
        self.path = path
        self.chunks: list[bytes] = []
        self.done: Deferred[dict[str, int]] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"GET " + self.path + b" HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        _, _, body = b"".join(self.chunks).partition(b"\r\n\r\n")
        self.done.callback(json.loads(body))


class StatsClient:
    """Polls the relay runner's ``GET /stats`` (one short connection per poll)."""

    def __init__(self, reactor: Any, port: int) -> None:
        self.endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)

    async def get(self, collect: bool = False) -> dict[str, int]:
        """The runner's stats; ``collect`` forces a GC there first and adds ``rss_kib``."""
        fetch = _StatsFetch(b"/stats?gc=1" if collect else b"/stats")
        await connectProtocol(self.endpoint, fetch)
        return await fetch.done


def vanish(client: MoqtClient) -> None:
    """Drop a WebSocket's TCP connection with no close; close a QUIC session at once."""
    transport = client.session.transport
    abort = getattr(transport, "abort", None)
    if abort is not None:
        abort()
    else:
        client.close()


async def teardown_run(
    reactor: Any, target: Target, transport: str, leavers: int, stayers: int, subgroups: int
) -> Figures:
    """``leavers`` viewers holding ``subgroups`` open subgroups each vanish at once."""
    assert target.stats_port is not None
    url = target.url(transport)
    stats = StatsClient(reactor, target.stats_port)
    clients: list[MoqtClient] = []
    pacer: Pacer | None = None
    leaving: Child | None = None
    try:
        # One session per track: TrackPublisher numbers aliases per track, so two tracks
        # on one session would both use alias 0.
        held_pub, (held,) = await publisher(reactor, url, b"held")
        clients.append(held_pub)
        pulse_pub, (pulse,) = await publisher(reactor, url, b"pulse", namespace=PULSE_NS)
        clients.append(pulse_pub)
        stay = await watchers(reactor, url, stayers, clients, b"pulse", PULSE_NS)
        argv = [sys.executable, str(BENCH_DIR / "leavers.py"), url, str(leavers), "held"]
        leaving = Child(argv, "leavers", stdin=True)
        await deferToThread(leaving.wait_for, _json_line, 120.0)
        for subgroup in range(subgroups):
            held.send_object(0, 0, b"held", subgroup_id=subgroup)
        deadline = time.monotonic() + 30.0
        while (await stats.get())["streams"] < leavers * subgroups:
            if time.monotonic() > deadline:
                raise RuntimeError("the relay never opened every held subgroup")
            await sleep(reactor, 0.05)
        pacer = Pacer(reactor, MoqtSink(pulse_pub, pulse), 100, 1, 1024)
        pacer.start()
        await sleep(reactor, 0.5)
        for v in stay:
            v.recording = True
        await sleep(reactor, 1.0)
        quiet = [ms for v in stay for ms in v.latencies]
        for v in stay:
            v.latencies = []
        started = time.monotonic()
        leaving.tell("vanish")
        while True:
            now = await stats.get()
            if (
                now["peers"] == stayers + 2
                and now["subscriptions"] == stayers
                and now["reaper_pending"] == 0
                and now["losses_pending"] == 0
            ):
                break
            if time.monotonic() - started > 60.0:
                raise RuntimeError(f"the relay did not reap the leavers: {now}")
            # Each poll costs the relay about a millisecond (an HTTP request, a walk over
            # the peers): polling more often would add to the stall being measured.
            await sleep(reactor, 0.02)
        reaped = time.monotonic() - started
        await sleep(reactor, max(0.0, 1.0 - reaped))
        during = [ms for v in stay for ms in v.latencies]
        return {
            "reap_ms": reaped * 1000,
            "quiet_p99": percentile(quiet, 0.99),
            "during_p99": percentile(during, 0.99),
            "during_max": max(during, default=float("nan")),
            "p99_ratio": percentile(during, 0.99) / percentile(quiet, 0.99),
        }
    finally:
        if pacer is not None:
            pacer.stop()
        if leaving is not None:
            leaving.stop()
        await close_clients(reactor, clients)


# -- the peer comparison (aiomoqt) ---------------------------------------------


def interop_python() -> str | None:
    for candidate in (
        os.environ.get("MOQRELAY_INTEROP_PYTHON"),
        str(REPO / ".interop-venv/bin/python"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


_SUB_PATTERNS = {
    "objects": r"Objects:\s+([\d,]+)",
    "mbit_s": r"Throughput:\s+([\d.]+) Mbps",
    "p50": r"p50=([\d.]+)",
    "p99": r"p99=([\d.]+)",
    "lost": r"Lost:\s+([\d,]+)",
    "seconds": r"results\s+\(([\d.]+)s active",
}


def parse_sub_bench(text: str) -> Figures:
    figures: Figures = {}
    for key, pattern in _SUB_PATTERNS.items():
        match = re.search(pattern, text)
        if match is None:
            raise RuntimeError(f"sub_bench printed no {key}:\n{text[-3000:]}")
        figures[key] = float(match.group(1).replace(",", ""))
    return figures


def peer_once(
    python: str, which: str, seconds: float, workdir: Path, scheme: str = "moqt"
) -> Figures:
    """aiomoqt's pub_bench -> relay ``which`` ("ours" or "aiomoqt") -> sub_bench, over
    ``scheme`` (moqt:// or https:// for WebTransport)."""
    if which == "ours":
        relay, target = start_relay()
        url = f"{scheme}://127.0.0.1:{target.udp_port}/"
    else:
        port = free_udp_port()
        argv = [python, "-P", "-m", "aiomoqt.tools.moq_interop_relay", "--bind", "127.0.0.1"]
        argv += ["--port", str(port), "--cert", str(workdir / "cert.pem")]
        argv += ["--key", str(workdir / "key.pem"), "--dual", "--draft", "14"]
        relay = Child(argv, "aiomoqt-relay", cwd=workdir)
        try:
            relay.wait_for(lambda text: True if "Listening on" in text else None)
        except BaseException:
            relay.stop()
            raise
        target = Target(0, port, relay.process.pid)
        url = f"{scheme}://127.0.0.1:{port}/"
    pub: Child | None = None
    try:
        common = ["-k", "--draft", "14", "-N", "bench/peer", "-T", "t1"]
        pub_argv = [python, "-P", "-m", "aiomoqt.tools.pub_bench", url, *common, "--pub-ns"]
        pub_argv += ["-s", str(OBJECT_SIZE), "-g", str(GROUP_SIZE), "-r", "0"]
        pub_argv += ["-t", str(int(seconds) + 60)]
        pub = Child(pub_argv, "pub_bench", cwd=workdir)
        pub.wait_for(lambda text: True if "Published" in text else None)
        cpu_before = cpu_seconds(target.pid)
        sub_argv = [python, "-P", "-m", "aiomoqt.tools.sub_bench", url, *common]
        sub_argv += ["-t", str(max(1, round(seconds)))]
        done = subprocess.run(
            sub_argv, cwd=workdir, capture_output=True, text=True, timeout=seconds + 60
        )
        cpu = cpu_seconds(target.pid) - cpu_before
        figures = parse_sub_bench(done.stdout + done.stderr)
        gigabytes = figures["objects"] * OBJECT_SIZE / 1e9
        figures["cpu_per_gb"] = cpu / gigabytes if gigabytes else float("nan")
        figures["relay_cpu"] = 100 * cpu / figures["seconds"]
        return figures
    finally:
        if pub is not None:
            pub.stop()
        relay.stop()


# -- tables ------------------------------------------------------------------------


@dataclass
class Column:
    key: str
    header: str
    fmt: str = "{:,.0f}"


@dataclass
class Row:
    label: str
    runs: list[Figures] = field(default_factory=list)

    def median(self, key: str) -> float:
        values = [run[key] for run in self.runs if key in run]
        return statistics.median(values) if values else float("nan")


@dataclass
class Section:
    title: str
    columns: list[Column]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        head = ["case", *(c.header for c in self.columns)]
        lines = [f"### {self.title}", "", "| " + " | ".join(head) + " |"]
        lines.append("|" + "---|" * len(head))
        for row in self.rows:
            cells = [row.label]
            for column in self.columns:
                value = row.median(column.key)
                cells.append("-" if value != value else column.fmt.format(value))
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", *self.notes]
        return "\n".join(lines).rstrip() + "\n"


FANOUT_COLUMNS = [
    Column("obj_s", "objects/s"),
    Column("mbit_s", "Mbit/s"),
    Column("cpu_per_gb", "relay CPU s/GB", "{:.2f}"),
    Column("relay_cpu", "relay CPU %"),
    Column("load_cpu", "load CPU %"),
    Column("delivered_pct", "delivered %", "{:.1f}"),
]
RATIO_COLUMNS = [
    Column("obj_s_ratio", "relay/baseline objects/s", "{:.2f}x"),
    Column("cpu_ratio", "relay/baseline CPU per GB", "{:.2f}x"),
]
SINK_CPU = Column("sink_cpu", "sink CPU %")


def with_sink_cpu(columns: list[Column]) -> list[Column]:
    """``columns`` with "sink CPU %" after "load CPU %"."""
    at = [c.key for c in columns].index("load_cpu") + 1
    return [*columns[:at], SINK_CPU, *columns[at:]]


def viewers_label(transport: str, viewers: int, sinks: bool) -> str:
    """A row label; with sinks (ws only) it says how many viewers were probes and sinks."""
    probes, sunk = split_viewers(viewers, sinks and transport == "ws")
    label = f"{viewers} viewers"
    return f"{label} ({probes} probes + {sunk} sinks)" if sunk else label


SINKS_NOTE = (
    f"Viewers: of N ws viewers, one in five (at least 1, at most {PROBES}) are probes in "
    "the load process (full MoQT "
    "viewers; Autobahn viewers for the baseline) and the others are sinks in a process of "
    "their own (bench/sinks.py: stdlib TLS, WebSocket frame headers only, one object counted "
    "per object message). The probes subscribe spread evenly among the sinks (servers serve "
    "viewers in subscription order). Objects/s and Mbit/s add the sinks' counts to the "
    "probes' over the same window."
)
QUIC_BASELINE_NOTE = (
    "The QUIC baseline (bench/baselines.py) runs on the relay's own QUIC transport "
    "(moqrelay.transport.quic over aioquic, ALPN moq-00, the relay's endpoint settings) with "
    "no MoQT: the publisher sends 4-byte length-prefixed objects on one uni stream and the "
    "server writes each object once to each viewer's one uni stream, holding the publisher's "
    "bytes while any viewer's session has 1 MiB queued. Its viewers only split the length "
    "prefixes in the load process, where the relay's viewers decode MoQT."
)


# -- the workloads, every run ------------------------------------------------------


async def fanout_section(
    reactor: Any,
    transports: list[str],
    viewer_counts: list[int],
    seconds: float,
    runs: int,
    baseline: bool,
    sinks: bool = False,
) -> list[Section]:
    """Every fanout run; with ``sinks``, the ws runs (relay and baseline) use sinks."""
    sinks = sinks and "ws" in transports
    if sinks:
        title_viewers = f", ws viewers: up to {PROBES} probes + sinks"
        notes = [
            SINKS_NOTE + " The publisher keeps its session queue under 1 MiB and stays at "
            "most one group ahead of the slowest probe; delivered % counts probes and sinks. "
            "Relay, load and sink CPU % are of one core."
        ]
    else:
        title_viewers = ""
        notes = [
            "Objects/s and Mbit/s are summed over the viewers. The publisher keeps its "
            "session queue under 1 MiB and stays at most one group ahead of the slowest "
            "viewer (all share the load process), so delivered % should be 100; relay and "
            "load CPU % are of one core."
        ]
    section = Section(
        f"fanout: 1 publisher, {OBJECT_SIZE // 1024} KiB objects, {GROUP_SIZE} per group, "
        f"{seconds:g} s{title_viewers}",
        with_sink_cpu(FANOUT_COLUMNS) if sinks else FANOUT_COLUMNS,
        notes=notes,
    )
    if baseline and "webtransport" in transports:
        notes.append("webtransport has no baseline.")
    ratio_sections = {
        "ws": Section(
            "fanout over ws: relay / minimal WebSocket fan-out"
            + (" (both with probes + sinks)" if sinks else ""),
            RATIO_COLUMNS,
        ),
        "quic": Section(
            "fanout over quic: relay / minimal QUIC fan-out (same aioquic transport, no MoQT)",
            RATIO_COLUMNS,
            notes=[QUIC_BASELINE_NOTE],
        ),
    }
    for transport in transports:
        use_sinks = sinks and transport == "ws"
        ratios = ratio_sections.get(transport)
        for viewers in viewer_counts:
            row = Row(f"{transport}, {viewers_label(transport, viewers, sinks)}")
            section.rows.append(row)
            with_baseline = baseline and ratios is not None
            base_row = Row(f"baseline {transport}, {viewers_label(transport, viewers, sinks)}")
            ratio_row = Row(f"{viewers} viewers")
            for run in range(runs):

                async def ours(
                    target: Target,
                    transport: str = transport,
                    viewers: int = viewers,
                    use_sinks: bool = use_sinks,
                ) -> Figures:
                    return await fanout_run(
                        reactor, target, transport, viewers, seconds, sinks=use_sinks
                    )

                async def theirs(
                    target: Target,
                    transport: str = transport,
                    viewers: int = viewers,
                    use_sinks: bool = use_sinks,
                ) -> Figures:
                    return await baseline_fanout_run(
                        reactor, target, viewers, seconds, transport=transport, sinks=use_sinks
                    )

                if with_baseline and run % 2 == 1:
                    base = await with_process(start_baseline, theirs)
                figures = await with_process(start_relay, ours)
                if with_baseline and run % 2 == 0:
                    base = await with_process(start_baseline, theirs)
                row.runs.append(figures)
                _progress(row.label, figures)
                if with_baseline:
                    base_row.runs.append(base)
                    ratio_row.runs.append(
                        {
                            "obj_s_ratio": figures["obj_s"] / base["obj_s"],
                            "cpu_ratio": figures["cpu_per_gb"] / base["cpu_per_gb"],
                        }
                    )
                    _progress(base_row.label, base)
            if ratios is not None and with_baseline:
                section.rows.append(base_row)
                ratios.rows.append(ratio_row)
    return [section, *(s for s in ratio_sections.values() if s.rows)]


async def profile_section(
    reactor: Any, transport: str, viewers: int, seconds: float, sinks: bool = False
) -> tuple[list[Section], str]:
    """One fanout run with the relay under cProfile; returns the top-25 listings."""
    use_sinks = sinks and transport == "ws"
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        path = str(Path(tmp) / "relay.prof")
        figures = await with_process(
            lambda: start_relay(profile=path),
            lambda target: fanout_run(
                reactor, target, transport, viewers, seconds, sinks=use_sinks
            ),
        )
        listing = []
        for sort in ("cumulative", "tottime"):
            out = _StringSink()
            stats = pstats.Stats(path, stream=out)  # type: ignore[arg-type]
            stats.strip_dirs().sort_stats(sort).print_stats(25)
            listing.append(f"Top 25 by {sort}:\n" + _trim_pstats(out.text()))
    section = Section(
        f"fanout under cProfile ({transport}, {viewers_label(transport, viewers, sinks)}, "
        f"{seconds:g} s; slower than unprofiled)",
        with_sink_cpu(FANOUT_COLUMNS) if use_sinks else FANOUT_COLUMNS,
        [Row("profiled", [figures])],
    )
    return [section], "\n\n".join(listing)


class _StringSink:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return len(text)

    def text(self) -> str:
        return "".join(self.parts)


def _trim_pstats(text: str) -> str:
    """pstats output from its column header on, without the preamble."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.lstrip().startswith("ncalls"):
            return "\n".join(lines[i:]).rstrip()
    return text.rstrip()


async def latency_section(
    reactor: Any,
    transports: list[str],
    viewers: int,
    seconds: float,
    runs: int,
    sinks: bool = False,
    baseline: bool = False,
) -> list[Section]:
    """Every latency run; with ``sinks``, the ws runs use sinks; with ``baseline``, the ws
    runs alternate with the minimal WebSocket fan-out, and a second section gives what the
    relay adds to its latency, run by run."""
    sinks = sinks and "ws" in transports
    columns = [
        Column("p50", "p50 ms", "{:.1f}"),
        Column("p99", "p99 ms", "{:.1f}"),
        Column("max", "max ms", "{:.1f}"),
        Column("mbit_s", "delivered Mbit/s"),
        Column("lost", "objects lost"),
        Column("delivered_pct", "delivered %", "{:.1f}"),
        Column("relay_cpu", "relay CPU %"),
        Column("load_cpu", "load CPU %"),
    ]
    notes = [
        "Latency is publish (stamp written) to receipt (callback in the viewer), both in "
        "the load process, so it includes the load process's own queueing. Delivered % is "
        "of every object published to every viewer, once the publisher has stopped. The "
        "relay freezes its startup objects out of the garbage collector as twistd moqrelay "
        "does (moqrelay.service.freeze_startup_objects); the 'no gc.freeze' row runs it "
        "without, alternating with it run by run."
    ]
    if sinks:
        notes.append(
            SINKS_NOTE + f" Latency and objects lost are the {PROBES} probes' (sinks read no "
            "stamps); delivered % counts probes and sinks."
        )
    section = Section(
        f"latency: 5 Mbit/s track ({LATENCY_GROUPS_PER_SECOND} groups/s x {LATENCY_PER_GROUP} "
        f"objects x {LATENCY_SIZE:,} B) to {viewers} viewers, {seconds:g} s"
        + (f", ws viewers: up to {PROBES} probes + sinks" if sinks else ""),
        with_sink_cpu(columns) if sinks else columns,
        notes=notes,
    )
    added = Section(
        "latency over ws: added by the relay (relay minus minimal WebSocket fan-out, run by run)",
        [
            Column("p50", "p50 added ms", "{:.1f}"),
            Column("p99", "p99 added ms", "{:.1f}"),
            Column("max", "max added ms", "{:.1f}"),
        ],
    )
    for transport in transports:
        use_sinks = sinks and transport == "ws"
        relay_row = Row(f"{transport}, {viewers_label(transport, viewers, sinks)}")
        rows = [relay_row]
        if transport == "ws":
            rows.append(Row(f"{relay_row.label}, no gc.freeze"))
        base_row = Row(f"baseline {relay_row.label}")
        added_row = Row(relay_row.label)
        if baseline and transport == "ws":
            rows.append(base_row)
            added.rows.append(added_row)
        section.rows += rows
        for _ in range(runs):
            for row in rows:
                if row is base_row:

                    async def base_work(target: Target, use_sinks: bool = use_sinks) -> Figures:
                        return await baseline_latency_run(
                            reactor, target, viewers, seconds, sinks=use_sinks
                        )

                    row.runs.append(await with_process(start_baseline, base_work))
                    figures = relay_row.runs[-1]
                    added_row.runs.append(
                        {key: figures[key] - row.runs[-1][key] for key in ("p50", "p99", "max")}
                    )
                else:

                    async def work(
                        target: Target, transport: str = transport, use_sinks: bool = use_sinks
                    ) -> Figures:
                        return await latency_run(
                            reactor, target, transport, viewers, seconds, sinks=use_sinks
                        )

                    start = partial(start_relay, gc_freeze=row is relay_row)
                    row.runs.append(await with_process(start, work))
                _progress(row.label, row.runs[-1])
    return [section, added] if added.rows else [section]


async def memory_section(reactor: Any, transports: list[str], viewers: int, runs: int) -> Section:
    section = Section(
        f"memory: relay RSS per idle subscribed viewer, {viewers:,} viewers",
        [
            Column("kib_per_viewer", "KiB per viewer", "{:.1f}"),
            Column("rss_before_mib", "RSS before MiB", "{:.1f}"),
            Column("rss_after_mib", "RSS after MiB", "{:.1f}"),
            Column("setup_per_s", "viewers set up per s"),
        ],
    )
    for transport in transports:
        row = Row(f"{transport}, {viewers:,} viewers")
        section.rows.append(row)
        for _ in range(runs):

            async def work(target: Target, transport: str = transport) -> Figures:
                return await memory_run(reactor, target, transport, viewers)

            row.runs.append(await with_process(start_relay, work))
            _progress(row.label, row.runs[-1])
    return section


async def teardown_section(
    reactor: Any, transports: list[str], leavers: int, runs: int
) -> Section:
    stayers, subgroups = 10, 10
    section = Section(
        f"teardown: {leavers:,} viewers with {subgroups} open subgroups each vanish at once; "
        f"{stayers} viewers stay (100 objects/s of 1 KiB)",
        [
            Column("reap_ms", "reaped after ms"),
            Column("quiet_p99", "stayers quiet p99 ms", "{:.1f}"),
            Column("during_p99", "stayers p99 during ms", "{:.1f}"),
            Column("during_max", "stayers max during ms", "{:.1f}"),
            Column("p99_ratio", "p99 during/quiet", "{:.2f}x"),
        ],
        notes=[
            "Reaped = the runner's /stats (polled every 20 ms) shows only the publisher and "
            "the stayers, their subscriptions only, an empty reaper worklist and no "
            "connection loss left queued in the reactor. 'During' covers at least 1 s "
            "from the moment the leavers vanish (WebSocket: TCP dropped with no close; QUIC "
            "and WebTransport: CONNECTION_CLOSE). The relay runs on the paced reactor "
            "twistd moqrelay installs (moqrelay/reactor.py); the 'stock reactor' row runs it "
            "on Twisted's own epoll reactor, alternating with it run by run."
        ],
    )
    for transport in transports:
        rows = [Row(transport)]
        if transport == "ws":
            rows.append(Row(f"{transport}, stock reactor"))
        section.rows += rows
        for _ in range(runs):
            for row in rows:

                async def work(target: Target, transport: str = transport) -> Figures:
                    return await teardown_run(
                        reactor, target, transport, leavers, stayers, subgroups
                    )

                start = partial(start_relay, max_streams=50_000, stock_reactor=row is not rows[0])
                row.runs.append(await with_process(start, work))
                _progress(row.label, row.runs[-1])
    return section


def peer_section(seconds: float, runs: int, scheme: str = "moqt") -> Section:
    section = Section(
        f"peer: aiomoqt pub_bench -> relay -> aiomoqt sub_bench, {scheme}://, "
        f"{OBJECT_SIZE // 1024} KiB objects, {GROUP_SIZE} per group, as fast as possible, "
        f"{seconds:g} s",
        [
            Column("mbit_s", "Mbit/s", "{:,.0f}"),
            Column("p50", "p50 ms", "{:.1f}"),
            Column("p99", "p99 ms", "{:.1f}"),
            Column("lost", "lost"),
            Column("seconds", "sub active s", "{:.1f}"),
            Column("cpu_per_gb", "relay CPU s/GB", "{:.2f}"),
            Column("relay_cpu", "relay CPU %"),
        ],
    )
    python = interop_python()
    if python is None:
        section.notes.append(
            "Skipped: no aiomoqt interpreter (set MOQRELAY_INTEROP_PYTHON, or "
            "python3.12 -m venv .interop-venv && .interop-venv/bin/pip install aiomoqt==0.13.3)."
        )
        return section
    from moqrelay.tls import generate_dev_chain

    ours, theirs, ratio = Row("moqrelay"), Row("aiomoqt relay"), Row("moqrelay / aiomoqt")
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp:
        workdir = Path(tmp)
        chain = generate_dev_chain()
        (workdir / "cert.pem").write_bytes(chain.cert_pem)
        (workdir / "key.pem").write_bytes(chain.key_pem)
        for run in range(runs):
            order = ["ours", "aiomoqt"] if run % 2 == 0 else ["aiomoqt", "ours"]
            got = {which: peer_once(python, which, seconds, workdir, scheme) for which in order}
            ours.runs.append(got["ours"])
            theirs.runs.append(got["aiomoqt"])
            ratio.runs.append(
                {
                    "mbit_s": got["ours"]["mbit_s"] / got["aiomoqt"]["mbit_s"],
                    "cpu_per_gb": got["ours"]["cpu_per_gb"] / got["aiomoqt"]["cpu_per_gb"],
                }
            )
            _progress("peer moqrelay", got["ours"])
            _progress("peer aiomoqt", got["aiomoqt"])
    section.rows += [ours, theirs]
    section.notes.append(
        "Ratios within each run (alternating which relay goes first), then the median: "
        f"throughput {ratio.median('mbit_s'):.2f}x, relay CPU per GB "
        f"{ratio.median('cpu_per_gb'):.2f}x. Latency and loss are sub_bench's own figures. "
        "aiomoqt's relay binds 0.0.0.0 (its transport takes no bind address); all traffic "
        "stays on 127.0.0.1."
    )
    return section


def _progress(label: str, figures: Figures) -> None:
    shown = ", ".join(f"{k} {v:,.2f}" for k, v in figures.items())
    sys.stderr.write(f"  {label}: {shown}\n")
    sys.stderr.flush()


# -- command line ------------------------------------------------------------------

WORKLOADS = ("fanout", "latency", "memory", "teardown", "peer", "all")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="relay_bench.py", description="Benchmark the relay over real sockets on 127.0.0.1."
    )
    p.add_argument("workload", choices=WORKLOADS)
    p.add_argument("--transport", choices=sorted(SCHEMES), help="default: each the workload uses")
    p.add_argument("--viewers", type=int, help="default: the workload's own")
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    p.add_argument("--runs", type=int, default=3, help="runs per figure (the median is shown)")
    p.add_argument(
        "--baseline",
        action="store_true",
        help="fanout (ws, quic) and latency (ws): also the minimal fan-out without MoQT",
    )
    p.add_argument("--profile", action="store_true", help="fanout: one run under cProfile")
    p.add_argument(
        "--sinks",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"fanout and latency over ws: all viewers but one in five (at most {PROBES}) "
        "are sinks (bench/sinks.py) in a process of their own",
    )
    p.add_argument("--append-results", action="store_true", help="append to bench/RESULTS.md")
    p.add_argument(
        "--quic-stack",
        choices=STACK_NAMES,
        help="QUIC stack of the relay and of the harness's clients (MOQRELAY_QUIC_STACK)",
    )
    return p


async def run(reactor: Any, args: argparse.Namespace) -> tuple[list[Section], str]:
    """Every section the command asks for, and the profile listing (if any)."""
    sections: list[Section] = []
    listing = ""
    chosen = [args.transport] if args.transport else None
    workloads = ["fanout", "latency", "memory", "teardown", "peer"]
    if args.workload != "all":
        workloads = [args.workload]
    for workload in workloads:
        sys.stderr.write(f"{workload}...\n")
        if workload == "fanout" and args.profile:
            found, listing = await profile_section(
                reactor, args.transport or "ws", args.viewers or 10, args.seconds, args.sinks
            )
            sections += found
        elif workload == "fanout":
            counts = [args.viewers] if args.viewers else [1, 10, 100]
            sections += await fanout_section(
                reactor,
                chosen or ["ws", "quic", "webtransport"],
                counts,
                args.seconds,
                args.runs,
                args.baseline or args.workload == "all",
                args.sinks,
            )
        elif workload == "latency":
            sections += await latency_section(
                reactor,
                chosen or ["ws"],
                args.viewers or 100,
                args.seconds,
                args.runs,
                args.sinks,
                args.baseline or args.workload == "all",
            )
        elif workload == "memory":
            sections.append(
                await memory_section(
                    reactor, chosen or ["ws", "quic"], args.viewers or 1000, args.runs
                )
            )
        elif workload == "teardown":
            sections.append(
                await teardown_section(reactor, chosen or ["ws"], args.viewers or 1000, args.runs)
            )
        else:
            scheme = SCHEMES["webtransport" if args.transport == "webtransport" else "quic"]
            sections.append(await deferToThread(peer_section, args.seconds, args.runs, scheme))
    return sections, listing


def machine() -> str:
    uname = subprocess.run(["uname", "-srm"], capture_output=True, text=True).stdout.strip()
    return f"`{uname}`, nproc {os.cpu_count()}, Python {platform.python_version()}"


def uses_sinks(args: argparse.Namespace) -> bool:
    """Whether the command runs sinks: ws fanout or latency, with sinks on."""
    return bool(
        args.sinks
        and args.transport in (None, "ws")
        and args.workload in ("fanout", "latency", "all")
    )


def results_markdown(
    argv: Sequence[str], args: argparse.Namespace, sections: list[Section], listing: str
) -> str:
    command = "PYTHONPATH=. python bench/relay_bench.py " + shlex.join(argv)
    lines = [
        f"## Relay: {args.workload}",
        "",
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: {machine()}",
        f"- Command: `{command}`",
        f"- Median of {args.runs} runs; the relay in its own process, publisher and viewers "
        "in one other process"
        + (", except the sinks (ws), in a third one" if uses_sinks(args) else "")
        + (
            ", and the teardown's leavers in a process of their own."
            if args.workload in ("teardown", "all")
            else "."
        ),
        "",
    ]
    body = "\n".join(s.markdown() for s in sections)
    if listing:
        body += "\n```\n" + listing + "\n```\n"
    return "\n".join(lines) + body


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser()
    args = p.parse_args(argv)
    if args.quic_stack:
        os.environ["MOQRELAY_QUIC_STACK"] = args.quic_stack
    if args.profile:
        args.runs = 1
    atexit.register(Child.stop_all)
    from twisted.internet.task import react

    async def go(reactor: Any) -> None:
        started = time.monotonic()
        sections, listing = await run(reactor, args)
        text = results_markdown(argv, args, sections, listing)
        sys.stdout.write(text)
        sys.stdout.write(f"\n(total {time.monotonic() - started:.0f} s)\n")
        if args.append_results:
            with RESULTS.open("a") as f:
                f.write("\n" + text)

    react(lambda reactor: Deferred.fromCoroutine(go(reactor)))


if __name__ == "__main__":
    main()
