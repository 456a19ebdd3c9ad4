"""Interop tests (application layer, end to end): the third-party aiomoqt client and our relay.

A RelayService listens on 127.0.0.1 (ephemeral ports); aiomoqt's command-line
tools run as subprocesses of an interpreter that has aiomoqt installed:
``$MOQRELAY_INTEROP_PYTHON``, else ``.interop-venv/bin/python`` in the
repository (which .ci/run builds). Without one, every test is skipped. Each
subprocess runs in a temporary directory with ``python -P``
(aiomoqt's ``types.py`` would shadow the standard library's), under a hard
timeout, and is killed and reaped when its test ends. The relay runs on aioquic
in the test cases here and on qh3 in their ``...Qh3Tests`` subclasses; those are
skipped unless ``$MOQRELAY_INTEROP_QH3`` is 1, because qh3 2.1.0's server stalls
in about one handshake in ten with aiomoqt's picoquic clients (README, QUIC stacks).
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest

from moqrelay.client.api import ReceivedObject, TrackPublisher
from moqrelay.wire.data import STATUS_END_OF_GROUP, STATUS_NORMAL
from moqrelay.wire.errors import PublishDoneCode
from tests.helpers import Recorder
from tests.live import RelayFixture, wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_PYTHON = "MOQRELAY_INTEROP_PYTHON"
DEFAULT_PYTHONS = (REPO_ROOT / ".interop-venv" / "bin" / "python",)
INSTALL = (
    "python3.12 -m venv .interop-venv && .interop-venv/bin/pip install aiomoqt==0.13.3 "
    f"(in {REPO_ROOT}), or point ${ENV_PYTHON} at a Python >= 3.12 that has aiomoqt"
)
ENV_QH3 = "MOQRELAY_INTEROP_QH3"
QH3_SKIP = (
    None
    if os.environ.get(ENV_QH3) == "1"
    else f"qh3 2.1.0 stalls some handshakes with picoquic clients; set {ENV_QH3}=1 to run"
)
# What the subprocesses inherit; aiomoqt's tools also read RELAY_URL, DRAFT, COMPAT and more.
KEPT_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")

NAMESPACE = "test/ns"
NS = (b"test", b"ns")
TRACK = "t1"
OBJECT_SIZE = 1024
GROUP_SIZE = 50


@functools.cache
def interop_python() -> tuple[str | None, str]:
    """(the interpreter to run aiomoqt with, or None) and why there is none."""
    chosen = os.environ.get(ENV_PYTHON)
    candidates = [Path(chosen)] if chosen else list(DEFAULT_PYTHONS)
    found = [path for path in candidates if path.exists()]
    if not found:
        tried = ", ".join(str(path) for path in candidates)
        return None, f"no interop Python ({tried}); install aiomoqt: {INSTALL}"
    python = str(found[0])
    try:
        probe = subprocess.run(
            [python, "-P", "-c", "import aiomoqt"],
            capture_output=True,
            timeout=30,
            cwd="/",
            env=_tool_environment(),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{python} does not run ({exc}); install aiomoqt: {INSTALL}"
    if probe.returncode != 0:
        return None, f"{python} cannot import aiomoqt; install it: {INSTALL}"
    return python, ""


def _tool_environment() -> dict[str, str]:
    env = {name: os.environ[name] for name in KEPT_ENVIRONMENT if name in os.environ}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ToolProcess(ProcessProtocol):
    """One aiomoqt tool: its output, a Deferred for a ready line, one for its end."""

    def __init__(self, name: str, ready_marker: bytes | None) -> None:
        self.name = name
        self.ready_marker = ready_marker
        self.stdout = bytearray()
        self.stderr = bytearray()
        # Fires True once the marker is on stdout, False if the process ended first.
        self.ready: Deferred[bool] = Deferred()
        self.ended: Deferred[int | None] = Deferred()
        self.exit_code: int | None = None
        self.timed_out = False
        self.process: IProcessTransport | None = None
        self.timer: IDelayedCall | None = None

    def outReceived(self, data: bytes) -> None:
        self.stdout += data
        marker = self.ready_marker
        if marker is not None and not self.ready.called and marker in self.stdout:
            self.ready.callback(True)

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason: Failure) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.exit_code = getattr(reason.value, "exitCode", None)
        if not self.ready.called:
            self.ready.callback(False)
        self.ended.callback(self.exit_code)

    def kill(self) -> None:
        """SIGKILL the process if it still runs (processEnded reaps it)."""
        if self.process is None or self.ended.called:
            return
        try:
            self.process.signalProcess("KILL")
        except ProcessExitedAlready:
            return

    def hard_timeout(self) -> None:
        self.timed_out = True
        self.kill()

    async def stop(self) -> None:
        """Kill the process unless it is over, and wait until it is reaped."""
        self.kill()
        await self.ended

    def output(self) -> str:
        """Both streams, for failure messages."""
        out = self.stdout.decode(errors="replace")
        err = self.stderr.decode(errors="replace")
        return f"--- {self.name} stdout ---\n{out}\n--- {self.name} stderr ---\n{err}"


@dataclass(frozen=True, slots=True)
class TapCase:
    number: int
    name: str
    ok: bool
    directive: str
    details: dict[str, str]

    def describe(self) -> str:
        status = "ok" if self.ok else "not ok"
        text = f"{status} {self.number} - {self.name}"
        if self.directive:
            text += f" # {self.directive}"
        for key in ("message", "expected", "received"):
            if key in self.details:
                text += f"\n    {key}: {self.details[key]}"
        return text


_TAP_RESULT = re.compile(r"^(ok|not ok) (\d+) - (.*?)(?: # (.*))?$")
_TAP_PLAN = re.compile(r"^1\.\.(\d+)$")
_YAML_SCALAR = re.compile(r'^  (\w+): "?(.*?)"?$')


def parse_tap(text: str) -> tuple[int | None, list[TapCase]]:
    """The plan's count and the test points of TAP 14 output, with their YAML scalars."""
    plan: int | None = None
    cases: list[TapCase] = []
    for line in text.splitlines():
        result = _TAP_RESULT.match(line)
        plan_match = _TAP_PLAN.match(line)
        scalar = _YAML_SCALAR.match(line)
        if result is not None:
            status, number, name, directive = result.groups()
            cases.append(TapCase(int(number), name, status == "ok", directive or "", {}))
        elif plan_match is not None:
            plan = int(plan_match.group(1))
        elif scalar is not None and cases:
            cases[-1].details.setdefault(scalar.group(1), scalar.group(2))
    return plan, cases


_SUMMARY_FIELD = re.compile(r"^\s+(Groups|Objects|Bytes|Lost|Out-of-order):\s+([\d,]+)", re.M)
_SENT = re.compile(r"Sent: ([\d,]+) objects")


def bench_counters(text: str) -> dict[str, int]:
    """sub_bench's summary counters (Groups, Objects, Bytes, Lost, Out-of-order)."""
    return {key: int(value.replace(",", "")) for key, value in _SUMMARY_FIELD.findall(text)}


class InteropFixture(RelayFixture):
    """A relay on 127.0.0.1 plus aiomoqt subprocesses, all gone after each test."""

    timeout = 60

    def setUp(self) -> None:
        python, why_not = interop_python()
        if python is None:
            raise SkipTest(why_not)
        self.python = python
        self.workdir = Path(self.mktemp())
        self.workdir.mkdir(parents=True)

    def spawn(
        self, module: str, args: list[str], *, timeout: float, ready_marker: bytes | None = None
    ) -> ToolProcess:
        """Run ``python -P -m aiomoqt.<module> ARGS``; it is killed and reaped at cleanup."""
        tool = ToolProcess(module, ready_marker)
        argv = [self.python, "-P", "-m", f"aiomoqt.{module}", *args]
        tool.process = reactor.spawnProcess(
            tool, self.python, argv, env=_tool_environment(), path=str(self.workdir)
        )
        tool.timer = reactor.callLater(timeout, tool.hard_timeout)
        self.addCleanup(tool.stop)
        return tool

    async def finished(self, tool: ToolProcess) -> str:
        """Wait for the tool to exit on its own; its stdout."""
        await tool.ended
        if tool.timed_out:
            self.fail(f"{tool.name} hit its hard timeout and was killed\n{tool.output()}")
        return tool.stdout.decode(errors="replace")

    def aiomoqt_publisher(self, url: str, end_after: float) -> ToolProcess:
        """pub_bench announcing NAMESPACE, 200 objects/s once subscribed, ending the track."""
        args = [url, "-k", "--draft", "14", "--pub-ns", "-N", NAMESPACE, "-T", TRACK]
        args += ["-s", str(OBJECT_SIZE), "-g", str(GROUP_SIZE), "-r", "200"]
        args += ["-t", str(end_after + 2), "--end-after", str(end_after)]
        return self.spawn(
            "tools.pub_bench", args, timeout=end_after + 15, ready_marker=b"Published"
        )

    def aiomoqt_subscriber(self, url: str, duration: float) -> ToolProcess:
        args = [url, "-k", "--draft", "14", "-N", NAMESPACE, "-T", TRACK, "-t", str(duration)]
        return self.spawn("tools.sub_bench", args, timeout=2 * duration + 10)

    async def started(self, tool: ToolProcess) -> None:
        if not await tool.ready:
            self.fail(f"{tool.name} ended before it was ready\n{tool.output()}")


class ConformanceTests(InteropFixture):
    quic_stack = "aioquic"

    """aiomoqt's moq_interop_client (the moq-interop-runner cases) must pass in full."""

    async def check(self, scheme: str) -> None:
        await self.start_relay()
        url = self.url(scheme)
        args = ["-r", url, "--draft", "14", "--tls-disable-verify"]
        tool = self.spawn("tools.moq_interop_client", args, timeout=40)
        plan, cases = parse_tap(await self.finished(tool))
        if not cases:
            self.fail(f"no TAP test points from the conformance client\n{tool.output()}")
        report = "\n".join(case.describe() for case in cases)
        failed = [case for case in cases if not case.ok]
        if failed:
            names = ", ".join(case.name for case in failed)
            self.fail(f"{len(failed)} of {len(cases)} cases failed over {url}: {names}\n{report}")
        self.assertEqual(plan, len(cases), f"the TAP plan does not match its points\n{report}")
        self.assertEqual(tool.exit_code, 0, tool.output())

    async def test_raw_quic(self) -> None:
        await self.check("moqt")

    async def test_webtransport(self) -> None:
        await self.check("https")


class PubSubTests(InteropFixture):
    quic_stack = "aioquic"

    """aiomoqt publisher -> our relay -> aiomoqt subscriber."""

    async def check(self, scheme: str) -> None:
        await self.start_relay()
        url = self.url(scheme)
        pub = self.aiomoqt_publisher(url, end_after=3)
        await self.started(pub)
        sub = self.aiomoqt_subscriber(url, duration=8)
        sub_out = await self.finished(sub)
        pub_out = await self.finished(pub)
        both = f"{pub.output()}\n{sub.output()}"
        self.assertEqual(sub.exit_code, 0, both)
        counters = bench_counters(sub_out)
        self.assertGreater(counters.get("Objects", 0), 0, both)
        self.assertEqual(counters.get("Lost"), 0, both)
        self.assertEqual(counters.get("Out-of-order"), 0, both)
        sent = _SENT.search(pub_out)
        self.assertIsNotNone(sent, both)
        assert sent is not None
        self.assertLessEqual(counters["Objects"], int(sent.group(1).replace(",", "")), both)

    async def test_raw_quic(self) -> None:
        await self.check("moqt")

    async def test_webtransport(self) -> None:
        await self.check("https")


class MixedTests(InteropFixture):
    quic_stack = "aioquic"

    """Our client API on one side of the relay, aiomoqt on the other."""

    async def test_aiomoqt_publisher_to_our_websocket_viewer(self) -> None:
        await self.start_relay()
        pub = self.aiomoqt_publisher(self.url("https"), end_after=2)
        await self.started(pub)
        viewer = await self.client("wss")
        received = Recorder()
        sub = await viewer.subscribe(NS, TRACK.encode(), received)
        await wait_until(lambda: sub.done.called)
        done = await sub.done
        await self.finished(pub)
        self.assertEqual(done.status_code, PublishDoneCode.TRACK_ENDED, pub.output())
        # PUBLISH_DONE comes after the streams are finished: nothing is still in flight.
        self.assertGreater(len(received.objects), 0, pub.output())
        groups: dict[int, list[ReceivedObject]] = {}
        for obj in received.objects:
            groups.setdefault(obj.group_id, []).append(obj)
        self.assertEqual(sorted(groups), list(range(len(groups))))
        for group, objects in groups.items():
            where = f"group {group}"
            self.assertEqual([o.object_id for o in objects], list(range(len(objects))), where)
            normal = [o for o in objects if o.status == STATUS_NORMAL]
            self.assertTrue(all(len(o.payload) == OBJECT_SIZE for o in normal), where)
            # pub_bench closes every group with an empty END_OF_GROUP object.
            ends = [o for o in objects if o.status != STATUS_NORMAL]
            self.assertTrue(all(o.object_id == GROUP_SIZE for o in ends), where)
            self.assertTrue(all(o.status == STATUS_END_OF_GROUP for o in ends), where)
            if group < len(groups) - 1:
                self.assertEqual(len(objects), GROUP_SIZE + 1, where)

    async def test_our_publisher_to_aiomoqt_subscriber(self) -> None:
        await self.start_relay()
        publisher = await self.client("wss")
        await publisher.announce(NS)
        track = publisher.offer_track(NS, TRACK.encode())
        sub = self.aiomoqt_subscriber(self.url("moqt"), duration=4)
        await wait_until(lambda: track.subscribed.called or sub.ended.called)
        if not track.subscribed.called:
            self.fail(f"sub_bench ended before the relay subscribed to us\n{sub.output()}")
        send_groups(track, groups=5, per_group=20)
        sub_out = await self.finished(sub)
        counters = bench_counters(sub_out)
        self.assertEqual(sub.exit_code, 0, sub.output())
        self.assertEqual(counters.get("Objects"), 100, sub.output())
        self.assertEqual(counters.get("Groups"), 5, sub.output())
        self.assertEqual(counters.get("Lost"), 0, sub.output())


class ConformanceQh3Tests(ConformanceTests):
    quic_stack = "qh3"
    skip = QH3_SKIP


class PubSubQh3Tests(PubSubTests):
    quic_stack = "qh3"
    skip = QH3_SKIP


class MixedQh3Tests(MixedTests):
    quic_stack = "qh3"
    skip = QH3_SKIP


def send_groups(track: TrackPublisher, groups: int, per_group: int) -> None:
    for group in range(groups):
        for obj in range(per_group):
            track.send_object(group, obj, bytes([group, obj]) * (OBJECT_SIZE // 2))
        track.end_subgroup(group)
