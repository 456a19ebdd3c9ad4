"""Application layer: Prometheus metrics, ``/healthz`` and ``/status`` for operators.

Served by `RelayService` only on the ``--metrics`` endpoint, never on the public port.
Almost everything is read from the relay's own state at scrape time by `RelayCollector`
(sessions, tracks, publishers, viewers, queued and cached bytes, the reaper, the
upstream link), so the paths that move media carry no metrics code at all. The few
figures that need an event are counted where the event already is, in
`moqrelay.session` (a session opened or closed, a request refused, a subscription
ended), one counter increment each. Every label is bounded: transport names, and the
names of the draft's error codes (any other code is ``other``); never a track or a peer.

``/healthz`` answers 200 while the relay serves and 503 from the first SIGTERM on (the
drain), so that a load balancer stops sending it newcomers; ``/status`` is a JSON
summary for people.
"""

from __future__ import annotations

import json
from collections import Counter as Tally
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from moqrelay import __version__
from moqrelay.auth import redact
from moqrelay.counters import EVENT_COUNTERS, TRANSPORTS

if TYPE_CHECKING:
    from moqrelay.relay.hub import Relay
    from moqrelay.relay.upstream import UpstreamLink

DRAFT = "draft-ietf-moq-transport-14"


class ServedRelay(Protocol):
    """What the metrics read from the running relay (`moqrelay.service.RelayService`)."""

    relay: Relay
    upstream: UpstreamLink | None
    draining: bool

    def listening(self) -> list[str]:
        """Where the relay listens, e.g. ``udp [::]:443``, once it does."""


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class RelayCollector(Collector):
    """Reads the relay's state when Prometheus scrapes; nothing is kept between scrapes."""

    def __init__(self, served: ServedRelay) -> None:
        self.served = served

    def collect(self) -> Iterable[Metric]:
        served = self.served
        relay = served.relay
        sessions = GaugeMetricFamily(
            "moqrelay_sessions", "MoQT sessions open, by transport.", labels=["transport"]
        )
        counts = sessions_by_transport(served)
        for transport in sorted(counts.keys() | set(TRANSPORTS)):
            sessions.add_metric([transport], counts.get(transport, 0))
        yield sessions
        tracks = GaugeMetricFamily(
            "moqrelay_tracks", "Tracks the relay holds, by state.", labels=["state"]
        )
        states = Tally(track.state for track in relay.tracks.values())
        for state in ("pending", "live"):
            tracks.add_metric([state], states[state])
        yield tracks
        yield _gauge(
            "moqrelay_track_publishers",
            "Publishers feeding the relay's tracks (one per publisher and track).",
            sum(len(track.sources) for track in relay.tracks.values()),
        )
        yield _gauge(
            "moqrelay_cache_bytes",
            "Object bytes cached across tracks.",
            sum(track.cached_bytes for track in relay.tracks.values()),
        )
        peers = list(relay.peers)
        yield _gauge(
            "moqrelay_viewers",
            "Subscriptions the relay serves (viewers of a track).",
            sum(len(peer.subscriptions) for peer in peers),
        )
        yield _gauge(
            "moqrelay_queued_bytes",
            "Bytes queued for sending across every session (slow viewers).",
            sum(peer.session.transport.queued_bytes() for peer in peers),
        )
        yield _gauge(
            "moqrelay_namespaces", "Namespaces announced to the relay.", len(relay.namespaces)
        )
        yield _gauge("moqrelay_reaper_pending", "Teardown steps waiting.", relay.reaper.pending())
        yield CounterMetricFamily(
            "moqrelay_reaper_steps", "Teardown steps run.", value=relay.reaper.reaped
        )
        yield _gauge(
            "moqrelay_draining", "1 from the first SIGTERM on, else 0.", int(served.draining)
        )
        link = served.upstream
        if link is not None:
            yield _gauge(
                "moqrelay_upstream_up",
                "1 while the --announce session is set up, else 0.",
                int(upstream_up(link)),
            )
            yield CounterMetricFamily(
                "moqrelay_upstream_connections",
                "--announce sessions set up.",
                value=link.connections,
            )
            yield CounterMetricFamily(
                "moqrelay_upstream_attempts",
                "Connection attempts to the --announce relay.",
                value=link.attempts,
            )


def upstream_up(link: UpstreamLink) -> bool:
    session = link.session
    return session is not None and session.ready and not session.closed


def sessions_by_transport(served: ServedRelay) -> dict[str, int]:
    """Open sessions by transport name, the --announce session included."""
    counts = Tally(peer.session.transport.transport_name for peer in served.relay.peers)
    link = served.upstream
    if link is not None and link.session is not None and not link.session.closed:
        counts[link.session.transport.transport_name] += 1
    return dict(counts)


def metrics_registry(served: ServedRelay) -> CollectorRegistry:
    """A registry of the relay's metrics, the event counters, and the process's own."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(RelayCollector(served))
    for counter in EVENT_COUNTERS:
        registry.register(counter)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def status(served: ServedRelay, uptime: float) -> dict[str, Any]:
    """The ``/status`` document."""
    relay = served.relay
    link = served.upstream
    tracks = []
    for (namespace, name), track in relay.tracks.items():
        tracks.append(
            {
                "namespace": [field.decode("utf-8", "backslashreplace") for field in namespace],
                "name": name.decode("utf-8", "backslashreplace"),
                "state": track.state,
                "viewers": len(track.subscriptions),
                "publishers": len(track.sources),
            }
        )
    return {
        "version": __version__,
        "draft": DRAFT,
        "uptime": round(uptime, 3),
        "draining": served.draining,
        "listening": served.listening(),
        "sessions": sessions_by_transport(served),
        "tracks": tracks,
        "upstream": None
        if link is None
        else {
            "url": redact(link.url),
            "up": upstream_up(link),
            "connections": link.connections,
            "attempts": link.attempts,
        },
    }


class _Metrics(Resource):
    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.registry)


class _Health(Resource):
    isLeaf = True

    def __init__(self, served: ServedRelay) -> None:
        super().__init__()
        self.served = served

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        if self.served.draining:
            request.setResponseCode(503)
            return b"draining\n"
        return b"ok\n"


class _Status(Resource):
    isLeaf = True

    def __init__(self, served: ServedRelay, clock: Any, started: float) -> None:
        super().__init__()
        self.served = served
        self.clock = clock
        self.started = started

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        document = status(self.served, self.clock.seconds() - self.started)
        return json.dumps(document, indent=1).encode() + b"\n"


class _QuietSite(Site):
    """No access-log line per request: Prometheus and load balancers poll every few seconds."""

    def log(self, request: http.Request) -> None:
        return None


def make_metrics_site(served: ServedRelay, reactor: Any) -> Site:
    """``/metrics``, ``/healthz`` and ``/status`` for ``served``; uptime counts from now."""
    root = Resource()
    root.putChild(b"metrics", _Metrics(metrics_registry(served)))
    root.putChild(b"healthz", _Health(served))
    root.putChild(b"status", _Status(served, reactor, reactor.seconds()))
    site = _QuietSite(root, reactor=reactor)
    site.displayTracebacks = False
    site.noisy = False
    return site
