"""Application layer: the twistd command line (Options) and makeService, nothing else."""

from __future__ import annotations

import ipaddress
import os
import select
import sys
from typing import Any
from urllib.parse import urlsplit

from twisted.application.service import IService
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger
from twisted.python import usage

from moqrelay.auth import Authorizer
from moqrelay.configfile import with_config_file
from moqrelay.relay.config import RelayConfig
from moqrelay.session import SessionLimits
from moqrelay.tls import CertificateError, generate_dev_chain, load_chain
from moqrelay.transport.connect import SCHEMES
from moqrelay.transport.quicstack import DEFAULT_STACK, STACK_NAMES

_log = Logger()

DEFAULT_BIND = "[::]:4443"
DEV_BIND = "127.0.0.1:4443"


def parse_bind(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 in brackets) to ``(host, port)``; ValueError if malformed."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"{value!r} is not HOST:PORT")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port {port} out of range")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ipaddress.ip_address(host).version != 6:
            raise ValueError(f"{value!r}: brackets are for IPv6 addresses")
    elif host == "":
        host = "::"
    else:
        ipaddress.ip_address(host)
    return host, port


def _quic_stack(name: str) -> str:
    if name not in STACK_NAMES:
        raise ValueError(f"--quic-stack must be one of {', '.join(STACK_NAMES)}")
    return name


def _positive(kind: type, name: str) -> Any:
    def coerce(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            raise ValueError(f"--{name} needs a number, not {value!r}") from None
        if number <= 0:
            raise ValueError(f"--{name} must be positive")
        return number

    coerce.coerceDoc = "Must be positive."  # type: ignore[attr-defined]
    return coerce


class Options(usage.Options):
    synopsis = (
        "[--bind HOST:PORT] (--tls-cert CERT --tls-key KEY ... | --dev) "
        "[--announce URL] [--listen ENDPOINT ...] [--metrics ENDPOINT] [--config FILE] [limits]"
    )
    longdesc = (
        "Relay Media over QUIC (MoQT draft-14) tracks from publishers to viewers over raw "
        "QUIC (ALPN moq-00) and WebTransport on the UDP port of --bind, and over the "
        "WebSocket 'webtransport' polyfill on the TCP port of --bind (TLS) and on every "
        "--listen endpoint."
    )

    optFlags = [
        [
            "dev",
            None,
            "Development mode: bind 127.0.0.1:4443 unless --bind is given, "
            "generate a self-signed ECDSA certificate valid 10 days, serve GET /fingerprint.",
        ],
        ["quic-retry", None, "Answer new QUIC connections with a Retry (address validation)."],
        [
            "announce-insecure",
            None,
            "Do not verify the --announce relay's certificate (development only).",
        ],
        [
            "strict-filters",
            None,
            "Start Largest Object subscriptions after the largest object, "
            "as the draft says, instead of at the first object of the current group.",
        ],
    ]

    optParameters = [
        [
            "config",
            None,
            None,
            "TOML file of options under their long names (etc/moqrelay.conf.example); "
            "the command line wins over it.",
        ],
        [
            "metrics",
            None,
            None,
            "Twisted endpoint (tcp:9464:interface=127.0.0.1) serving Prometheus /metrics, "
            "/healthz and /status. Off by default; keep it off the public network.",
        ],
        [
            "qlog-dir",
            None,
            None,
            "Write one qlog file per QUIC connection here (an existing directory). For "
            "diagnosing: it costs CPU for every packet.",
        ],
        [
            "qlog-max-files",
            None,
            100,
            "qlog files kept in --qlog-dir; each new one removes the oldest.",
            _positive(int, "qlog-max-files"),
        ],
        [
            "bind",
            "b",
            None,
            f"HOST:PORT for UDP (QUIC, WebTransport) and TCP (HTTPS, "
            f"WebSocket). Default {DEFAULT_BIND} ({DEV_BIND} with --dev).",
        ],
        [
            "announce",
            None,
            None,
            "URL of an upstream relay (moqt://, https://, wss://) to "
            "announce local namespaces to and pull unknown tracks from.",
        ],
        [
            "announce-fingerprint",
            None,
            None,
            "Pin the --announce relay's certificate by the hex SHA-256 of its leaf "
            "instead of verifying it.",
        ],
        [
            "auth-key",
            None,
            None,
            "File with the key that signs access tokens (a shared HS256 secret, or an ES256/RS256 "
            "PEM public key). With it, every request needs a JWT (URL ?jwt= or "
            "AUTHORIZATION_TOKEN) granting its namespace; without it the relay is open.",
        ],
        [
            "handshake-timeout",
            None,
            10.0,
            "Seconds a new TCP connection has to complete the WebSocket handshake.",
            _positive(float, "handshake-timeout"),
        ],
        [
            "max-control-message",
            None,
            65535,
            "Largest MoQT control message accepted, in bytes (at most 65535).",
            _positive(int, "max-control-message"),
        ],
        [
            "setup-timeout",
            None,
            10.0,
            "Seconds a new session has to complete SETUP.",
            _positive(float, "setup-timeout"),
        ],
        [
            "idle-timeout",
            None,
            30.0,
            "Seconds of silence before a QUIC session is dropped; WebSocket pings at half this.",
            _positive(float, "idle-timeout"),
        ],
        [
            "udp-buffer",
            None,
            4 << 20,
            "Receive and send buffer of the QUIC UDP socket, in bytes (the kernel caps it at "
            "net.core.rmem_max / wmem_max; a warning says so).",
            _positive(int, "udp-buffer"),
        ],
        [
            "quic-stack",
            None,
            DEFAULT_STACK,
            f"QUIC library under the adapter: {' or '.join(STACK_NAMES)} (qh3's packet core is "
            "Rust; see README, QUIC stacks).",
            _quic_stack,
        ],
        [
            "request-window",
            None,
            100,
            "Requests a peer may have ahead of completion (MAX_REQUEST_ID window).",
            _positive(int, "request-window"),
        ],
        [
            "max-subscriptions",
            None,
            1000,
            "Subscriptions per session.",
            _positive(int, "max-subscriptions"),
        ],
        [
            "max-namespaces",
            None,
            100,
            "Announced namespaces per session.",
            _positive(int, "max-namespaces"),
        ],
        [
            "max-publishers",
            None,
            8,
            "Publishers of one namespace (redundant encoders, or one that restarted "
            "while its old session lingers).",
            _positive(int, "max-publishers"),
        ],
        [
            "max-streams",
            None,
            10000,
            "Concurrent incoming data streams per session.",
            _positive(int, "max-streams"),
        ],
        ["cache-groups", None, 4, "Groups cached per track.", _positive(int, "cache-groups")],
        ["cache-bytes", None, 64 << 20, "Bytes cached per track.", _positive(int, "cache-bytes")],
        [
            "max-queued-bytes",
            None,
            1 << 20,
            "Bytes queued per viewer before it counts as slow.",
            _positive(int, "max-queued-bytes"),
        ],
        [
            "max-lag-groups",
            None,
            1,
            "Groups a slow viewer may lag before it skips ahead.",
            _positive(int, "max-lag-groups"),
        ],
        [
            "max-skipped-groups",
            None,
            8,
            "Groups a viewer may skip before PUBLISH_DONE TOO_FAR_BEHIND.",
            _positive(int, "max-skipped-groups"),
        ],
        [
            "drain-timeout",
            None,
            5.0,
            "Seconds to finish in-flight streams after a track ends.",
            _positive(float, "drain-timeout"),
        ],
        [
            "max-message-size",
            None,
            1 << 20,
            "Largest WebSocket message accepted, in bytes.",
            _positive(int, "max-message-size"),
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["tls-cert"] = []
        self["tls-key"] = []
        self["listen"] = []
        self["chains"] = []
        self["allowed-origins"] = []
        self["authorizer"] = None

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Parse ``options`` (sys.argv by default) after the --config file's options."""
        argv = sys.argv[1:] if options is None else list(options)
        super().parseOptions(with_config_file(self, argv))

    def opt_tls_cert(self, path: str) -> None:
        """PEM certificate chain (leaf first); repeat with --tls-key for SNI."""
        self["tls-cert"].append(path)

    def opt_tls_key(self, path: str) -> None:
        """PEM private key for the --tls-cert at the same position."""
        self["tls-key"].append(path)

    def opt_allowed_origin(self, origin: str) -> None:
        """Accept WebSocket connections only from this Origin (repeatable; default: any)."""
        self["allowed-origins"].append(origin)

    def opt_listen(self, endpoint: str) -> None:
        """Extra Twisted endpoint for HTTP/WebSocket (tcp:8080, unix:/run/moqrelay.sock);
        repeatable."""
        self["listen"].append(endpoint)

    def postOptions(self) -> None:
        bind = self["bind"] or (DEV_BIND if self["dev"] else DEFAULT_BIND)
        try:
            self["bind-address"] = parse_bind(bind)
        except ValueError as e:
            raise usage.UsageError(f"--bind: {e}") from None
        certs, keys = self["tls-cert"], self["tls-key"]
        if len(certs) != len(keys):
            raise usage.UsageError(
                f"--tls-cert and --tls-key come in pairs ({len(certs)} certificates, "
                f"{len(keys)} keys)"
            )
        if not certs and not self["dev"]:
            raise usage.UsageError(
                "give --tls-cert and --tls-key, or --dev for a test certificate"
            )
        for cert, key in zip(certs, keys, strict=True):
            for path in (cert, key):
                if not os.access(path, os.R_OK):
                    raise usage.UsageError(f"cannot read {path}")
            try:
                self["chains"].append(load_chain(cert, key))
            except CertificateError as e:
                raise usage.UsageError(str(e)) from None
        announce = self["announce"]
        if announce is not None:
            parts = urlsplit(announce)
            if parts.scheme not in SCHEMES or not parts.hostname:
                raise usage.UsageError(
                    f"--announce: {announce!r} is not a moqt://, https://, wss:// or ws:// URL"
                )
        if self["auth-key"] is not None:
            try:
                self["authorizer"] = Authorizer.from_file(self["auth-key"])
            except OSError as e:
                raise usage.UsageError(
                    f"--auth-key: cannot read {e.filename}: {e.strerror}"
                ) from None
            except ValueError as e:
                raise usage.UsageError(f"--auth-key: {e}") from None
        if self["max-control-message"] > 65535:
            raise usage.UsageError("--max-control-message: at most 65535 (a 16-bit length)")
        for endpoint in self["listen"]:
            if ":" not in endpoint:
                raise usage.UsageError(f"--listen: {endpoint!r} is not an endpoint string")
        qlog_dir = self["qlog-dir"]
        if qlog_dir is not None and not os.path.isdir(qlog_dir):
            raise usage.UsageError(f"--qlog-dir: {qlog_dir!r} is not a directory")
        metrics = self["metrics"]
        if metrics is not None:
            try:
                # Only parsed here: the endpoint touches no reactor until it listens.
                serverFromString(None, metrics)
            except (ValueError, TypeError) as e:
                raise usage.UsageError(
                    f"--metrics: {metrics!r} is not a server endpoint string ({e})"
                ) from None


def makeService(options: Options, reactor: IReactorCore | None = None) -> IService:
    """Build the relay's service tree from parsed options.

    Without a ``reactor``, the global one; if twistd has not installed one yet (no
    ``--reactor``), `moqrelay.reactor.PacedEPollReactor` where epoll exists. With the
    global reactor, the startup objects are also frozen out of the garbage collector
    once it runs (`moqrelay.service.freeze_startup_objects`), and SIGTERM/SIGINT are the
    service's: the first drains, a second one during the drain closes everything.
    """
    from moqrelay.service import RelayService, freeze_startup_objects

    stop_signals = reactor is None
    if reactor is None:
        if "twisted.internet.reactor" not in sys.modules and hasattr(select, "epoll"):
            from moqrelay.reactor import install

            install()
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
        global_reactor.callWhenRunning(freeze_startup_objects)
    assert reactor is not None
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
        max_publishers=options["max-publishers"],
        join_at_group_start=not options["strict-filters"],
    )
    limits = SessionLimits(
        setup_timeout=options["setup-timeout"],
        request_window=options["request-window"],
        max_incoming_streams=options["max-streams"],
        max_control_message=options["max-control-message"],
    )
    return RelayService(
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
        cert_paths=list(zip(options["tls-cert"], options["tls-key"], strict=True)),
        stop_signals=stop_signals,
        metrics=options["metrics"],
        qlog_dir=options["qlog-dir"],
        qlog_max_files=options["qlog-max-files"],
    )
