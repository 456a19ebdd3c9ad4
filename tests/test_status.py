"""Tests for moqrelay.relay.status: TRACK_STATUS from the relay's track or forwarded, in memory."""

from __future__ import annotations

from moqrelay.client.api import RequestRejected
from moqrelay.wire import control as c
from tests.helpers import CachedTrackCase, settle

NS = (b"live", b"demo")


class TrackStatusTests(CachedTrackCase):
    def test_track_status_from_cache_and_forwarded(self) -> None:
        d = self.viewer.track_status(NS, b"video")
        settle(self.clock)
        status = self.successResultOf(d)
        self.assertEqual(status.largest, c.Location(2, 3))
        d = self.viewer.track_status(NS, b"not-subscribed")
        settle(self.clock)
        # Forwarded to the publisher, whose client refuses TRACK_STATUS (NOT_SUPPORTED).
        self.assertEqual(self.failureResultOf(d, RequestRejected).value.code, 0x3)
        d = self.viewer.track_status((b"nobody",), b"x")
        settle(self.clock)
        self.assertEqual(self.failureResultOf(d, RequestRejected).value.code, 0x4)
