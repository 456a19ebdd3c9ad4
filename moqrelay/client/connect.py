"""Client layer: open a MoQT client session to a URL over the transport its scheme names.

- ``moqt://host:port/path``: raw QUIC (ALPN moq-00), PATH and AUTHORITY in SETUP;
- ``https://host:port/path``: WebTransport over HTTP/3;
- ``wss://`` / ``ws://``: the WebSocket "webtransport" polyfill.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred

from moqrelay.client.api import MoqtClient
from moqrelay.session import MoqtSession, SessionLimits
from moqrelay.transport.interfaces import ISessionHandler, ITransportSession

SCHEMES = ("moqt", "https", "wss", "ws")


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
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise ValueError(f"{url!r}: the scheme must be one of {', '.join(SCHEMES)}")
    sessions: list[MoqtSession] = []

    def handler_factory(transport: ITransportSession) -> ISessionHandler:
        session = MoqtSession(transport, reactor, MoqtClient, limits)
        sessions.append(session)
        return session

    connected: Deferred[ITransportSession]
    if scheme in ("ws", "wss"):
        from moqrelay.transport.websocket import connect_websocket

        connected = connect_websocket(
            reactor, url, handler_factory, verify=verify, fingerprint=fingerprint, timeout=timeout
        )
    else:
        from moqrelay.transport.quic import connect_quic

        connected = connect_quic(
            reactor, url, handler_factory, verify=verify, fingerprint=fingerprint, timeout=timeout
        )

    def ready(_: ITransportSession) -> Deferred[MoqtClient]:
        app = sessions[0].app
        assert isinstance(app, MoqtClient)
        return app.ready

    return connected.addCallback(ready)
