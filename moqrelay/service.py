"""Application layer: the service tree (QUIC over UDP, HTTPS/WebSocket over TCP, extra endpoints).

`RelayService` owns the shared `Relay`; its children listen. Stopping it stops
listening, closes every session, and fires only once the reaper has drained,
so nothing the relay owned outlives the service.
"""

from __future__ import annotations

import gc
import signal
import socket
import sys
import threading
from typing import TYPE_CHECKING, Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, gatherResults, maybeDeferred
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from moqrelay.auth import Authorizer
from moqrelay.client.connect import open_transport
from moqrelay.relay.hub import Relay, RelayConfig
from moqrelay.relay.upstream import UpstreamLink
from moqrelay.session import MoqtSession, SessionLimits
from moqrelay.tls import CertificateChain, CertificateError, generate_dev_chain, load_chain
from moqrelay.transport.interfaces import HandlerFactory, ISessionHandler, ITransportSession
from moqrelay.transport.quic import QuicEndpoint
from moqrelay.transport.quicstack import DEFAULT_STACK, load_quic_stack
from moqrelay.transport.websocket import WebSocketTransportFactory
from moqrelay.transport.webtransport import quic_applications
from moqrelay.web import make_web_site, tls_context_factory
from moqrelay.wire import control as c
from moqrelay.wire.errors import SessionErrorCode

if TYPE_CHECKING:
    from moqrelay.tap import Options

_log = Logger()


class _EndpointService(Service):
    """Listen on one stream endpoint while running."""

    def __init__(self, endpoint: Any, factory: Any, description: str) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.description = description
        self.port: IListeningPort | None = None
        self.listening: Deferred[IListeningPort] = Deferred()

    def startService(self) -> None:
        super().startService()
        d: Deferred[IListeningPort] = self.endpoint.listen(self.factory)
        d.addCallback(self._listening)
        d.addErrback(self._failed)

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        _log.info("WebSocket/HTTPS listening on {d} ({a})", d=self.description, a=port.getHost())
        self.listening.callback(port)

    def _failed(self, failure: Failure) -> None:
        _log.failure("cannot listen on {d}", failure, d=self.description)
        self.listening.errback(failure)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return None
        return _stop_listening(port)


def _stop_listening(port: IListeningPort) -> Deferred[None]:
    return maybeDeferred(port.stopListening)  # type: ignore[call-overload,no-any-return]


class _QuicService(Service):
    """The UDP port for raw QUIC and WebTransport."""

    def __init__(
        self, reactor: Any, host: str, port: int, protocol: QuicEndpoint, buffer_size: int
    ) -> None:
        self.reactor = reactor
        self.host = host
        self.port_number = port
        self.protocol = protocol
        self.buffer_size = buffer_size
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        self.port = self.reactor.listenUDP(
            self.port_number, self.protocol, interface=self.host, maxPacketSize=65535
        )
        _log.info("QUIC/WebTransport listening on UDP {a}", a=self.port.getHost())
        udp_socket = getattr(self.port, "socket", None)
        if udp_socket is not None:
            set_udp_buffers(udp_socket, self.buffer_size)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self.protocol.close_all(SessionErrorCode.NO_ERROR, "relay shutting down")
        port, self.port = self.port, None
        if port is None:
            return None
        return _stop_listening(port)


def _port_number(port: IListeningPort) -> int:
    return int(getattr(port.getHost(), "port", 0))


class _UpstreamService(Service):
    """Runs the --announce link while the relay runs."""

    def __init__(self, link: UpstreamLink) -> None:
        self.link = link

    def startService(self) -> None:
        super().startService()
        self.link.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.link.stop()


def set_udp_buffers(udp_socket: socket.socket, size: int) -> tuple[int, int]:
    """Ask for ``size``-byte receive and send buffers; returns what the kernel granted.

    A burst of datagrams beyond the receive buffer is dropped by the kernel: 1,000 QUIC
    viewers closing at once sent 1,000 CONNECTION_CLOSE datagrams, most of which the
    default 208 KiB buffer dropped, and those sessions lived on until their idle timeout.
    Linux caps the sizes at net.core.rmem_max / wmem_max (and reports them doubled).
    """
    granted = []
    # Linux reports twice the size it grants (the rest is its bookkeeping allowance).
    reported = size * 2 if sys.platform.startswith("linux") else size
    for option, sysctl in ((socket.SO_RCVBUF, "rmem_max"), (socket.SO_SNDBUF, "wmem_max")):
        udp_socket.setsockopt(socket.SOL_SOCKET, option, size)
        got = udp_socket.getsockopt(socket.SOL_SOCKET, option)
        granted.append(got)
        if got < reported:
            _log.warn(
                "the UDP socket got a {got}-byte buffer, not the {size} asked for "
                "(--udp-buffer): raise net.core.{sysctl} so that bursts of datagrams are "
                "not dropped",
                got=got,
                size=size,
                sysctl=sysctl,
            )
    return granted[0], granted[1]


def freeze_startup_objects() -> None:
    """Collect once, then move every object alive now out of the cyclic collector's sight.

    Called when the reactor starts (`moqrelay.tap.makeService` arranges it). Modules,
    classes and the service tree are never garbage, yet every full collection walks
    them; frozen (`gc.freeze`), they are left alone. With 1,000 viewers connected, the
    relay's full collections went from 113-179 ms to about 43 ms, a stall every viewer
    sees. Objects created later (sessions, tracks, objects) are collected as usual.
    """
    gc.collect()
    gc.freeze()
    _log.info(
        "{count} startup objects frozen out of the garbage collector", count=gc.get_freeze_count()
    )


class RelayService(MultiService):
    """The whole relay: one Relay, its listeners, and a clean stop."""

    def __init__(
        self,
        reactor: Any,
        *,
        bind: tuple[str, int],
        chains: list[CertificateChain],
        config: RelayConfig,
        limits: SessionLimits,
        dev: bool = False,
        listen: list[str] | None = None,
        quic_retry: bool = False,
        idle_timeout: float = 30.0,
        max_message_size: int = 1 << 20,
        handshake_timeout: float = 10.0,
        allowed_origins: list[str] | None = None,
        authorizer: Authorizer | None = None,
        announce: str | None = None,
        announce_verify: bool = True,
        announce_fingerprint: str | None = None,
        udp_buffer: int = 4 << 20,
        quic_stack: str = DEFAULT_STACK,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.relay = Relay(reactor, config, authorizer)
        self.limits = limits
        self.chains = chains
        host, port = bind
        self.ws_factory = WebSocketTransportFactory(
            reactor,
            self.handler_factory,
            max_message_size=max_message_size,
            auto_ping_interval=idle_timeout / 2,
            auto_ping_timeout=idle_timeout,
            open_handshake_timeout=handshake_timeout,
            allowed_origins=allowed_origins or None,
            high_water=config.max_queued_bytes,
            low_water=config.max_queued_bytes // 4,
        )
        site = make_web_site(
            reactor,
            self.ws_factory,
            fingerprint=chains[0].fingerprint() if dev else None,
            head_timeout=handshake_timeout,
        )
        self.tls = tls = tls_context_factory(chains)
        # (cert, key) paths to read again on SIGHUP; empty for --dev.
        self.cert_paths: list[tuple[str, str]] = []
        self._previous_sighup: Any = None
        tcp_endpoint = SSL4ServerEndpoint(reactor, port, tls, interface=host)
        _EndpointService(tcp_endpoint, site, f"tcp {host}:{port} (TLS)").setServiceParent(self)
        for description in listen or []:
            endpoint = serverFromString(reactor, description)
            _EndpointService(endpoint, site, description).setServiceParent(self)
        self.web_services = [s for s in self if isinstance(s, _EndpointService)]
        self.quic = QuicEndpoint(
            reactor,
            chains=chains,
            handler_factory=self.handler_factory,
            idle_timeout=idle_timeout,
            retry=quic_retry,
            high_water=config.max_queued_bytes,
            low_water=config.max_queued_bytes // 4,
            applications=quic_applications(),
            stack=load_quic_stack(quic_stack),
        )
        self.quic_service = _QuicService(reactor, host, port, self.quic, udp_buffer)
        self.quic_service.setServiceParent(self)
        self.upstream: UpstreamLink | None = None
        if announce is not None:

            def connector(url: str, factory: HandlerFactory) -> Deferred[ITransportSession]:
                return open_transport(
                    reactor,
                    url,
                    factory,
                    verify=announce_verify,
                    fingerprint=announce_fingerprint,
                    quic_stack=quic_stack,
                )

            self.upstream = UpstreamLink(reactor, self.relay, announce, connector, limits=limits)
            _UpstreamService(self.upstream).setServiceParent(self)

    @classmethod
    def from_options(cls, options: Options, reactor: Any) -> RelayService:
        chains = list(options["chains"])
        if not chains:
            chain = generate_dev_chain()
            _log.info("--dev: self-signed certificate, SHA-256 {fp}", fp=chain.fingerprint())
            chains = [chain]
        config = RelayConfig(
            cache_groups=options["cache-groups"],
            cache_bytes=options["cache-bytes"],
            max_queued_bytes=options["max-queued-bytes"],
            max_lag_groups=options["max-lag-groups"],
            max_skipped_groups=options["max-skipped-groups"],
            drain_timeout=options["drain-timeout"],
            max_subscriptions=options["max-subscriptions"],
            max_namespaces=options["max-namespaces"],
            join_at_group_start=not options["strict-filters"],
        )
        limits = SessionLimits(
            setup_timeout=options["setup-timeout"],
            request_window=options["request-window"],
            max_incoming_streams=options["max-streams"],
            max_control_message=options["max-control-message"],
        )
        service = cls(
            reactor,
            bind=options["bind-address"],
            chains=chains,
            config=config,
            limits=limits,
            dev=options["dev"],
            listen=options["listen"],
            quic_retry=options["quic-retry"],
            idle_timeout=options["idle-timeout"],
            max_message_size=options["max-message-size"],
            handshake_timeout=options["handshake-timeout"],
            allowed_origins=options["allowed-origins"],
            authorizer=options["authorizer"],
            announce=options["announce"],
            announce_verify=not options["announce-insecure"],
            announce_fingerprint=options["announce-fingerprint"],
            udp_buffer=options["udp-buffer"],
            quic_stack=options["quic-stack"],
        )
        service.cert_paths = list(zip(options["tls-cert"], options["tls-key"], strict=True))
        return service

    def handler_factory(self, transport: ITransportSession) -> ISessionHandler:
        return MoqtSession(transport, self.reactor, self.relay.app_factory, self.limits)

    def reload_certificates(self) -> bool:
        """Read the certificate files again and serve them to new connections.

        Live sessions keep their certificate. A file that cannot be read leaves
        everything as it was; the error is logged.
        """
        if not self.cert_paths:
            _log.info("certificate reload: no certificate files (--dev); nothing to do")
            return False
        try:
            chains = [load_chain(cert, key) for cert, key in self.cert_paths]
        except CertificateError as e:
            _log.error("certificate reload failed, keeping the old ones: {e}", e=e)
            return False
        self.chains = chains
        self.tls.reload(chains)
        self.quic.set_chains(chains)
        _log.info(
            "reloaded {n} certificate(s); leaf SHA-256 {fp}",
            n=len(chains),
            fp=chains[0].fingerprint(),
        )
        return True

    def startService(self) -> None:
        super().startService()
        if hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread():
            self._previous_sighup = signal.signal(signal.SIGHUP, self._sighup)

    def _sighup(self, signum: int, frame: object) -> None:
        self.reactor.callFromThread(self.reload_certificates)

    async def tcp_ports(self) -> list[int]:
        """The TCP ports of the web side, in the order bind, then --listen, once listening."""
        ports = await gatherResults([s.listening for s in self.web_services])
        return [_port_number(port) for port in ports]

    def udp_port(self) -> int:
        port = self.quic_service.port
        assert port is not None, "the service is not running"
        return _port_number(port)

    def stopService(self) -> Deferred[None]:
        """GOAWAY to every session, let them leave for up to the drain timeout, then close
        what is left; fires once listeners are closed and everything is reaped."""
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        if self.upstream is not None:
            await self.upstream.stop()
        peers = list(self.relay.peers)
        if peers:
            _log.info("shutting down: GOAWAY to {n} sessions", n=len(peers))
        for peer in peers:
            if peer.session.ready:
                peer.session.send(c.GoAway(b""))
        deadline = self.reactor.seconds() + self.relay.config.drain_timeout
        while self.relay.peers and self.reactor.seconds() < deadline:
            await deferLater(self.reactor, 0.05, lambda: None)
        for peer in list(self.relay.peers):
            peer.session.close(SessionErrorCode.NO_ERROR, "relay shutting down")
        await DeferredList([maybeDeferred(super().stopService), self.relay.reaper.when_idle()])
