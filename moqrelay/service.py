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
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, gatherResults, maybeDeferred
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from moqrelay.auth import Authorizer
from moqrelay.metrics import make_metrics_site
from moqrelay.relay.config import RelayConfig
from moqrelay.relay.hub import Relay
from moqrelay.relay.upstream import UpstreamLink
from moqrelay.session import MoqtSession, SessionLimits
from moqrelay.tls import CertificateChain, CertificateError, load_chain
from moqrelay.transport.connect import open_transport
from moqrelay.transport.interfaces import HandlerFactory, ISessionHandler, ITransportSession
from moqrelay.transport.qlog import QlogDirectory
from moqrelay.transport.quic import QuicEndpoint
from moqrelay.transport.quicstack import DEFAULT_STACK, load_quic_stack
from moqrelay.transport.udp import listen_udp
from moqrelay.transport.websocket import WebSocketTransportFactory
from moqrelay.transport.webtransport import quic_applications
from moqrelay.web import make_web_site, tls_context_factory
from moqrelay.wire import control as c
from moqrelay.wire.errors import SessionErrorCode

_log = Logger()


class _EndpointService(Service):
    """Listen on one stream endpoint while running."""

    def __init__(
        self, endpoint: Any, factory: Any, description: str, what: str = "WebSocket/HTTPS"
    ) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.description = description
        self.what = what
        self.port: IListeningPort | None = None
        self.listening: Deferred[IListeningPort] = Deferred()

    def startService(self) -> None:
        super().startService()
        d: Deferred[IListeningPort] = self.endpoint.listen(self.factory)
        d.addCallback(self._listening)
        d.addErrback(self._failed)

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        _log.info(
            "{what} listening on {d} ({a})", what=self.what, d=self.description, a=port.getHost()
        )
        self.listening.callback(port)

    def _failed(self, failure: Failure) -> None:
        _log.failure("cannot listen on {d}", failure, d=self.description)
        self.listening.errback(failure)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        return self.stop_listening()

    def stop_listening(self) -> Deferred[None] | None:
        """Close the listening port (connections already accepted stay); idempotent."""
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
        self.port = listen_udp(
            self.reactor,
            self.port_number,
            self.protocol,
            interface=self.host,
            max_packet_size=65535,
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


def _describe(kind: str, port: IListeningPort) -> str:
    address = port.getHost()
    host = getattr(address, "host", None)
    if host is None:
        name = getattr(address, "name", b"")
        return f"unix {name.decode() if isinstance(name, bytes) else name}"
    if ":" in host:
        host = f"[{host}]"
    return f"{kind} {host}:{_port_number(port)}"


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
        cert_paths: list[tuple[str, str]] | None = None,
        stop_signals: bool = False,
        metrics: str | None = None,
        quic_stack: str = DEFAULT_STACK,
        qlog_dir: str | None = None,
        qlog_max_files: int = 100,
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
        # The PEM files the chains came from, read again on SIGHUP; empty for --dev.
        self.cert_paths: list[tuple[str, str]] = list(cert_paths or [])
        self._previous_sighup: Any = None
        # Whether SIGTERM/SIGINT are ours (under twistd), not the reactor's alone.
        self.stop_signals = stop_signals
        self._previous_stop_handlers: dict[int, Any] = {}
        # Set from the first SIGTERM/SIGINT (or stopService) on: no new session is accepted.
        self.draining = False
        # Fired by a second SIGTERM/SIGINT during the drain: close everything at once.
        self._hurry: Deferred[None] = Deferred()
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
            qlog=QlogDirectory(qlog_dir, qlog_max_files) if qlog_dir is not None else None,
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
        # /metrics, /healthz and /status: up until the drain is over, unlike the web ports.
        self.metrics_service: _EndpointService | None = None
        if metrics is not None:
            self.metrics_service = _EndpointService(
                serverFromString(reactor, metrics),
                make_metrics_site(self, reactor),
                metrics,
                what="Metrics, /healthz and /status",
            )
            self.metrics_service.setServiceParent(self)

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
        if threading.current_thread() is threading.main_thread():
            if hasattr(signal, "SIGHUP"):
                self._previous_sighup = signal.signal(signal.SIGHUP, self._sighup)
            if self.stop_signals:
                # After the reactor's own handlers, which reactor.run() installs.
                self.reactor.callWhenRunning(self._install_stop_handlers)

    def _sighup(self, signum: int, frame: object) -> None:
        self.reactor.callFromThread(self.reload_certificates)

    def _install_stop_handlers(self) -> None:
        """SIGTERM and SIGINT: the first drains (see `stopService`), a second one during
        the drain closes every session at once. The reactor's own handlers would call
        ``reactor.stop()`` again, which raises ReactorNotRunning while it is stopping."""
        if not self.running or threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous_stop_handlers[signum] = signal.signal(signum, self._stop_signal)

    def _stop_signal(self, signum: int, frame: object) -> None:
        self.reactor.callFromThread(self._stop_requested, signum)

    def _stop_requested(self, signum: int) -> None:
        if self.draining:
            if not self._hurry.called:
                _log.info(
                    "{signal} during the drain: closing every session now",
                    signal=signal.Signals(signum).name,
                )
                self._hurry.callback(None)
            return
        _log.info("{signal}: draining", signal=signal.Signals(signum).name)
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            self._hurry.callback(None)

    def _restore_signal_handlers(self) -> None:
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        handlers, self._previous_stop_handlers = self._previous_stop_handlers, {}
        for signum, handler in handlers.items():
            signal.signal(signum, handler)

    async def tcp_ports(self) -> list[int]:
        """The TCP ports of the web side, in the order bind, then --listen, once listening."""
        ports = await gatherResults([s.listening for s in self.web_services])
        return [_port_number(port) for port in ports]

    def listening(self) -> list[str]:
        """Where the relay listens now: ``udp [::]:443``, ``tcp 127.0.0.1:8080``, ...; the
        metrics endpoint too."""
        ports = [("udp", self.quic_service.port)]
        ports += [("tcp", service.port) for service in self.web_services]
        if self.metrics_service is not None:
            ports.append(("metrics tcp", self.metrics_service.port))
        return [_describe(kind, port) for kind, port in ports if port is not None]

    def udp_port(self) -> int:
        port = self.quic_service.port
        assert port is not None, "the service is not running"
        return _port_number(port)

    def stopService(self) -> Deferred[None]:
        """GOAWAY to every session, let them leave for up to the drain timeout, then close
        what is left; fires once listeners are closed and everything is reaped."""
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.draining = True
        # No newcomer from now on: the TCP listeners close, QUIC Initials go unanswered.
        self.quic.refuse_new_connections()
        listeners = [maybeDeferred(web.stop_listening) for web in self.web_services]
        if self.upstream is not None:
            await self.upstream.stop()
        peers = list(self.relay.peers)
        if peers:
            _log.info("shutting down: GOAWAY to {n} sessions", n=len(peers))
        for peer in peers:
            if peer.session.ready:
                peer.session.send(c.GoAway(b""))
        deadline = self.reactor.seconds() + self.relay.config.drain_timeout
        while self.relay.peers and self.reactor.seconds() < deadline and not self._hurry.called:
            await deferLater(self.reactor, 0.05, lambda: None)
        await DeferredList(listeners)
        for peer in list(self.relay.peers):
            peer.session.close(SessionErrorCode.NO_ERROR, "relay shutting down")
        await DeferredList([maybeDeferred(super().stopService), self.relay.reaper.when_idle()])
        self._restore_signal_handlers()
