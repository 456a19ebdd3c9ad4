"""Tests for moqrelay.client.tools: the moqrelay-pub and moqrelay-sub building blocks."""

from __future__ import annotations

import argparse

from twisted.trial.unittest import SynchronousTestCase

from moqrelay.client.api import ReceivedObject
from moqrelay.client.tools import (
    SubStats,
    parse_namespace,
    pub_parser,
    read_stamp,
    stamped_payload,
    sub_parser,
    with_token,
)


class ToolTests(SynchronousTestCase):
    def test_namespaces_map_paths_to_tuples(self) -> None:
        self.assertEqual(parse_namespace("live/demo"), (b"live", b"demo"))
        self.assertEqual(parse_namespace("/live//demo/"), (b"live", b"demo"))
        self.assertRaises(argparse.ArgumentTypeError, parse_namespace, "/")

    def test_stamps(self) -> None:
        payload = stamped_payload(7, 1024, 123_456_789)
        self.assertEqual(len(payload), 1024)
        self.assertEqual(read_stamp(payload), (7, 123_456_789))
        self.assertIsNone(read_stamp(b"plain payload of some length"))
        self.assertEqual(len(stamped_payload(1, 4, 0)), 16)

    def test_stats_count_latency_and_loss(self) -> None:
        stats = SubStats()
        for sequence in (0, 1, 3):
            payload = stamped_payload(sequence, 64, 1_000_000)
            stats.add(ReceivedObject(0, 0, sequence, payload, 0, b""), 3_000_000)
        self.assertEqual(stats.objects, 3)
        self.assertEqual(stats.latencies, [2.0, 2.0, 2.0])
        summary = stats.summary()
        self.assertIn("3 objects, 192 bytes", summary)
        self.assertIn("p50 2.00", summary)
        self.assertIn("1 lost", summary)

    def test_token_goes_into_the_query(self) -> None:
        self.assertEqual(with_token("wss://h:1/moq", None), "wss://h:1/moq")
        self.assertEqual(with_token("wss://h:1/moq", "a.b.c"), "wss://h:1/moq?jwt=a.b.c")
        self.assertEqual(with_token("moqt://h:1/p?x=1", "t"), "moqt://h:1/p?x=1&jwt=t")

    def test_parsers(self) -> None:
        args = pub_parser().parse_args(["wss://h/", "-N", "a/b", "-T", "t", "-r", "0"])
        self.assertEqual(args.namespace, (b"a", b"b"))
        self.assertEqual(args.rate, 0.0)
        args = sub_parser().parse_args(["moqt://h/", "-N", "a", "-T", "t", "--count", "-k"])
        self.assertTrue(args.count and args.insecure)
