"""Tests for the web layer (moqrelay.web): /fingerprint, WebSocket upgrades on any path, TLS."""

from __future__ import annotations

import datetime
from collections.abc import Generator
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener, IListeningPort, IReactorSSL
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.server import Site
from zope.interface import implementer

from moqrelay.tls import CertificateChain, chain_from_pem, generate_dev_chain
from moqrelay.transport.interfaces import ITransportSession
from moqrelay.transport.websocket import (
    WebSocketTransportFactory,
    client_tls_options,
    connect_websocket,
)
from moqrelay.web import make_web_site, tls_context_factory
from tests.test_websocket import (
    ClientHandler,
    EchoHandler,
    Tracker,
    client_disconnected,
    listen,
    port_number,
    raw_request,
)

FINGERPRINT = "0123456789abcdef" * 4


@implementer(IHandshakeListener)
class _HTTPClient(Protocol):
    """Sends one HTTP/1.0 request and collects the whole response until the server closes."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.response = b""
        self.peer_chain: list[x509.Certificate] = []
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def handshakeCompleted(self) -> None:
        handle = cast(SSL.Connection, self.transport.getHandle())  # type: ignore[union-attr]
        self.peer_chain = handle.get_peer_cert_chain(as_cryptography=True) or []

    def dataReceived(self, data: bytes) -> None:
        self.response += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.done.callback(self.response)


@inlineCallbacks
def http_request(
    port: int, request: bytes, *, tls_name: str | None = None
) -> Generator[Deferred[Any], Any, _HTTPClient]:
    """Send ``request`` over TCP (or TLS with SNI ``tls_name``) and wait for the response."""
    endpoint: Any = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    if tls_name is not None:
        endpoint = wrapClientTLS(client_tls_options(tls_name, verify=False), endpoint)
    client = _HTTPClient(request)
    yield endpoint.connect(Factory.forProtocol(lambda: client))
    yield client.done
    return client


def split_response(response: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def chain_with_intermediate(name: str) -> tuple[CertificateChain, x509.Certificate]:
    """A leaf for ``name`` signed by an intermediate signed by a root: leaf + intermediate PEM."""
    now = datetime.datetime.now(datetime.UTC)

    def build(
        subject: str,
        issuer: str,
        public: ec.EllipticCurvePublicKey,
        signer: ec.EllipticCurvePrivateKey,
        ca: bool,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    root_key, middle_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    middle = build("test intermediate", "test root", middle_key.public_key(), root_key, True)
    leaf = build(name, "test intermediate", leaf_key.public_key(), middle_key, False)
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, middle))
    key_pem = leaf_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return chain_from_pem(pem, key_pem), middle


class SiteTests(TestCase):
    """The plain-HTTP site: /fingerprint, short errors, WebSocket upgrades on any path."""

    timeout = 30

    def setUp(self) -> None:
        self.server_handlers: list[EchoHandler] = []
        self.client_handlers: list[ClientHandler] = []
        self.client_lost: list[Deferred[None]] = []
        self.ws_factory = WebSocketTransportFactory(reactor, self.server_factory)
        self.tracker = Tracker(make_web_site(reactor, self.ws_factory, fingerprint=FINGERPRINT))
        self.port = listen(self.tracker)
        self.addCleanup(self.cleanup)

    def server_factory(self, session: ITransportSession) -> EchoHandler:
        self.server_handlers.append(EchoHandler(session))
        return self.server_handlers[-1]

    def client_factory(self, session: ITransportSession) -> ClientHandler:
        self.client_handlers.append(ClientHandler(session))
        self.client_lost.append(client_disconnected(session))
        return self.client_handlers[-1]

    @inlineCallbacks
    def cleanup(self) -> Generator[Deferred[Any], Any, None]:
        for handler in self.client_handlers:
            handler.session.close(0, "test over")
        yield self.tracker.all_lost()
        yield defer.gatherResults(self.client_lost)
        yield defer.maybeDeferred(self.port.stopListening)

    def test_make_web_site_returns_a_site(self) -> None:
        site = make_web_site(reactor, self.ws_factory, fingerprint=None)
        self.assertIsInstance(site, Site)

    @inlineCallbacks
    def test_fingerprint(self) -> Generator[Deferred[Any], Any, None]:
        for path in (b"/fingerprint", b"/fingerprint?cache=1"):
            client = yield http_request(
                port_number(self.port), b"GET " + path + b" HTTP/1.0\r\n\r\n"
            )
            status, headers, body = split_response(client.response)
            self.assertEqual(status, b"HTTP/1.0 200 OK")
            self.assertEqual(body, FINGERPRINT.encode())
            self.assertEqual(headers[b"access-control-allow-origin"], b"*")
            self.assertTrue(headers[b"content-type"].startswith(b"text/plain"))

    @inlineCallbacks
    def test_fingerprint_post_not_allowed(self) -> Generator[Deferred[Any], Any, None]:
        client = yield http_request(
            port_number(self.port), b"POST /fingerprint HTTP/1.0\r\nContent-Length: 0\r\n\r\n"
        )
        status, headers, _ = split_response(client.response)
        self.assertEqual(status.split(b" ")[1], b"405")
        self.assertEqual(headers[b"allow"], b"GET, HEAD")

    @inlineCallbacks
    def test_other_paths_need_upgrade(self) -> Generator[Deferred[Any], Any, None]:
        client = yield http_request(port_number(self.port), b"GET /moq HTTP/1.0\r\n\r\n")
        status, headers, body = split_response(client.response)
        self.assertEqual(status.split(b" ")[1], b"426")
        self.assertEqual(headers[b"upgrade"], b"websocket")
        self.assertIn(b"webtransport", body)
        self.assertLess(len(body), 200)

    @inlineCallbacks
    def test_websocket_on_any_path(self) -> Generator[Deferred[Any], Any, None]:
        url = f"ws://127.0.0.1:{port_number(self.port)}"
        for number, path in enumerate(("/moq?room=1", "/", "/fingerprint", "/a/b/c")):
            session = yield connect_websocket(reactor, url + path, self.client_factory)
            client = self.client_handlers[number]
            stream = session.open_bidi_stream()
            client.watch(stream)
            stream.write(path.encode())
            stream.finish()
            self.assertEqual((yield client.ended(0)), path.encode())
            self.assertEqual(self.server_handlers[number].session.path, path)
        self.assertEqual(len(self.server_handlers), 4)

    @inlineCallbacks
    def test_websocket_requires_webtransport(self) -> Generator[Deferred[Any], Any, None]:
        response = yield raw_request(port_number(self.port), "qmux-00")
        self.assertTrue(response.startswith(b"HTTP/1.1 400 "), response)
        self.assertEqual(self.server_handlers, [])

    @inlineCallbacks
    def test_abrupt_drop_after_upgrade(self) -> Generator[Deferred[Any], Any, None]:
        url = f"ws://127.0.0.1:{port_number(self.port)}/moq"
        session = yield connect_websocket(reactor, url, self.client_factory)
        session.open_uni_stream().write(b"x")
        session.abort()
        code, _ = yield self.server_handlers[0].closed_d
        yield self.tracker.all_lost()
        self.assertEqual(code, 0)
        self.assertEqual(len(self.server_handlers[0].closed), 1)


class NoFingerprintTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_fingerprint_not_served(self) -> Generator[Deferred[Any], Any, None]:
        factory = WebSocketTransportFactory(reactor, EchoHandler)
        port = listen(make_web_site(reactor, factory, fingerprint=None))
        try:
            client = yield http_request(port_number(port), b"GET /fingerprint HTTP/1.0\r\n\r\n")
        finally:
            yield defer.maybeDeferred(port.stopListening)
        status, headers, _ = split_response(client.response)
        self.assertEqual(status.split(b" ")[1], b"404")
        self.assertNotIn(b"access-control-allow-origin", headers)


class TLSTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.dev = generate_dev_chain()
        self.other, self.intermediate = chain_with_intermediate("relay.example")
        self.ports: list[IListeningPort] = []
        self.addCleanup(self.stop_listening)

    def stop_listening(self) -> Deferred[Any]:
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in self.ports])

    def site(self, fingerprint: str | None = None) -> Site:
        factory = WebSocketTransportFactory(reactor, EchoHandler)
        return make_web_site(reactor, factory, fingerprint=fingerprint)

    def test_needs_a_chain(self) -> None:
        self.assertRaises(ValueError, tls_context_factory, [])

    @inlineCallbacks
    def test_listen_ssl_fingerprint(self) -> Generator[Deferred[Any], Any, None]:
        context = tls_context_factory([self.dev])
        site = self.site(self.dev.fingerprint())
        port = cast(IReactorSSL, reactor).listenSSL(0, site, context, interface="127.0.0.1")
        self.ports.append(port)
        client = yield http_request(
            port_number(port), b"GET /fingerprint HTTP/1.0\r\n\r\n", tls_name="localhost"
        )
        status, _, body = split_response(client.response)
        self.assertEqual(status, b"HTTP/1.0 200 OK")
        self.assertEqual(body.decode(), self.dev.fingerprint())
        self.assertEqual(
            [c.fingerprint(hashes.SHA256()).hex() for c in client.peer_chain],
            [self.dev.fingerprint()],
        )

    @inlineCallbacks
    def sni_peer_chain(self, name: str) -> Generator[Deferred[Any], Any, list[x509.Certificate]]:
        context = tls_context_factory([self.dev, self.other])
        endpoint = SSL4ServerEndpoint(reactor, 0, context, interface="127.0.0.1")
        port = yield endpoint.listen(self.site())
        self.ports.append(port)
        client = yield http_request(port_number(port), b"GET /x HTTP/1.0\r\n\r\n", tls_name=name)
        self.assertIn(b" 426 ", client.response.split(b"\r\n")[0])
        peer_chain: list[x509.Certificate] = client.peer_chain
        return peer_chain

    @inlineCallbacks
    def test_sni_picks_chain_and_sends_intermediates(self) -> Generator[Deferred[Any], Any, None]:
        chain = yield self.sni_peer_chain("relay.example")
        self.assertEqual(len(chain), 2)
        self.assertEqual(chain[0].fingerprint(hashes.SHA256()).hex(), self.other.fingerprint())
        self.assertEqual(chain[1], self.intermediate)

    @inlineCallbacks
    def test_sni_default_chain(self) -> Generator[Deferred[Any], Any, None]:
        for name in ("localhost", "unknown.example", "127.0.0.1"):
            chain = yield self.sni_peer_chain(name)
            self.assertEqual(
                [c.fingerprint(hashes.SHA256()).hex() for c in chain], [self.dev.fingerprint()]
            )

    @inlineCallbacks
    def test_wss_through_site(self) -> Generator[Deferred[Any], Any, None]:
        handlers: list[EchoHandler] = []

        def server_factory(session: ITransportSession) -> EchoHandler:
            handlers.append(EchoHandler(session))
            return handlers[-1]

        site = make_web_site(
            reactor, WebSocketTransportFactory(reactor, server_factory), fingerprint=None
        )
        # Like listenSSL, with the connection tracker outside TLS.
        tracker = Tracker(TLSMemoryBIOFactory(tls_context_factory([self.dev]), False, site))
        port = listen(tracker)
        self.ports.append(port)
        clients: list[ClientHandler] = []

        def client_factory(session: ITransportSession) -> ClientHandler:
            clients.append(ClientHandler(session))
            return clients[-1]

        url = f"wss://localhost:{port_number(port)}/secure?x=y"
        session = yield connect_websocket(
            reactor, url, client_factory, fingerprint=self.dev.fingerprint()
        )
        lost = client_disconnected(session)
        stream = session.open_uni_stream()
        stream.write(b"hello over https")
        stream.finish()
        self.assertEqual((yield clients[0].ended(3)), b"hello over https")
        self.assertEqual(handlers[0].session.path, "/secure?x=y")
        session.close(0, "done")
        yield handlers[0].closed_d
        yield tracker.all_lost()
        yield lost
        self.assertEqual(handlers[0].closed, [(0, "done")])
