"""Client layer: a MoQT client session, SETUP done, to a URL over the transport its scheme
names (`moqrelay.transport.connect.open_transport`)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from moqrelay.client.api import MoqtClient
from moqrelay.session import MoqtSession, SessionLimits
from moqrelay.transport.connect import open_transport
from moqrelay.transport.interfaces import ISessionHandler, ITransportSession


def connect(
    reactor: Any,
    url: str,
    *,
    verify: bool = True,
    fingerprint: str | None = None,
    timeout: float = 10.0,
    limits: SessionLimits | None = None,
) -> Deferred[MoqtClient]:
    """A `MoqtClient` whose SETUP is done, or a failure saying why not."""
    sessions: list[MoqtSession] = []

    def handler_factory(transport: ITransportSession) -> ISessionHandler:
        session = MoqtSession(transport, reactor, MoqtClient, limits)
        sessions.append(session)
        return session

    connected = open_transport(
        reactor, url, handler_factory, verify=verify, fingerprint=fingerprint, timeout=timeout
    )

    def ready(_: ITransportSession) -> Deferred[MoqtClient]:
        app = sessions[0].app
        assert isinstance(app, MoqtClient)
        return app.ready

    return connected.addCallback(ready)
