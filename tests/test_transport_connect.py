"""Tests for moqrelay.transport.connect (end to end use is in tests/test_service.py)."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from moqrelay.transport.connect import open_transport


class SchemeTests(SynchronousTestCase):
    def test_unknown_schemes_are_refused_at_once(self) -> None:
        for url in ("http://h/", "ftp://h/", "h:4443"):
            e = self.assertRaises(ValueError, open_transport, Clock(), url, lambda t: None)
            self.assertIn("moqt, https, wss, ws", str(e))
