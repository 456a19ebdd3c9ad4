"""Relay layer: one downstream subscription (a viewer's SUBSCRIBE to a track).

It applies the filter, gives the viewer its track alias (= its request id),
opens one `DownstreamStream` per subgroup it serves, bounds how far a slow
viewer may lag (skip to the newest group, then TOO_FAR_BEHIND), and sends
PUBLISH_DONE only after all of its streams are closed.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from moqrelay.relay.config import RelayConfig
from moqrelay.relay.serve import DownstreamStream, SessionWriter
from moqrelay.relay.tracks import Subgroup, Track
from moqrelay.session import MoqtSession
from moqrelay.transport.interfaces import IStream
from moqrelay.wire import control as c
from moqrelay.wire.control import Location
from moqrelay.wire.data import ObjectDatagram, encode_datagram
from moqrelay.wire.errors import ProtocolViolation, PublishDoneCode, StreamResetCode

# Streams a closed session's subscription forgets per reaper step.
FORGET_CHUNK = 256


class Viewer(Protocol):
    """What a subscription asks of the peer that made it."""

    @property
    def session(self) -> MoqtSession: ...

    @property
    def writer(self) -> SessionWriter: ...

    @property
    def takes_datagrams(self) -> bool: ...

    def subscription_finished(self, sub: Subscription) -> None:
        """``sub`` is over (done, failed, unsubscribed or its session gone): forget it."""


class Subscription:
    """A viewer's subscription to one relay track."""

    PENDING, ACTIVE, DRAINING, CLOSED = "pending", "active", "draining", "closed"

    def __init__(
        self,
        viewer: Viewer,
        track: Track,
        request_id: int,
        *,
        config: RelayConfig,
        reactor: IReactorTime,
        priority: int,
        group_order: int,
        forward: bool,
        filter_type: int,
        start: Location | None,
        end_group: int | None,
        answer: bool = True,
    ) -> None:
        self.viewer = viewer
        self.config = config
        self.reactor = reactor
        self.track = track
        self.request_id = request_id
        # Aliases: a viewer's SUBSCRIBE gets its own request id; a relay PUBLISH, ours.
        self.alias = request_id
        self.priority = priority
        self.group_order = group_order
        self.forward = forward
        self.filter_type = filter_type
        self.requested_start = start
        self.end_group = end_group if filter_type == c.FILTER_ABSOLUTE_RANGE else None
        # Whether activation answers with SUBSCRIBE_OK (not for PUBLISH, already answered).
        self.answer = answer
        self.start = Location(0, 0)
        self.largest_at_start: Location | None = None
        self.state = Subscription.PENDING
        self.streams: dict[Subgroup, DownstreamStream] = {}
        self.streams_opened = 0
        self.skipped_groups = 0
        self.done_status: int = PublishDoneCode.TRACK_ENDED
        self.done_reason = ""
        self._drain_timer: IDelayedCall | None = None

    @classmethod
    def from_message(
        cls,
        viewer: Viewer,
        track: Track,
        msg: c.Subscribe | c.PublishOk,
        config: RelayConfig,
        reactor: IReactorTime,
    ) -> Subscription:
        """A viewer's SUBSCRIBE, or its PUBLISH_OK to the relay's PUBLISH (already
        answered, so no SUBSCRIBE_OK): both carry the same subscription fields."""
        return cls(
            viewer,
            track,
            msg.request_id,
            config=config,
            reactor=reactor,
            priority=msg.subscriber_priority,
            group_order=msg.group_order,
            forward=bool(msg.forward),
            filter_type=msg.filter_type,
            start=msg.start,
            end_group=msg.end_group,
            answer=isinstance(msg, c.Subscribe),
        )

    @property
    def session(self) -> MoqtSession:
        return self.viewer.session

    @property
    def writer(self) -> SessionWriter:
        return self.viewer.writer

    @property
    def draining(self) -> bool:
        return self.state == Subscription.DRAINING

    @property
    def descending(self) -> bool:
        order = self.group_order or self.track.group_order
        return order == c.GROUP_ORDER_DESCENDING

    def activate(self) -> None:
        """The track is live: answer SUBSCRIBE_OK and serve what the filter admits."""
        if self.state != Subscription.PENDING:
            return
        track = self.track
        largest = track.largest
        if largest is None:
            start = Location(0, 0)
        elif self.filter_type == c.FILTER_NEXT_GROUP_START:
            start = Location(largest.group + 1, 0)
        elif self.filter_type == c.FILTER_LARGEST_OBJECT:
            if self.config.join_at_group_start and largest.group in track.groups:
                start = Location(largest.group, 0)
            else:
                start = Location(largest.group, largest.object + 1)
        else:
            assert self.requested_start is not None
            start = self.requested_start
        self.start = start
        self.largest_at_start = largest
        self.state = Subscription.ACTIVE
        if self.answer:
            order = self.group_order or track.group_order
            self.session.send(c.SubscribeOk(self.request_id, self.alias, 0, order, largest, []))
        for subgroup in list(track.cached_subgroups(start.group)):
            if self.state != Subscription.ACTIVE:
                break
            self.object_available(subgroup)

    def fail(self, code: int, reason: str) -> None:
        """The upstream subscription failed before it went live."""
        self.state = Subscription.CLOSED
        if self.answer:
            self.session.send(c.SubscribeError(self.request_id, code, reason))
        self.viewer.subscription_finished(self)

    def update(self, msg: c.SubscribeUpdate) -> None:
        """SUBSCRIBE_UPDATE: the subscription may only narrow."""
        new_end = msg.end_group - 1 if msg.end_group else None
        if self.state == Subscription.ACTIVE and msg.start < self.start:
            raise ProtocolViolation("SUBSCRIBE_UPDATE moved the start backwards")
        if self.end_group is not None and (new_end is None or new_end > self.end_group):
            raise ProtocolViolation("SUBSCRIBE_UPDATE moved the end group forwards")
        if self.state == Subscription.ACTIVE:
            self.start = msg.start
        else:
            self.filter_type = c.FILTER_ABSOLUTE_START
            self.requested_start = msg.start
        self.end_group = new_end
        self.priority = msg.subscriber_priority
        self.forward = bool(msg.forward)

    def object_available(self, subgroup: Subgroup) -> None:
        """``subgroup`` has a new object (or, on activation, cached ones)."""
        if self.state != Subscription.ACTIVE or not self.forward:
            return
        if subgroup.datagram is not None and self.viewer.takes_datagrams:
            self._send_datagram(subgroup.datagram)
            return
        stream = self.streams.get(subgroup)
        if stream is None:
            group_id = subgroup.group_id
            if group_id < self.start.group:
                return
            if self.end_group is not None and group_id > self.end_group:
                self.end(PublishDoneCode.SUBSCRIPTION_ENDED, "end of the requested range")
                return
            min_object = self.start.object if group_id == self.start.group else 0
            stream = self.streams[subgroup] = DownstreamStream(self, subgroup, min_object)
            if self.writer.blocked():
                self._skip_behind(group_id)
                if self.state != Subscription.ACTIVE:
                    return
        stream.pump()

    def _send_datagram(self, datagram: ObjectDatagram) -> None:
        group_id = datagram.group_id
        if (group_id, datagram.object_id) < self.start:
            return
        if self.end_group is not None and group_id > self.end_group:
            self.end(PublishDoneCode.SUBSCRIPTION_ENDED, "end of the requested range")
            return
        self.session.transport.send_datagram(
            encode_datagram(dataclasses.replace(datagram, track_alias=self.alias))
        )

    def subgroup_closed(self, subgroup: Subgroup) -> None:
        stream = self.streams.get(subgroup)
        if stream is not None:
            stream.pump()

    def _skip_behind(self, newest_group: int) -> None:
        """A slow viewer drops groups older than its allowed lag."""
        oldest_allowed = newest_group - self.config.max_lag_groups
        stale = [s for s in self.streams.values() if s.subgroup.group_id < oldest_allowed]
        if not stale:
            return
        skipped = {s.subgroup.group_id for s in stale}
        for stream in stale:
            stream.abandon(StreamResetCode.DELIVERY_TIMEOUT)
            del self.streams[stream.subgroup]
        self.skipped_groups += len(skipped)
        if self.skipped_groups > self.config.max_skipped_groups:
            self.end(PublishDoneCode.TOO_FAR_BEHIND, "viewer too far behind")

    def open_stream(self) -> IStream:
        self.streams_opened += 1
        return self.session.open_uni_stream()

    def stream_done(self, stream: DownstreamStream) -> None:
        if self.streams.pop(stream.subgroup, None) is None:
            return
        if stream.stream is not None:
            self.skipped_groups = 0
        if self.state == Subscription.DRAINING and not self.streams:
            self._send_done()

    def end(self, status: int, reason: str) -> None:
        """End the subscription: finish what is in flight, then PUBLISH_DONE."""
        if self.state not in (Subscription.ACTIVE, Subscription.PENDING):
            return
        self.track.subscriptions.pop(self, None)
        self.done_status = status
        self.done_reason = reason
        self.state = Subscription.DRAINING
        if status == PublishDoneCode.TOO_FAR_BEHIND:
            self._abandon_all(StreamResetCode.DELIVERY_TIMEOUT)
        for stream in list(self.streams.values()):
            stream.pump()
        if not self.streams:
            self._send_done()
        elif self.state == Subscription.DRAINING:
            self._drain_timer = self.reactor.callLater(
                self.config.drain_timeout, self._drain_timed_out
            )

    def _drain_timed_out(self) -> None:
        self._drain_timer = None
        self._abandon_all(StreamResetCode.DELIVERY_TIMEOUT)
        self._send_done()

    def _abandon_all(self, code: int) -> None:
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.abandon(code)

    def _send_done(self) -> None:
        if self.state == Subscription.CLOSED:
            return
        self.state = Subscription.CLOSED
        self._cancel_timer()
        self.session.send(
            c.PublishDone(self.request_id, self.done_status, self.streams_opened, self.done_reason)
        )
        self.viewer.subscription_finished(self)

    def unsubscribe(self) -> None:
        """UNSUBSCRIBE: reset what is open and forget the subscription (no PUBLISH_DONE)."""
        self.state = Subscription.CLOSED
        self._cancel_timer()
        self.track.subscriptions.pop(self, None)
        self._abandon_all(StreamResetCode.CANCELLED)
        self.viewer.subscription_finished(self)

    def session_gone(self) -> bool:
        """The viewer's session is closed: drop everything, nothing to send.

        A reaper step: it forgets at most `FORGET_CHUNK` streams and returns True
        while some are left, so that the reaper calls it again on a later step and a
        viewer with 100,000 open streams does not stall one reactor turn.
        """
        self.state = Subscription.CLOSED
        self._cancel_timer()
        self.track.subscriptions.pop(self, None)
        streams = self.streams
        for _ in range(min(FORGET_CHUNK, len(streams))):
            _, downstream = streams.popitem()
            downstream.forget()
        if streams:
            return True
        self.viewer.subscription_finished(self)
        return False

    def _cancel_timer(self) -> None:
        if self._drain_timer is not None and self._drain_timer.active():
            self._drain_timer.cancel()
        self._drain_timer = None
