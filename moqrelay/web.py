"""Web layer (the TCP side of ``--bind``): the HTTP(S) site and its TLS settings.

`make_web_site` serves, over HTTP/1.1:

- a WebSocket upgrade on ANY path: handed to the WebSocket polyfill transport
  (`moqrelay.transport.websocket.WebSocketTransportFactory`), which then owns
  the connection;
- ``GET /fingerprint`` (only when a fingerprint is given, i.e. ``--dev``): the
  lowercase hex SHA-256 of the leaf certificate, readable from any origin;
- anything else: a short 404 or 426 text.

`tls_context_factory` builds the OpenSSL context for ``listenSSL`` /
``SSL4ServerEndpoint`` from the same `CertificateChain` objects QUIC uses: the
full chain (leaf and intermediates) is sent, and with several chains the one
matching the client's SNI name is picked.
"""

from __future__ import annotations

from typing import Any, cast

from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IOpenSSLContextFactory,
    IPushProducer,
)
from twisted.internet.protocol import connectionDone
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, combinedLogFormatter
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from moqrelay.auth import redact
from moqrelay.tls import CertificateChain, select_chain
from moqrelay.transport.websocket import SUBPROTOCOL, WebSocketTransportFactory

__all__ = ["make_web_site", "tls_context_factory"]

FINGERPRINT_PATH = b"/fingerprint"
_IDLE_TIMEOUT = 60.0


class _RelayResource(Resource):
    """The whole site: every path is a leaf of this one resource."""

    isLeaf = True

    def __init__(self, ws_factory: WebSocketTransportFactory, fingerprint: str | None) -> None:
        super().__init__()
        self._ws_factory = ws_factory
        self._fingerprint = fingerprint

    def render(self, request: Request) -> bytes | int:
        if _wants_websocket(request):
            return self._upgrade(request)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if request.path == FINGERPRINT_PATH and self._fingerprint is not None:
            if request.method not in (b"GET", b"HEAD"):
                request.setResponseCode(405)
                request.setHeader(b"allow", b"GET, HEAD")
                return b"method not allowed\n"
            request.setHeader(b"access-control-allow-origin", b"*")
            request.setHeader(b"cache-control", b"no-store")
            return self._fingerprint.lower().encode("ascii")
        if request.path == FINGERPRINT_PATH:
            request.setResponseCode(404)
            return b"not found (the fingerprint is only served with --dev)\n"
        request.setResponseCode(426)
        request.setHeader(b"upgrade", b"websocket")
        return (
            f"MoQ relay: connect with WebTransport, or WebSocket with the "
            f"{SUBPROTOCOL!r} subprotocol, on any path\n"
        ).encode()

    def _upgrade(self, request: Request) -> bytes | int:
        """Give the connection to the WebSocket transport and replay the request head to it."""
        channel: Any = request.channel
        transport = channel.transport
        if transport is None:
            request.setResponseCode(500)
            return b"connection already gone\n"
        protocol = self._ws_factory.buildProtocol(transport.getPeer())
        if protocol is None:
            request.setResponseCode(503)
            return b"not accepting WebSocket connections\n"
        # The HTTP channel stops hearing about this connection: it never finishes
        # the request and holds no timer while a request is being handled.
        channel.transport = None
        cast(IConsumer, transport).unregisterProducer()
        if isinstance(transport, ProtocolWrapper):
            transport.wrappedProtocol = protocol
        else:
            transport.protocol = protocol
        protocol.makeConnection(transport)
        producer = IPushProducer(transport, None)
        if producer is not None:
            producer.resumeProducing()
        protocol.dataReceived(_request_head(request))
        return NOT_DONE_YET


def _wants_websocket(request: Request) -> bool:
    upgrade = request.getHeader(b"upgrade")
    if upgrade is None:
        return False
    return any(token.strip().lower() == b"websocket" for token in upgrade.split(b","))


def _request_head(request: Request) -> bytes:
    lines = [b" ".join((request.method, request.uri, request.clientproto))]
    for name, values in request.requestHeaders.getAllRawHeaders():
        lines.extend(name + b": " + value for value in values)
    return b"\r\n".join(lines) + b"\r\n\r\n"


class _DeadlineChannel(HTTPChannel):
    """An HTTP channel that must receive a complete request head within a deadline.

    The site's idle timeout restarts with every byte, so a peer dribbling one
    byte at a time (slowloris) would hold the connection forever; this
    deadline does not restart.
    """

    head_timeout = 10.0
    _deadline: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._deadline = self.callLater(self.head_timeout, self._too_slow)

    def allHeadersReceived(self) -> None:
        self._cancel_deadline()
        super().allHeadersReceived()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_deadline()
        super().connectionLost(reason)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]


def _redacted_access_line(timestamp: str, request: Request) -> str:
    """Twisted's combined access-log line, with any token in the request URI hidden."""
    return redact(combinedLogFormatter(timestamp, request))


def make_web_site(
    reactor: Any,
    ws_factory: WebSocketTransportFactory,
    *,
    fingerprint: str | None,
    head_timeout: float = 10.0,
) -> Site:
    """The HTTP/1.1 site of the TCP port: WebSocket upgrades, ``/fingerprint``, short errors.

    A connection that has not sent a complete request head within
    ``head_timeout`` seconds is dropped.
    """
    site = Site(
        _RelayResource(ws_factory, fingerprint),
        timeout=_IDLE_TIMEOUT,
        reactor=reactor,
        logFormatter=_redacted_access_line,
    )
    site.displayTracebacks = False
    site.noisy = False

    def channel() -> HTTPChannel:
        made = _DeadlineChannel()
        made.head_timeout = head_timeout
        return made

    site.protocol = channel  # type: ignore[assignment]
    return site


def _server_context(chain: CertificateChain) -> SSL.Context:
    certificates = chain.certificates()
    key = serialization.load_pem_private_key(chain.key_pem, password=None)
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    context.use_certificate(certificates[0])
    for intermediate in certificates[1:]:
        context.add_extra_chain_cert(intermediate)
    context.use_privatekey(cast(Any, key))
    context.check_privatekey()
    return context


@implementer(IOpenSSLContextFactory)
class SNIContextFactory:
    """One OpenSSL context per chain; the first serves by default and switches on SNI.

    ``reload`` swaps the chains for new connections (SIGHUP).
    """

    def __init__(self, chains: list[CertificateChain]) -> None:
        self.reload(chains)

    def reload(self, chains: list[CertificateChain]) -> None:
        """Serve ``chains`` from the next connection on; open connections keep theirs."""
        if not chains:
            raise ValueError("at least one certificate chain is needed")
        contexts = [_server_context(chain) for chain in chains]
        if len(contexts) > 1:
            contexts[0].set_tlsext_servername_callback(self._server_name_received)
        self._chains, self._contexts = list(chains), contexts

    def getContext(self) -> SSL.Context:
        return self._contexts[0]

    def _server_name_received(self, connection: SSL.Connection) -> None:
        name = connection.get_servername()
        if not name:
            return
        chosen = select_chain(self._chains, name.decode("ascii", "replace"))
        for chain, context in zip(self._chains, self._contexts, strict=True):
            if chain is chosen:
                if context is not self._contexts[0]:
                    connection.set_context(context)
                return


def tls_context_factory(chains: list[CertificateChain]) -> SNIContextFactory:
    """TLS server settings for ``listenSSL`` / ``SSL4ServerEndpoint`` (HTTP/1.1, no ALPN)."""
    return SNIContextFactory(chains)
