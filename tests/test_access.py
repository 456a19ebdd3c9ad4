"""Tests for moqrelay.relay.access: what a token lets a session do, alone and in memory."""

from __future__ import annotations

from typing import cast

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from moqrelay.auth import Authorizer, DenialLog, encode_token_struct
from moqrelay.client.api import MoqtClient, RequestRejected
from moqrelay.client.token import make_token
from moqrelay.relay.access import PeerAccess
from moqrelay.session import MoqtSession
from moqrelay.wire import control as c
from moqrelay.wire.errors import (
    SessionErrorCode,
    SubscribeErrorCode,
)
from tests.fakes import FakeSession
from tests.helpers import MemoryRelay, Recorder, settle

NS = (b"live", b"demo")


SECRET = b"s" * 32


class AuthorizationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = MemoryRelay(authorizer=Authorizer(SECRET))
        self.clock = self.world.clock
        self.clock.advance(1_000_000)

    def token(
        self, publish: tuple[str, ...] = (), subscribe: tuple[str, ...] = (), ttl: float = 3600
    ) -> str:
        return make_token(
            SECRET, now=self.clock.seconds(), publish=publish, subscribe=subscribe, ttl=ttl
        )

    def publisher(self, path: str) -> MoqtClient:
        publisher, _, _ = self.world.connect(path)
        d = publisher.announce(NS)
        settle(self.clock)
        self.successResultOf(d)
        publisher.offer_track(NS, b"video")
        return publisher

    def test_without_a_token_everything_is_refused(self) -> None:
        client, side, _ = self.world.connect()
        d1 = client.announce(NS)
        d2 = client.subscribe(NS, b"video", Recorder())
        d3 = client.subscribe_namespace((b"live",))
        d4 = client.track_status(NS, b"video")
        d5 = client.publish_track(NS, b"x")
        settle(self.clock)
        for d in (d1, d2, d3, d4, d5):
            failure = self.failureResultOf(d, RequestRejected)
            self.assertIn("token", failure.value.reason)
        self.assertFalse(side.closed)

    def test_url_token_grants_its_prefixes_only(self) -> None:
        jwt = self.token(publish=("live",), subscribe=("live/demo",))
        self.publisher(f"/moq?jwt={jwt}")
        viewer, _, _ = self.world.connect(f"/moq?jwt={jwt}")
        allowed = viewer.subscribe(NS, b"video", Recorder())
        other = viewer.subscribe((b"live", b"other"), b"video", Recorder())
        settle(self.clock)
        self.successResultOf(allowed)
        failure = self.failureResultOf(other, RequestRejected)
        self.assertEqual(failure.value.code, SubscribeErrorCode.UNAUTHORIZED)
        self.assertIn("may not subscribe", failure.value.reason)
        elsewhere = viewer.announce((b"elsewhere",))
        settle(self.clock)
        self.assertEqual(self.failureResultOf(elsewhere, RequestRejected).value.code, 0x1)

    def test_setup_parameter_and_request_parameter_tokens(self) -> None:
        publish = self.token(publish=("live",))
        setup: list[c.Param] = [
            (c.SETUP_AUTHORIZATION_TOKEN, encode_token_struct(publish.encode()))
        ]
        publisher, _, _ = self.world.connect(setup_params=setup)
        d = publisher.announce(NS)
        settle(self.clock)
        self.successResultOf(d)
        publisher.offer_track(NS, b"video")
        viewer, _, _ = self.world.connect()
        token = encode_token_struct(self.token(subscribe=("",)).encode())
        subscribed = viewer.subscribe(
            NS, b"video", Recorder(), params=[(c.PARAM_AUTHORIZATION_TOKEN, token)]
        )
        settle(self.clock)
        self.successResultOf(subscribed)

    def test_bad_tokens_close_the_session(self) -> None:
        forged = make_token(b"x" * 32, now=self.clock.seconds(), publish=["live"])
        _, side, _ = self.world.connect(f"/?jwt={forged}")
        expired = make_token(SECRET, now=self.clock.seconds() - 100, ttl=10, publish=["live"])
        _, side2, _ = self.world.connect(f"/?jwt={expired}")
        settle(self.clock)
        self.assertEqual(side.close_code, SessionErrorCode.UNAUTHORIZED)
        self.assertEqual(side2.close_code, SessionErrorCode.EXPIRED_AUTH_TOKEN)
        self.assertEqual(len(self.world.relay.peers), 0)

    def test_session_closes_when_its_token_expires(self) -> None:
        jwt = self.token(subscribe=("live",), ttl=30)
        _, side, _ = self.world.connect(f"/?jwt={jwt}")
        self.clock.advance(29)
        settle(self.clock)
        self.assertFalse(side.closed)
        self.clock.advance(1)
        settle(self.clock)
        self.assertEqual(side.close_code, SessionErrorCode.EXPIRED_AUTH_TOKEN)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_namespace_watchers_only_see_what_they_may(self) -> None:
        self.publisher(f"/?jwt={self.token(publish=('live',))}")
        watcher, _, _ = self.world.connect(f"/?jwt={self.token(subscribe=('live/other',))}")
        refused = watcher.subscribe_namespace((b"live",))
        settle(self.clock)
        self.failureResultOf(refused, RequestRejected)
        allowed = watcher.subscribe_namespace((b"live", b"other"))
        settle(self.clock)
        self.successResultOf(allowed)
        self.assertEqual(watcher.discovered, [])


class PeerAccessTests(SynchronousTestCase):
    """`PeerAccess` alone, with a fake session and a clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.access = PeerAccess(Authorizer(SECRET), DenialLog(), self.clock)

    def token(
        self, publish: tuple[str, ...] = (), subscribe: tuple[str, ...] = (), ttl: float = 60
    ) -> str:
        return make_token(
            SECRET, now=self.clock.seconds(), publish=publish, subscribe=subscribe, ttl=ttl
        )

    def session(self, path: str) -> tuple[FakeSession, MoqtSession]:
        fake = FakeSession()
        fake.path = path
        return fake, cast(MoqtSession, fake)

    def test_an_open_relay_allows_everything(self) -> None:
        access = PeerAccess(None, DenialLog(), self.clock)
        self.assertIsNone(access.denied(True, (b"any",), []))

    def test_the_sessions_token_grants_until_it_expires_and_then_closes_it(self) -> None:
        fake, session = self.session(f"/moq?jwt={self.token(publish=('live',))}")
        self.access.authenticate(session, "peer")
        self.assertIsNone(self.access.denied(True, (b"live", b"a"), []))
        denied = self.access.denied(False, (b"live", b"a"), [])
        assert denied is not None
        self.assertEqual(denied.code, SessionErrorCode.UNAUTHORIZED)
        self.clock.advance(61)
        self.assertTrue(fake.closed)
        self.assertEqual(fake.close_code, SessionErrorCode.EXPIRED_AUTH_TOKEN)

    def test_closing_cancels_the_expiry(self) -> None:
        _, session = self.session(f"/moq?jwt={self.token(subscribe=('',))}")
        self.access.authenticate(session, "peer")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.access.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_forged_token_closes_the_session(self) -> None:
        forged = make_token(b"x" * 32, now=self.clock.seconds(), subscribe=("",))
        fake, session = self.session(f"/moq?jwt={forged}")
        self.access.authenticate(session, "peer")
        self.assertTrue(fake.closed)

    def test_a_requests_own_token_replaces_the_sessions(self) -> None:
        request_token = encode_token_struct(self.token(subscribe=("other",)).encode())
        params: list[c.Param] = [(c.PARAM_AUTHORIZATION_TOKEN, request_token)]
        self.assertIsNone(self.access.denied(False, (b"other",), params))
        self.assertIsNotNone(self.access.denied(False, (b"other",), []))
        self.assertIsNotNone(self.access.denied(False, (b"live",), params))

    def test_denials_are_logged_once_per_interval(self) -> None:
        with capturedLogs() as events:
            for _ in range(3):
                self.access.check("peer", "SUBSCRIBE", False, (b"x",), [])
        self.assertEqual(len([e for e in events if "denied" in e.get("log_format", "")]), 1)
