"""Transport layer: open a client transport session to a URL over the transport its scheme names.

- ``moqt://host:port/path``: raw QUIC (ALPN moq-00), PATH and AUTHORITY in SETUP;
- ``https://host:port/path``: WebTransport over HTTP/3;
- ``wss://`` / ``ws://``: the WebSocket "webtransport" polyfill.

Both the relay (its --announce link) and the client tools use it. QUIC runs on
the stack ``quic_stack`` names, else on the one the ``MOQRELAY_QUIC_STACK``
environment variable names, else on the default one.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred

from moqrelay.transport.interfaces import HandlerFactory, ITransportSession

SCHEMES = ("moqt", "https", "wss", "ws")


def open_transport(
    reactor: Any,
    url: str,
    handler_factory: HandlerFactory,
    *,
    verify: bool = True,
    fingerprint: str | None = None,
    timeout: float = 10.0,
    quic_stack: str | None = None,
) -> Deferred[ITransportSession]:
    """A transport session to ``url``, over the transport its scheme names."""
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise ValueError(f"{url!r}: the scheme must be one of {', '.join(SCHEMES)}")
    if scheme in ("ws", "wss"):
        from moqrelay.transport.websocket import connect_websocket

        return connect_websocket(
            reactor, url, handler_factory, verify=verify, fingerprint=fingerprint, timeout=timeout
        )
    from moqrelay.transport.quic import connect_quic
    from moqrelay.transport.quicstack import DEFAULT_STACK, load_quic_stack
    from moqrelay.transport.webtransport import quic_applications

    stack = quic_stack or os.environ.get("MOQRELAY_QUIC_STACK", DEFAULT_STACK)
    return connect_quic(
        reactor,
        url,
        handler_factory,
        verify=verify,
        fingerprint=fingerprint,
        timeout=timeout,
        applications=quic_applications(),
        stack=load_quic_stack(stack),
    )
