"""Smoke tests of the relay benchmark harness (bench/relay_bench.py, bench/baselines.py).

The smallest fan-out runs in-process for a fraction of a second against a relay
(and against the WebSocket and QUIC baselines) on 127.0.0.1; the tests check that the
numbers are sane and that nothing was lost, never how fast anything went.
"""

from __future__ import annotations

import math
import os
from typing import Any, cast

from twisted.internet import reactor
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IReactorUDP
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import Site

from bench import baselines, relay_bench
from bench.baselines import FanOutServerProtocol, fanout_server_factory
from bench.relay_runner import StatsResource, relay_stats
from moqrelay.client.tools import stamped_payload
from moqrelay.relay.config import RelayConfig
from moqrelay.service import RelayService
from moqrelay.session import SessionLimits
from moqrelay.tls import generate_dev_chain
from moqrelay.transport.quic import QuicEndpoint, QuicSessionBase
from moqrelay.web import tls_context_factory

CHAIN = generate_dev_chain()


class FanOutSmokeTests(TestCase):
    async def start_relay(self) -> relay_bench.Target:
        service = RelayService(
            reactor,
            bind=("127.0.0.1", 0),
            chains=[CHAIN],
            config=RelayConfig(),
            limits=SessionLimits(),
            dev=True,
        )
        service.startService()
        self.addCleanup(service.stopService)
        (tcp,) = await service.tcp_ports()
        self.relay = service.relay
        return relay_bench.Target(tcp, service.udp_port(), os.getpid())

    async def test_fanout_over_websocket_delivers_every_object(self) -> None:
        target = await self.start_relay()
        figures = await relay_bench.fanout_run(
            reactor, target, "ws", 2, 0.2, limit=60, warmup=0.05
        )
        self.assertEqual(figures["sent"], 60)
        self.assertEqual(figures["delivered"], 120)
        self.assertEqual(figures["delivered_pct"], 100)
        for key in ("obj_s", "mbit_s", "relay_cpu", "load_cpu"):
            self.assertTrue(math.isfinite(figures[key]) and figures[key] >= 0, key)
        await relay_bench.wait_until(reactor, lambda: not self.relay.peers, timeout=10.0)
        self.assertEqual(relay_stats(self.relay, reactor)["subscriptions"], 0)

    async def test_fanout_with_sinks_counts_every_object(self) -> None:
        """2 probes here, 8 sinks in bench/sinks.py: every viewer's objects are counted."""
        target = await self.start_relay()
        figures = await relay_bench.fanout_run(
            reactor, target, "ws", 10, 0.2, limit=60, warmup=0.05, sinks=True
        )
        self.assertEqual(relay_bench.split_viewers(10, True), (2, 8))
        self.assertEqual(figures["sent"], 60)
        self.assertEqual(figures["delivered"], 600)
        self.assertEqual(relay_bench.Child.live, set())

    async def test_latency_times_every_object(self) -> None:
        target = await self.start_relay()
        figures = await relay_bench.latency_run(reactor, target, "ws", 2, 0.3)
        self.assertEqual(figures["delivered_pct"], 100)
        self.assertEqual(figures["lost"], 0)
        self.assertTrue(0 < figures["p50"] <= figures["p99"] <= figures["max"])

    async def test_baseline_latency_times_every_object(self) -> None:
        endpoint = SSL4ServerEndpoint(
            reactor, 0, tls_context_factory([CHAIN]), interface="127.0.0.1"
        )
        port: IListeningPort = await endpoint.listen(fanout_server_factory(reactor))
        self.addCleanup(port.stopListening)
        target = relay_bench.Target(getattr(port.getHost(), "port", 0), 0, os.getpid())
        figures = await relay_bench.baseline_latency_run(reactor, target, 2, 0.3)
        self.assertEqual(figures["delivered_pct"], 100)
        self.assertEqual(figures["lost"], 0)
        self.assertTrue(0 < figures["p50"] <= figures["p99"] <= figures["max"])

    async def test_baseline_fanout_delivers_every_message(self) -> None:
        endpoint = SSL4ServerEndpoint(
            reactor, 0, tls_context_factory([CHAIN]), interface="127.0.0.1"
        )
        port: IListeningPort = await endpoint.listen(fanout_server_factory(reactor))
        self.addCleanup(port.stopListening)
        target = relay_bench.Target(getattr(port.getHost(), "port", 0), 0, os.getpid())
        figures = await relay_bench.baseline_fanout_run(reactor, target, 2, 0.1, warmup=0.05)
        self.assertEqual(figures["delivered_pct"], 100)
        self.assertGreater(figures["obj_s"], 0)
        hub = FanOutServerProtocol.hub
        await relay_bench.wait_until(
            reactor, lambda: hub.publisher is None and not hub.viewers, timeout=10.0
        )
        self.assertEqual(hub.paused_viewers, 0)

    async def quic_baseline_run(
        self, high_water: int, limit: int
    ) -> tuple[relay_bench.Figures, baselines.QuicFanOutHub]:
        """The QUIC baseline server in-process, 2 viewers, at most ``limit`` objects: what
        the publisher sent, the server forwarded and each viewer received is the same; then
        every session, client endpoint and port is gone."""
        server, hub = baselines.quic_fanout_endpoint(reactor, [CHAIN], high_water)
        port = cast(IReactorUDP, reactor).listenUDP(
            0, server, interface="127.0.0.1", maxPacketSize=65535
        )
        self.addCleanup(port.stopListening)
        self.addCleanup(server.close_all)
        client_endpoints: list[QuicEndpoint] = []
        sent: list[bytes] = []
        received: list[list[bytes]] = []
        connect = baselines.connect_quic_baseline

        async def counted(
            reactor: Any, port: int, *, publisher: bool, on_message: Any = None
        ) -> baselines.QuicBaselineClient:
            payloads: list[bytes] = []

            def receive(payload: bytes) -> None:
                payloads.append(payload)
                on_message(payload)

            client = await connect(reactor, port, publisher=publisher, on_message=receive)
            client_endpoints.append(cast(QuicSessionBase, client.session)._connection.endpoint)
            if publisher:
                send = client.send

                def send_counted(payload: bytes) -> None:
                    sent.append(payload)
                    send(payload)

                self.patch(client, "send", send_counted)
            else:
                received.append(payloads)
            return client

        self.patch(relay_bench, "connect_quic_baseline", counted)
        target = relay_bench.Target(0, getattr(port.getHost(), "port", 0), os.getpid())
        figures = await relay_bench.baseline_fanout_run(
            reactor, target, 2, 0.1, transport="quic", limit=limit, warmup=0.05
        )
        self.assertEqual(len(client_endpoints), 3)
        self.assertTrue(0 < len(sent) <= limit)
        self.assertEqual(hub.forwarded, len(sent))
        self.assertEqual(received, [sent, sent])
        self.assertEqual(figures["delivered_pct"], 100)
        await relay_bench.wait_until(
            reactor,
            lambda: (
                hub.publisher is None
                and not hub.viewers
                and server.connections == 0
                and all(e.transport is None for e in client_endpoints)
            ),
            timeout=10.0,
        )
        self.assertEqual((hub.publisher, hub.viewers, hub.blocked), (None, {}, set()))
        return figures, hub

    async def test_quic_baseline_fanout_delivers_every_object(self) -> None:
        figures, _hub = await self.quic_baseline_run(baselines.QUIC_HIGH_WATER, 60)
        for key in ("obj_s", "mbit_s", "relay_cpu", "load_cpu"):
            self.assertTrue(math.isfinite(figures[key]) and figures[key] >= 0, key)

    async def test_quic_baseline_holds_the_publisher_while_a_viewer_is_full(self) -> None:
        """With an 8 KiB bound, a viewer is full after two objects: the server holds the
        publisher's bytes until it drains, and nothing is lost."""
        _figures, hub = await self.quic_baseline_run(8192, 120)
        self.assertGreater(hub.pauses, 0)

    async def test_stats_endpoint_reports_peers(self) -> None:
        target = await self.start_relay()
        site_port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Site(StatsResource(self.relay, reactor))
        )
        self.addCleanup(site_port.stopListening)
        stats = relay_bench.StatsClient(reactor, getattr(site_port.getHost(), "port", 0))
        (client,) = await relay_bench.open_clients(reactor, target.url("ws"), 1)
        self.addCleanup(relay_bench.close_clients, reactor, [client])
        await relay_bench.wait_until(reactor, lambda: len(self.relay.peers) == 1, timeout=10.0)
        self.assertEqual(
            await stats.get(),
            {
                "peers": 1,
                "tracks": 0,
                "subscriptions": 0,
                "streams": 0,
                "reaper_pending": 0,
                "reaped": self.relay.reaper.reaped,
                "losses_pending": 0,
            },
        )


class TeardownSmokeTests(TestCase):
    timeout = 120

    async def test_leavers_vanish_and_are_reaped_by_a_relay_in_its_own_process(self) -> None:
        """The teardown workload, small: relay_runner (paced reactor) and bench/leavers.py."""
        figures = await relay_bench.with_process(
            relay_bench.start_relay,
            lambda target: relay_bench.teardown_run(reactor, target, "ws", 20, 2, 3),
        )
        self.assertLess(figures["reap_ms"], 30_000)
        for key in ("quiet_p99", "during_p99", "during_max", "p99_ratio"):
            self.assertTrue(math.isfinite(figures[key]) and figures[key] > 0, key)
        self.assertEqual(relay_bench.Child.live, set())


class HelperTests(SynchronousTestCase):
    def test_process_figures_of_this_process(self) -> None:
        self.assertGreater(relay_bench.cpu_seconds(os.getpid()), 0)
        self.assertGreater(relay_bench.rss_bytes(os.getpid()), 1 << 20)

    def test_percentile(self) -> None:
        values = [float(v) for v in range(100, 0, -1)]
        self.assertEqual(relay_bench.percentile(values, 0.5), 51)
        self.assertEqual(relay_bench.percentile(values, 0.99), 100)
        self.assertTrue(math.isnan(relay_bench.percentile([], 0.5)))

    def test_viewer_counts_loss_between_stamps(self) -> None:
        viewer = relay_bench.Viewer()
        viewer.recording = True
        for sequence in (5, 6, 9):
            viewer.received(stamped_payload(sequence, 64, 0))
        self.assertEqual((viewer.objects, viewer.bytes, viewer.lost()), (3, 192, 2))

    def test_section_shows_medians(self) -> None:
        section = relay_bench.Section(
            "t", [relay_bench.Column("x", "x", "{:.1f}"), relay_bench.Column("y", "y")]
        )
        section.rows.append(relay_bench.Row("a", [{"x": 1.0}, {"x": 3.0}, {"x": 2.0}]))
        self.assertIn("| a | 2.0 | - |", section.markdown())

    def test_parse_sub_bench(self) -> None:
        text = (
            "  aiomoqt-bench results  (4.4s active / 4.4s elapsed)\n"
            "  Objects:     49,650\n  Throughput:  370.50 Mbps\n"
            "               p50=216.8  p95=456.2  p99=492.7 ms\n  Lost:        0 (0.00%)\n"
        )
        figures = relay_bench.parse_sub_bench(text)
        expected: dict[str, Any] = {
            "objects": 49650,
            "mbit_s": 370.5,
            "p50": 216.8,
            "p99": 492.7,
            "lost": 0,
            "seconds": 4.4,
        }
        self.assertEqual(figures, expected)
        self.assertRaises(RuntimeError, relay_bench.parse_sub_bench, "No data received.")
