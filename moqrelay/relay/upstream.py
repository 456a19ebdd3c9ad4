"""Relay layer: --announce, the one client session to an upstream relay.

`UpstreamLink` keeps a MoQT client session to the relay named by
``--announce`` (raw QUIC, WebTransport or WebSocket). Its session is an
ordinary `RelayPeer` marked as the upstream: local namespaces are announced
to it, SUBSCRIBEs it sends for them are served like any viewer's, and a local
SUBSCRIBE that no local publisher can serve is pulled through it. When the
upstream is unreachable or the session breaks, the relay keeps serving its
local peers and reconnects with bounded exponential backoff and jitter; on
GOAWAY it reconnects at once. It never makes the relay exit.

Loops are impossible by two rules (see `Relay.track_for` and
`Relay.namespace_added`): namespaces announced by another relay are never
announced upstream, and a request that came from another relay is never
pulled through upstream. Chains are therefore origin/edge stars: every
request crosses at most one relay-to-relay hop each way.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from moqrelay.auth import redact
from moqrelay.relay.hub import Relay
from moqrelay.relay.peer import RelayPeer
from moqrelay.session import RELAY_IMPLEMENTATION, MoqtSession, SessionApp, SessionLimits
from moqrelay.transport.interfaces import HandlerFactory, ISessionHandler, ITransportSession
from moqrelay.wire import control as c
from moqrelay.wire.errors import SessionErrorCode

_log = Logger()

Connector = Callable[[str, HandlerFactory], Deferred[ITransportSession]]


class UpstreamLink:
    """One self-healing client session from this relay to an upstream relay."""

    def __init__(
        self,
        reactor: Any,
        relay: Relay,
        url: str,
        connector: Connector,
        *,
        limits: SessionLimits | None = None,
        initial_delay: float = 0.5,
        max_delay: float = 30.0,
        jitter: float = 0.25,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.reactor = reactor
        self.relay = relay
        self.url = url
        self.connector = connector
        self.limits = limits
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.jitter = jitter
        self.rng = rng
        self.delay = initial_delay
        self.running = False
        self.session: MoqtSession | None = None
        self.attempts = 0
        self.connections = 0
        self._retry: IDelayedCall | None = None
        self._closed_waiters: list[Deferred[None]] = []

    def start(self) -> None:
        self.running = True
        self._connect()

    def stop(self) -> Deferred[None]:
        """Stop reconnecting and close the session; fires once it is gone."""
        self.running = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        session = self.session
        if session is None or session.closed:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closed_waiters.append(d)
        session.close(SessionErrorCode.NO_ERROR, "relay shutting down")
        return d

    # -- connecting ------------------------------------------------------------

    def _connect(self) -> None:
        self._retry = None
        if not self.running:
            return
        self.attempts += 1
        try:
            d = self.connector(self.url, self._handler_factory)
        except Exception:
            _log.failure("cannot connect to upstream {url}", url=redact(self.url))
            self._schedule_retry()
            return
        d.addErrback(self._connect_failed)

    def _handler_factory(self, transport: ITransportSession) -> ISessionHandler:
        session = MoqtSession(
            transport,
            self.reactor,
            self._app_factory,
            self.limits,
            [(c.SETUP_MOQT_IMPLEMENTATION, RELAY_IMPLEMENTATION)],
        )
        self.session = session
        return session

    def _app_factory(self, session: MoqtSession) -> SessionApp:
        return _UpstreamPeer(self, self.relay, session)

    def _connect_failed(self, failure: Failure) -> None:
        _log.warn(
            "upstream {url} unreachable: {why}; retrying in {delay:.1f} s",
            url=redact(self.url),
            why=failure.getErrorMessage(),
            delay=self.delay,
        )
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        if not self.running or self._retry is not None:
            return
        spread = self.delay * self.jitter
        wait = self.delay - spread + 2 * spread * self.rng()
        self._retry = self.reactor.callLater(wait, self._connect)
        self.delay = min(self.max_delay, self.delay * 2)

    # -- session events (from the upstream peer) -------------------------------

    def ready(self, peer: RelayPeer) -> None:
        self.delay = self.initial_delay
        self.connections += 1
        _log.info("connected to upstream {url}", url=redact(self.url))
        self.relay.upstream_ready(peer)

    def goaway(self, session: MoqtSession) -> None:
        """The upstream is going away: reconnect now (its streams still drain)."""
        _log.info("upstream {url} sent GOAWAY; reconnecting", url=redact(self.url))
        session.close(SessionErrorCode.NO_ERROR, "GOAWAY received")

    def ended(self, session: MoqtSession) -> None:
        if self.session is session:
            self.session = None
        waiters, self._closed_waiters = self._closed_waiters, []
        for d in waiters:
            d.callback(None)
        if self.running:
            _log.warn("upstream session to {url} ended; reconnecting", url=redact(self.url))
            self._schedule_retry()


class _UpstreamPeer(RelayPeer):
    """The RelayPeer of the upstream session, reporting its life to the link."""

    def __init__(self, link: UpstreamLink, relay: Relay, session: MoqtSession) -> None:
        super().__init__(relay, session)
        self.link = link
        self.is_relay = True
        self.is_upstream = True

    def session_ready(self) -> None:
        super().session_ready()
        self.link.ready(self)

    def _on_goaway(self, msg: c.GoAway) -> None:
        self.link.goaway(self.session)

    def session_ended(self, code: int, reason: str) -> None:
        super().session_ended(code, reason)
        self.link.ended(self.session)
