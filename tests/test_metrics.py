"""Tests for moqrelay.metrics: the Prometheus exposition, /healthz and /status.

Unit tests read a relay joined to its clients in memory; the end-to-end tests run a
RelayService with a metrics endpoint on 127.0.0.1 and scrape it over HTTP.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent, readBody

from moqrelay.metrics import (
    DRAFT,
    ServedRelay,
    metrics_registry,
    status,
)
from moqrelay.relay.config import RelayConfig
from moqrelay.relay.hub import Relay
from moqrelay.relay.upstream import UpstreamLink
from moqrelay.service import RelayService
from moqrelay.testing import MemorySession
from moqrelay.transport.interfaces import HandlerFactory, ITransportSession
from tests.helpers import MemoryRelay, Recorder, settle
from tests.live import CHAIN, NS, RelayFixture, wait_until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, keyed by name and labels."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@dataclass
class Served:
    """A `ServedRelay` without sockets."""

    relay: Relay
    upstream: UpstreamLink | None = None
    draining: bool = False
    addresses: list[str] = field(default_factory=list)

    def listening(self) -> list[str]:
        return self.addresses


class CollectorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.mem = MemoryRelay(RelayConfig(max_queued_bytes=4096))
        self.served: ServedRelay = Served(self.mem.relay)
        self.registry = metrics_registry(self.served)

    def scrape(self) -> Samples:
        return parse(generate_latest(self.registry).decode())

    def test_state_is_read_at_scrape_time(self) -> None:
        before = self.scrape()
        for transport in ("quic", "webtransport", "websocket"):
            self.assertIn(("moqrelay_sessions", frozenset({("transport", transport)})), before)
            self.assertIn(
                ("moqrelay_sessions_opened_total", frozenset({("transport", transport)})), before
            )
        self.assertEqual(value(before, "moqrelay_sessions", transport="memory"), 0)
        self.assertEqual(value(before, "moqrelay_tracks", state="live"), 0)
        publisher, track = self.mem.publish(NS, b"video")
        viewers = [self.mem.watch(NS, b"video", Recorder()) for _ in range(2)]
        track.send_object(0, 0, b"x" * 1000)
        settle(self.mem.clock)
        during = self.scrape()
        self.assertEqual(value(during, "moqrelay_sessions", transport="memory"), 3)
        self.assertEqual(value(during, "moqrelay_tracks", state="live"), 1)
        self.assertEqual(value(during, "moqrelay_tracks", state="pending"), 0)
        self.assertEqual(value(during, "moqrelay_track_publishers"), 1)
        self.assertEqual(value(during, "moqrelay_viewers"), 2)
        self.assertEqual(value(during, "moqrelay_namespaces"), 1)
        self.assertGreaterEqual(value(during, "moqrelay_cache_bytes"), 1000)
        self.assertEqual(value(during, "moqrelay_draining"), 0)
        viewers[0][0].close()
        settle(self.mem.clock)
        after = self.scrape()
        self.assertEqual(value(after, "moqrelay_sessions", transport="memory"), 2)
        self.assertEqual(value(after, "moqrelay_viewers"), 1)
        self.assertEqual(value(after, "moqrelay_reaper_pending"), 0)
        self.assertGreater(
            value(after, "moqrelay_reaper_steps_total"),
            value(during, "moqrelay_reaper_steps_total"),
        )
        publisher.close()
        settle(self.mem.clock)
        gone = self.scrape()
        self.assertEqual(value(gone, "moqrelay_tracks", state="live"), 0)
        self.assertEqual(value(gone, "moqrelay_cache_bytes"), 0)

    def test_queued_bytes_of_a_viewer_that_stops_reading(self) -> None:
        _, track = self.mem.publish(NS, b"video")
        viewer, _ = self.mem.watch(NS, b"video", Recorder())
        transport = viewer.session.transport
        assert isinstance(transport, MemorySession) and transport.other is not None
        transport.pause_reading()
        for obj in range(3):
            track.send_object(0, obj, b"y" * 1000)
        settle(self.mem.clock)
        queued = value(self.scrape(), "moqrelay_queued_bytes")
        self.assertGreaterEqual(queued, 3000)
        self.assertEqual(queued, transport.other.queued_bytes())

    def test_session_and_refusal_counters(self) -> None:
        before = self.scrape()
        viewer, _, _ = self.mem.connect()
        refused: list[Any] = []
        viewer.subscribe(NS, b"nobody", Recorder()).addErrback(refused.append)
        settle(self.mem.clock)
        viewer.close()
        settle(self.mem.clock)
        self.assertEqual(len(refused), 1)
        after = self.scrape()

        def moved(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        # Both ends of the in-memory pair are sessions of this process.
        self.assertEqual(moved("moqrelay_sessions_opened_total", transport="memory"), 2)
        self.assertEqual(
            moved("moqrelay_sessions_closed_total", transport="memory", code="NO_ERROR"), 2
        )
        self.assertEqual(
            moved(
                "moqrelay_requests_refused_total",
                message="SUBSCRIBE_ERROR",
                code="TRACK_DOES_NOT_EXIST",
            ),
            1,
        )

    def test_subscriptions_ended_by_status(self) -> None:
        before = self.scrape()
        _, track = self.mem.publish(NS, b"video")
        self.mem.watch(NS, b"video", Recorder())
        track.end()
        settle(self.mem.clock)
        after = self.scrape()
        name = "moqrelay_subscriptions_ended_total"
        # The publisher's PUBLISH_DONE to the relay, and the relay's to the viewer.
        self.assertEqual(
            value(after, name, status="TRACK_ENDED") - value(before, name, status="TRACK_ENDED"),
            2,
        )

    def test_process_metrics_too(self) -> None:
        samples = self.scrape()
        self.assertIn("python_info", {name for name, _ in samples})
        self.assertIn("process_cpu_seconds_total", {name for name, _ in samples})

    def test_upstream_link(self) -> None:
        pending: Deferred[ITransportSession] = Deferred()

        def connector(url: str, factory: HandlerFactory) -> Deferred[ITransportSession]:
            return pending

        link = UpstreamLink(self.mem.clock, self.mem.relay, "moqt://up?jwt=secret", connector)
        served = Served(self.mem.relay, upstream=link)
        registry = metrics_registry(served)
        link.start()
        samples = parse(generate_latest(registry).decode())
        self.assertEqual(value(samples, "moqrelay_upstream_up"), 0)
        self.assertEqual(value(samples, "moqrelay_upstream_attempts_total"), 1)
        self.assertEqual(value(samples, "moqrelay_upstream_connections_total"), 0)
        document = status(served, 1.0)
        self.assertEqual(
            document["upstream"],
            {"url": "moqt://up?jwt=[redacted]", "up": False, "connections": 0, "attempts": 1},
        )
        self.assertNotIn("secret", json.dumps(document))
        link.stop()
        self.assertNotIn(
            "moqrelay_upstream_up", {k[0] for k in self.scrape()}, "no upstream, no gauge"
        )

    def test_status_document(self) -> None:
        self.mem.publish(NS, b"video")
        self.mem.watch(NS, b"video", Recorder())
        served = Served(self.mem.relay, addresses=["udp 127.0.0.1:4443"])
        document = json.loads(json.dumps(status(served, 12.3456)))
        self.assertEqual(document["draft"], DRAFT)
        self.assertEqual(document["uptime"], 12.346)
        self.assertEqual(document["listening"], ["udp 127.0.0.1:4443"])
        self.assertEqual(document["sessions"], {"memory": 2})
        self.assertEqual(
            document["tracks"],
            [
                {
                    "namespace": ["live", "demo"],
                    "name": "video",
                    "state": "live",
                    "viewers": 1,
                    "publishers": 1,
                }
            ],
        )
        self.assertIsNone(document["upstream"])
        self.assertFalse(document["draining"])


class MetricsEndpointTests(RelayFixture):
    config = RelayConfig(drain_timeout=0.5)

    async def start_with_metrics(self) -> None:
        self.service = RelayService(
            reactor,
            bind=("127.0.0.1", 0),
            chains=[CHAIN],
            config=self.config,
            limits=self.limits,
            dev=True,
            metrics="tcp:0:interface=127.0.0.1",
        )
        self.service.startService()
        self.clients = []
        self.addCleanup(self.stop_all)
        await self.service.tcp_ports()
        assert self.service.metrics_service is not None
        port = await self.service.metrics_service.listening
        self.base = f"http://127.0.0.1:{port.getHost().port}"  # type: ignore[attr-defined]

    async def get(self, path: str) -> tuple[int, bytes, str]:
        response = await Agent(reactor).request(b"GET", (self.base + path).encode())
        body = await readBody(response)
        (content_type,) = response.headers.getRawHeaders(b"content-type")
        return response.code, body, content_type.decode()

    async def scrape(self) -> Samples:
        code, body, content_type = await self.get("/metrics")
        self.assertEqual(code, 200)
        self.assertTrue(content_type.startswith("text/plain"))
        return parse(body.decode())

    async def test_metrics_follow_sessions_over_each_transport(self) -> None:
        await self.start_with_metrics()
        before = await self.scrape()
        _, track = await self.publisher("wss")
        recorders = []
        for scheme in ("moqt", "https"):
            rec = Recorder()
            await (await self.client(scheme)).subscribe(NS, b"video", rec)
            recorders.append(rec)
        track.send_object(0, 0, b"z" * 500)
        await wait_until(lambda: all(len(r.objects) == 1 for r in recorders))
        during = await self.scrape()
        for transport in ("websocket", "quic", "webtransport"):
            self.assertEqual(value(during, "moqrelay_sessions", transport=transport), 1)
        self.assertEqual(value(during, "moqrelay_viewers"), 2)
        self.assertEqual(value(during, "moqrelay_tracks", state="live"), 1)
        opened = "moqrelay_sessions_opened_total"
        # Each client's session and the relay's end of it live in this process.
        self.assertEqual(
            value(during, opened, transport="quic") - value(before, opened, transport="quic"), 2
        )
        code, body, content_type = await self.get("/status")
        self.assertEqual((code, content_type), (200, "application/json"))
        document = json.loads(body)
        self.assertEqual(document["sessions"], {"websocket": 1, "quic": 1, "webtransport": 1})
        self.assertEqual(document["tracks"][0]["viewers"], 2)
        self.assertEqual(
            [address.split()[0] for address in document["listening"]],
            ["udp", "tcp", "metrics"],
        )
        self.assertGreaterEqual(document["uptime"], 0)
        code, _, _ = await self.get("/nothing")
        self.assertEqual(code, 404)

    async def test_healthz_turns_503_when_the_drain_starts(self) -> None:
        await self.start_with_metrics()
        self.assertEqual((await self.get("/healthz"))[:2], (200, b"ok\n"))
        viewer = await self.client("wss")
        stopped = self.service.stopService()
        code, body, _ = await self.get("/healthz")
        self.assertEqual((code, body), (503, b"draining\n"))
        self.assertEqual(value(await self.scrape(), "moqrelay_draining"), 1)
        viewer.close()
        await stopped
        self.assertIsNone(self.service.metrics_service.port)  # type: ignore[union-attr]
