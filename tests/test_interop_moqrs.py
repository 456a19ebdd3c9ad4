"""Interop tests (application layer, end to end): moq-dev's library (``moq-rs``) and our relay.

moq-dev's Rust library, published on PyPI as ``moq-rs`` (module ``moq``), is driven
by `tests/moqrs_peer.py`, run as a subprocess of this interpreter against a
RelayService on 127.0.0.1 (ephemeral ports), over raw QUIC (ALPN ``moq-00``),
WebTransport and its WebSocket fallback (which speaks our "webtransport"
polyfill). It negotiates draft-14 (``moq-transport-14``) with the relay and
learns broadcasts through SUBSCRIBE_NAMESPACE with an empty prefix. Without the
package every test is skipped with the command that installs it. Each
subprocess ends by itself (``--timeout``), under a hard timeout here too, and is
killed and reaped when its test ends.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from twisted.internet import reactor
from twisted.trial.unittest import SkipTest

from moqrelay.auth import Authorizer
from moqrelay.client.api import TrackPublisher
from moqrelay.client.token import make_token
from moqrelay.client.tools import with_token
from moqrelay.wire.data import STATUS_END_OF_TRACK, STATUS_NORMAL
from tests.helpers import Recorder
from tests.live import RelayFixture, wait_until
from tests.test_interop import ToolProcess

REPO_ROOT = Path(__file__).resolve().parent.parent
PEER = Path(__file__).resolve().parent / "moqrs_peer.py"
INSTALL = f"{sys.executable} -m pip install -e '.[interop]' (moq-rs 0.5.1, in {REPO_ROOT})"
KEPT_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")

SECRET = b"0123456789abcdef0123456789abcdef"
BROADCAST = "test/ns"
NS = (b"test", b"ns")
TRACK = "t1"
GROUPS = 5
FRAMES = 4
SIZE = 256
# How long a peer may take, and the hard limit after which it is killed.
PEER_TIMEOUT = 20.0
HARD_TIMEOUT = PEER_TIMEOUT + 10.0

_GROUP_LINE = re.compile(r"^group (\d+) frames (\d+) (intact|corrupt)$", re.M)


def _environment() -> dict[str, str]:
    env = {name: os.environ[name] for name in KEPT_ENVIRONMENT if name in os.environ}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@functools.cache
def moqrs_missing() -> str | None:
    """Why moq-rs cannot run here, or None when it can."""
    try:
        probe = subprocess.run(
            [sys.executable, "-c", "import moq"],
            capture_output=True,
            timeout=30,
            env=_environment(),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot probe for moq-rs ({exc}); install it: {INSTALL}"
    if probe.returncode != 0:
        last = probe.stderr.decode(errors="replace").strip().splitlines()[-1:]
        return f"moq-rs is not importable ({' '.join(last)}); install it: {INSTALL}"
    return None


def payload(group: int, frame: int) -> bytes:
    """What moqrs_peer.py sends as frame ``frame`` of group ``group`` (and checks)."""
    head = f"{group}:{frame}:".encode()
    return head + b"\0" * (SIZE - len(head))


def groups_seen(stdout: str) -> list[tuple[int, int, str]]:
    """(group, frames, intact|corrupt) for every group the subscriber printed."""
    return [(int(g), int(n), state) for g, n, state in _GROUP_LINE.findall(stdout)]


class MoqrsFixture(RelayFixture):
    """A relay on 127.0.0.1 plus moq-rs peers, all gone after each test."""

    timeout = 90

    def setUp(self) -> None:
        why_not = moqrs_missing()
        if why_not is not None:
            raise SkipTest(why_not)
        self.workdir = Path(self.mktemp())
        self.workdir.mkdir(parents=True)

    def peer(self, role: str, url: str, *extra: str) -> ToolProcess:
        """Run ``moqrs_peer.py ROLE URL``; killed and reaped at cleanup."""
        tool = ToolProcess(f"moq-rs {role}", b"announced" if role == "pub" else b"subscribed")
        argv = [sys.executable, str(PEER), role, url, "--broadcast", BROADCAST, "--track", TRACK]
        argv += ["--groups", str(GROUPS), "--frames", str(FRAMES), "--size", str(SIZE)]
        argv += ["--timeout", str(PEER_TIMEOUT), "--log", "info", "--wait-go", *extra]
        tool.process = reactor.spawnProcess(
            tool, sys.executable, argv, env=_environment(), path=str(self.workdir)
        )
        tool.timer = reactor.callLater(HARD_TIMEOUT, tool.hard_timeout)
        self.addCleanup(tool.stop)
        return tool

    async def finished(self, tool: ToolProcess) -> str:
        """Wait for the peer to exit on its own; its stdout. Fails unless it exited 0."""
        await tool.ended
        if tool.timed_out:
            self.fail(f"{tool.name} hit its hard timeout and was killed\n{tool.output()}")
        self.assertEqual(tool.exit_code, 0, tool.output())
        return tool.stdout.decode(errors="replace")

    async def started(self, tool: ToolProcess) -> None:
        """The publisher announced, or the subscriber has its SUBSCRIBE_OK."""
        if not await tool.ready:
            self.fail(f"{tool.name} ended before it was ready\n{tool.output()}")

    def go(self, publisher: ToolProcess) -> None:
        """Let the publisher send (it waits once subscribed: see moqrs_peer.py)."""
        assert publisher.process is not None
        publisher.process.write(b"go\n")

    def assertAllGroups(self, stdout: str, context: str) -> None:
        expected = [(group, FRAMES, "intact") for group in range(GROUPS)]
        self.assertEqual(sorted(groups_seen(stdout)), expected, context)
        self.assertIn(f"done {GROUPS} groups", stdout, context)


class PubSubTests(MoqrsFixture):
    """moq-rs publisher -> our relay -> moq-rs subscriber, every group intact."""

    async def check(
        self, scheme: str, *extra: str, authorizer: Authorizer | None = None, tokens: bool = False
    ) -> None:
        await self.start_relay(authorizer)
        url = self.url(scheme)
        pub_url, sub_url = url, url
        if tokens:
            now = time.time()
            pub_url = with_token(url, make_token(SECRET, now=now, publish=[BROADCAST]))
            # The empty-prefix SUBSCRIBE_NAMESPACE that moq-rs needs takes a grant of "".
            sub_url = with_token(url, make_token(SECRET, now=now, subscribe=[""]))
        pub = self.peer("pub", pub_url, *extra)
        await self.started(pub)
        sub = self.peer("sub", sub_url, *extra)
        await self.started(sub)
        self.go(pub)
        sub_out = await self.finished(sub)
        await self.finished(pub)
        self.assertAllGroups(sub_out, f"{pub.output()}\n{sub.output()}")

    async def test_raw_quic(self) -> None:
        await self.check("moqt")

    async def test_webtransport(self) -> None:
        await self.check("https")

    async def test_websocket(self) -> None:
        await self.check("wss", "--websocket")

    async def test_tokens_in_the_url(self) -> None:
        """moq-rs passes ``?jwt=`` on to the relay, which checks it (--auth-key)."""
        await self.check("moqt", authorizer=Authorizer(SECRET), tokens=True)


class MixedTests(MoqrsFixture):
    """Our client API on one side of the relay, moq-rs on the other."""

    async def test_moqrs_publisher_to_our_viewer(self) -> None:
        await self.start_relay()
        pub = self.peer("pub", self.url("moqt"))
        await self.started(pub)
        viewer = await self.client("wss")
        await wait_until(lambda: self.service.relay.directory.lookup(NS) is not None)
        received = Recorder()
        await viewer.subscribe(NS, TRACK.encode(), received)
        self.go(pub)
        await self.finished(pub)
        await wait_until(lambda: len(received.objects) > GROUPS * FRAMES)
        normal = [o for o in received.objects if o.status == STATUS_NORMAL]
        expected = [(g, f) for g in range(GROUPS) for f in range(FRAMES)]
        self.assertEqual([(o.group_id, o.object_id) for o in normal], expected, pub.output())
        self.assertEqual([o.payload for o in normal], [payload(g, f) for g, f in expected])
        # moq-rs ends the track with an END_OF_TRACK object in the next group.
        ends = [(o.group_id, o.object_id, o.status) for o in received.objects if o not in normal]
        self.assertEqual(ends, [(GROUPS, 0, STATUS_END_OF_TRACK)], pub.output())

    async def test_our_publisher_to_moqrs_subscriber(self) -> None:
        await self.start_relay()
        publisher = await self.client("wss")
        await publisher.announce(NS)
        track = publisher.offer_track(NS, TRACK.encode())
        sub = self.peer("sub", self.url("moqt"))
        await wait_until(lambda: track.subscribed.called or sub.ended.called)
        if not track.subscribed.called:
            self.fail(f"the moq-rs subscriber ended before the relay subscribed\n{sub.output()}")
        send_groups(track)
        self.assertAllGroups(await self.finished(sub), sub.output())


def send_groups(track: TrackPublisher) -> None:
    for group in range(GROUPS):
        for frame in range(FRAMES):
            track.send_object(group, frame, payload(group, frame))
        track.end_subgroup(group)
