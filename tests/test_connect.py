"""Tests for moqrelay.client.connect (end to end use is in tests/test_service.py)."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from moqrelay.client.connect import connect


class SchemeTests(SynchronousTestCase):
    def test_unknown_schemes_are_refused_at_once(self) -> None:
        for url in ("http://h/", "ftp://h/", "h:4443"):
            self.assertRaises(ValueError, connect, Clock(), url)
