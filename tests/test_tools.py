"""Tests for moqrelay.client.tools: the moqrelay-pub and moqrelay-sub building blocks, and
the commands themselves, run as subprocesses against a relay on 127.0.0.1."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.task import LoopingCall
from twisted.trial.unittest import SynchronousTestCase

from moqrelay.auth import Authorizer
from moqrelay.client.api import ReceivedObject, RequestRejected, SessionLost
from moqrelay.client.token import make_token
from moqrelay.client.tools import (
    SubStats,
    ToolError,
    check_url,
    failure_line,
    parse_namespace,
    pub_parser,
    read_stamp,
    redacted_url,
    stamped_payload,
    sub_parser,
    with_token,
)
from tests.live import NS, RelayFixture, wait_until
from tests.test_interop import ToolProcess

REPO_ROOT = Path(__file__).resolve().parent.parent
SECRET = b"0123456789abcdef0123456789abcdef"


class ToolTests(SynchronousTestCase):
    def test_namespaces_map_paths_to_tuples(self) -> None:
        self.assertEqual(parse_namespace("live/demo"), (b"live", b"demo"))
        self.assertEqual(parse_namespace("/live//demo/"), (b"live", b"demo"))
        self.assertRaises(argparse.ArgumentTypeError, parse_namespace, "/")

    def test_stamps(self) -> None:
        payload = stamped_payload(7, 1024, 123_456_789)
        self.assertEqual(len(payload), 1024)
        self.assertEqual(read_stamp(payload), (7, 123_456_789))
        self.assertIsNone(read_stamp(b"plain payload of some length"))
        self.assertEqual(len(stamped_payload(1, 4, 0)), 16)

    def test_stats_count_latency_and_loss(self) -> None:
        stats = SubStats()
        for sequence in (0, 1, 3):
            payload = stamped_payload(sequence, 64, 1_000_000)
            stats.add(ReceivedObject(0, 0, sequence, payload, 0, b""), 3_000_000)
        self.assertEqual(stats.objects, 3)
        self.assertEqual(stats.latencies, [2.0, 2.0, 2.0])
        summary = stats.summary()
        self.assertIn("3 objects, 192 bytes", summary)
        self.assertIn("p50 2.00", summary)
        self.assertIn("1 lost", summary)

    def test_token_goes_into_the_query(self) -> None:
        self.assertEqual(with_token("wss://h:1/moq", None), "wss://h:1/moq")
        self.assertEqual(with_token("wss://h:1/moq", "a.b.c"), "wss://h:1/moq?jwt=a.b.c")
        self.assertEqual(with_token("moqt://h:1/p?x=1", "t"), "moqt://h:1/p?x=1&jwt=t")

    def test_parsers(self) -> None:
        args = pub_parser().parse_args(["wss://h/", "-N", "a/b", "-T", "t", "-r", "0"])
        self.assertEqual(args.namespace, (b"a", b"b"))
        self.assertEqual(args.rate, 0.0)
        args = sub_parser().parse_args(["moqt://h/", "-N", "a", "-T", "t", "--count", "-k"])
        self.assertTrue(args.count and args.insecure)

    def test_urls_are_checked_and_printed_without_their_query(self) -> None:
        check_url("moqt://127.0.0.1:4443/moq")
        check_url("wss://relay.example/")
        for bad in ("foo://x/", "wss://x:99999/", "wss:///path", "live/a"):
            self.assertRaises(ToolError, check_url, bad)
        self.assertEqual(redacted_url("wss://h:1/moq?jwt=secret#x"), "wss://h:1/moq")
        with self.assertRaises(ToolError) as caught:
            check_url("foo://h/?jwt=secret")
        self.assertNotIn("secret", str(caught.exception))

    def test_expected_failures_have_one_line_and_bugs_none(self) -> None:
        rejected = RequestRejected(1, "may not subscribe to live/a")
        self.assertEqual(failure_line(rejected), "refused: may not subscribe to live/a")
        self.assertEqual(failure_line(SessionLost("bye")), "session closed: bye")
        self.assertEqual(failure_line(ToolError("bad URL")), "bad URL")
        self.assertIsNone(failure_line(KeyError("a bug")))


class Command(ToolProcess):
    """One moqrelay-pub or moqrelay-sub process; it may close its end of stdout."""

    def __init__(self, name: str, close_stdout_after: int | None = None) -> None:
        super().__init__(name, None)
        self.close_stdout_after = close_stdout_after

    def outReceived(self, data: bytes) -> None:
        super().outReceived(data)
        after = self.close_stdout_after
        if after is not None and self.stdout.count(b"\n") >= after:
            self.close_stdout_after = None
            assert self.process is not None
            # As ``| head -n AFTER`` does: the reader goes away.
            self.process.closeChildFD(1)

    def error_lines(self) -> list[str]:
        return self.stderr.decode(errors="replace").splitlines()


class CommandTests(RelayFixture):
    """The commands' exit status and stderr for expected failures, as users see them."""

    timeout = 60

    def command(self, main: str, *argv: str, close_stdout_after: int | None = None) -> Command:
        """Run ``moqrelay.client.tools.MAIN`` with ``argv`` (what the console script does)."""
        tool = Command(main, close_stdout_after)
        code = f"from moqrelay.client.tools import {main}; {main}()"
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO_ROOT)}
        args = [sys.executable, "-c", code, *argv]
        tool.process = reactor.spawnProcess(tool, sys.executable, args, env=env)
        tool.timer = reactor.callLater(30, tool.hard_timeout)
        self.addCleanup(tool.stop)
        return tool

    async def fails(self, tool: Command, line: str) -> None:
        """The command exits with status 1, and its stderr is ``line`` alone."""
        await tool.ended
        self.assertFalse(tool.timed_out, tool.output())
        self.assertEqual((tool.exit_code, tool.error_lines()), (1, [line]), tool.output())

    def token(
        self, *, subscribe: tuple[str, ...] = (), publish: tuple[str, ...] = (), age: float = 0
    ) -> str:
        """A token with these grants, valid for 60 s from ``age`` seconds ago."""
        now = time.time() - age
        return make_token(SECRET, now=now, publish=publish, subscribe=subscribe, ttl=60)

    async def test_a_refused_subscription(self) -> None:
        await self.start_relay(Authorizer(SECRET))
        token = self.token(subscribe=("live/b",))
        url = self.url("wss")
        tool = self.command("sub_main", url, "-k", "-N", "live/a", "-T", "v", "--token", token)
        await self.fails(tool, "moqrelay-sub: refused: may not subscribe to live/a")

    async def test_a_refused_announcement(self) -> None:
        await self.start_relay(Authorizer(SECRET))
        token = self.token(publish=("live/b",))
        url = self.url("moqt")
        tool = self.command("pub_main", url, "-k", "-N", "live/a", "-T", "v", "--token", token)
        await self.fails(tool, "moqrelay-pub: refused: may not publish live/a")

    async def test_an_expired_token(self) -> None:
        await self.start_relay(Authorizer(SECRET))
        token = self.token(subscribe=("live",), age=3600)
        url = self.url("https")
        tool = self.command("sub_main", url, "-k", "-N", "live/a", "-T", "v", "--token", token)
        await tool.ended
        self.assertEqual(tool.exit_code, 1, tool.output())
        (line,) = tool.error_lines()
        self.assertRegex(line, r"^moqrelay-sub: session refused: token expired")
        self.assertNotIn(token, line)

    async def test_a_bad_token(self) -> None:
        await self.start_relay(Authorizer(SECRET))
        url = self.url("wss")
        tool = self.command("sub_main", url, "-k", "-N", "live/a", "-T", "v", "--token", "x.y.z")
        await tool.ended
        self.assertEqual(tool.exit_code, 1, tool.output())
        (line,) = tool.error_lines()
        self.assertRegex(line, r"^moqrelay-sub: session (refused|closed): token malformed")

    async def test_a_relay_that_is_down_and_a_bad_url(self) -> None:
        await self.start_relay()
        port = self.tcp_port
        await self.service.stopService()
        down = self.command("sub_main", f"wss://127.0.0.1:{port}/", "-k", "-N", "a", "-T", "v")
        bad = self.command("pub_main", "foo://127.0.0.1/?jwt=t", "-N", "a", "-T", "v")
        await self.fails(
            down,
            f"moqrelay-sub: cannot connect to wss://127.0.0.1:{port}/: Connection was refused "
            "by other side: 111: Connection refused.",
        )
        await self.fails(
            bad,
            "moqrelay-pub: bad URL 'foo://127.0.0.1/': give moqt|https|wss|ws://host:port/path",
        )

    async def test_a_closed_stdout_ends_quietly(self) -> None:
        await self.start_relay()
        _, track = await self.publisher("wss")
        sent = 0

        def send() -> None:
            nonlocal sent
            track.send_object(sent // 10, sent % 10, b"x" * 100)
            sent += 1

        sender = LoopingCall(send)
        sender.clock = reactor
        tool = self.command(
            "sub_main",
            self.url("moqt"),
            "-k",
            "-N",
            "/".join(f.decode() for f in NS),
            "-T",
            "video",
            close_stdout_after=3,
        )
        await wait_until(lambda: track.subscribed.called or tool.ended.called)
        sender.start(0.01)
        self.addCleanup(lambda: sender.stop() if sender.running else None)
        await tool.ended
        self.assertFalse(tool.timed_out, tool.output())
        self.assertEqual((tool.exit_code, tool.error_lines()), (0, []), tool.output())
        self.assertGreaterEqual(tool.stdout.count(b"\n"), 3)
