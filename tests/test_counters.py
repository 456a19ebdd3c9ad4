"""Tests for moqrelay.counters: the event counters' labels (their values move in
tests/test_metrics.py, scraped through a relay)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from moqrelay import counters
from moqrelay.wire import control as c
from moqrelay.wire.errors import SessionErrorCode, SubscribeErrorCode


def sample(counter: object, **labels: str) -> float:
    for metric in counter.collect():  # type: ignore[attr-defined]
        for s in metric.samples:
            if s.name.endswith("_total") and s.labels == labels:
                return float(s.value)
    return 0.0


class LabelTests(SynchronousTestCase):
    def test_labels_are_bounded(self) -> None:
        self.assertEqual(counters.code_name(SessionErrorCode, 0x3), "PROTOCOL_VIOLATION")
        self.assertEqual(counters.code_name(SessionErrorCode, 0xDEAD), "other")

    def test_a_refusal_is_counted_under_its_message_and_code_name(self) -> None:
        labels = {"message": "SUBSCRIBE_ERROR", "code": "TRACK_DOES_NOT_EXIST"}
        before = sample(counters.REQUESTS_REFUSED, **labels)
        counters.final_answer_sent(
            c.SubscribeError(0, SubscribeErrorCode.TRACK_DOES_NOT_EXIST, "no")
        )
        counters.final_answer_sent(c.SubscribeOk(2, 2, 0, 1, None, []))
        self.assertEqual(sample(counters.REQUESTS_REFUSED, **labels), before + 1)
