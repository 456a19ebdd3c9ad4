"""Relay layer: TRACK_STATUS, answered from the relay's track or by the publisher.

A live track is described from what the relay holds (group order, largest
location). Otherwise the request goes to the publisher of the longest
announced prefix, and its answer is passed back under the viewer's request id;
with no publisher the answer is TRACK_DOES_NOT_EXIST.
"""

from __future__ import annotations

from typing import Protocol

from moqrelay.relay.access import RequestPeer
from moqrelay.relay.namespaces import Namespace
from moqrelay.wire import control as c
from moqrelay.wire.errors import SubscribeErrorCode


class StatusPeer(RequestPeer, Protocol):
    """What TRACK_STATUS handling asks of a peer."""

    # TRACK_STATUS forwarded to this peer: the relay's request id -> (viewer, its id).
    status_requests: dict[int, tuple[StatusPeer, int]]

    def status_source(self, namespace: Namespace) -> StatusPeer | None:
        """The publisher announcing ``namespace`` (never this peer), if any."""


def on_track_status(peer: StatusPeer, msg: c.TrackStatus) -> None:
    denied = peer.check("TRACK_STATUS", False, msg.namespace, msg.params)
    if denied is not None:
        peer.session.send(c.TrackStatusError(msg.request_id, denied.request_code, denied.reason))
        return
    track = peer.live_track((msg.namespace, msg.track_name))
    if track is not None:
        peer.session.send(
            c.TrackStatusOk(msg.request_id, 0, 0, track.group_order, track.largest, [])
        )
        return
    publisher = peer.status_source(msg.namespace)
    if publisher is None:
        peer.session.send(
            c.TrackStatusError(
                msg.request_id, SubscribeErrorCode.TRACK_DOES_NOT_EXIST, "unknown track"
            )
        )
        return

    def make(request_id: int) -> c.ControlMessage:
        publisher.status_requests[request_id] = (peer, msg.request_id)
        return c.TrackStatus(
            request_id,
            msg.namespace,
            msg.track_name,
            msg.subscriber_priority,
            msg.group_order,
            msg.forward,
            msg.filter_type,
            msg.start,
            msg.end_group,
        )

    publisher.session.send_request(make)


def on_track_status_answer(peer: StatusPeer, msg: c.TrackStatusOk | c.TrackStatusError) -> None:
    """The publisher's answer to a forwarded TRACK_STATUS, passed back to the viewer."""
    asked = peer.status_requests.pop(msg.request_id, None)
    if asked is None:
        return
    viewer, request_id = asked
    if isinstance(msg, c.TrackStatusOk):
        viewer.session.send(
            c.TrackStatusOk(request_id, 0, 0, msg.group_order, msg.largest, msg.params)
        )
    else:
        viewer.session.send(c.TrackStatusError(request_id, msg.error_code, msg.reason))
