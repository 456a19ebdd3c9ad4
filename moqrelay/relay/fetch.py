"""Relay layer: every FETCH, served from a track's group cache or forwarded.

Resolves the requested range (standalone, relative joining or absolute
joining) into start and end locations, checks it against what the relay
knows, and encodes the fetch stream: FETCH_HEADER, then the cached objects in
the requested group order, ascending object id within a group. Gaps mean
"does not exist", which the stream's FIN makes definite.

A standalone FETCH for a track that is not live here, or that starts before
the cache, goes to the track's publisher (or the --announce relay) as a
`ForwardedFetch`: its answer and its fetch stream are copied back to the
viewer, and FETCH_CANCEL or either side leaving stops both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from moqrelay.relay.access import RequestPeer
from moqrelay.relay.namespaces import Namespace
from moqrelay.relay.subscription import Subscription
from moqrelay.relay.tracks import Track
from moqrelay.session import IncomingData
from moqrelay.transport.interfaces import IStream
from moqrelay.wire import control as c
from moqrelay.wire.control import Location
from moqrelay.wire.data import FetchObject, encode_fetch_header, encode_fetch_object
from moqrelay.wire.errors import FetchErrorCode, StreamResetCode


class FetchRefused(Exception):
    """The FETCH is answered with FETCH_ERROR ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class FetchRange:
    """Objects from ``start`` up to ``end``; ``end.object == 0`` means all of ``end.group``."""

    start: Location
    end: Location

    def covers(self, group: int, obj: int) -> bool:
        if Location(group, obj) < self.start or group > self.end.group:
            return False
        return group < self.end.group or self.end.object == 0 or obj < self.end.object


def joining_range(fetch: c.Fetch, largest: Location | None) -> FetchRange:
    """The range of a joining FETCH, from the joined subscription's largest location."""
    if largest is None:
        raise FetchRefused(FetchErrorCode.INVALID_RANGE, "the joined subscription has no content")
    assert fetch.joining_start is not None
    if fetch.fetch_type == c.FETCH_RELATIVE_JOINING:
        start_group = max(0, largest.group - fetch.joining_start)
    else:
        start_group = fetch.joining_start
    end = Location(largest.group, largest.object + 1)
    if Location(start_group, 0) >= end:
        raise FetchRefused(FetchErrorCode.INVALID_RANGE, "joining start after the largest object")
    return FetchRange(Location(start_group, 0), end)


def standalone_range(fetch: c.Fetch, track: Track) -> FetchRange:
    assert fetch.start is not None and fetch.end is not None
    if fetch.end.group < fetch.start.group or (
        fetch.end.group == fetch.start.group
        and fetch.end.object != 0
        and fetch.end.object <= fetch.start.object
    ):
        raise FetchRefused(FetchErrorCode.INVALID_RANGE, "the end is before the start")
    if track.largest is None or fetch.start > track.largest:
        raise FetchRefused(FetchErrorCode.INVALID_RANGE, "the start is after the largest object")
    return FetchRange(fetch.start, fetch.end)


def collect(track: Track, wanted: FetchRange, descending: bool) -> list[FetchObject]:
    """The cached objects in range, in the order the fetch stream carries them."""
    objects: list[FetchObject] = []
    for group_id in sorted(track.groups, reverse=descending):
        if group_id < wanted.start.group or group_id > wanted.end.group:
            continue
        in_group = [
            FetchObject(
                group_id, sub.subgroup_id, obj.object_id, sub.priority, obj.extensions,
                obj.payload, obj.status,
            )
            for sub in track.groups[group_id].subgroups
            for obj in sub.objects
            if wanted.covers(group_id, obj.object_id)
        ]  # fmt: skip
        in_group.sort(key=lambda o: o.object_id)
        objects.extend(in_group)
    return objects


def encode_fetch_stream(request_id: int, objects: list[FetchObject]) -> bytes:
    return encode_fetch_header(request_id) + b"".join(encode_fetch_object(o) for o in objects)


class FetchPeer(RequestPeer, Protocol):
    """What FETCH handling asks of a peer, as a viewer and as a publisher."""

    # This peer's FETCHes being answered by a publisher (by its request id), and the
    # FETCHes forwarded to this peer as a publisher (by the relay's request id).
    fetches_out: dict[int, ForwardedFetch]
    fetches: dict[int, ForwardedFetch]

    def subscription(self, request_id: int) -> Subscription | None:
        """This peer's subscription with that request id."""

    def fetch_source(self, namespace: Namespace) -> FetchPeer | None:
        """The publisher (or --announce relay) to forward a FETCH to, never this peer."""


class ForwardedFetch:
    """A viewer's FETCH answered by a publisher: its fetch stream is copied to the viewer."""

    def __init__(self, viewer: FetchPeer, request_id: int) -> None:
        self.viewer = viewer
        self.request_id = request_id
        self.upstream: tuple[FetchPeer, int] | None = None
        self.source: IncomingData | None = None
        self.downstream: IStream | None = None
        self.done = False

    def open_downstream(self) -> bool:
        if self.done or self.viewer.session.closed:
            return False
        self.downstream = self.viewer.session.open_uni_stream()
        self.downstream.write(encode_fetch_header(self.request_id))
        return True

    def forward(self, obj: FetchObject) -> None:
        if self.downstream is not None and not self.done:
            self.downstream.write(encode_fetch_object(obj))

    def end(self, reset_code: int | None) -> None:
        if self.done:
            return
        self.done = True
        self.viewer.fetches_out.pop(self.request_id, None)
        if self.downstream is not None:
            if reset_code is None:
                self.downstream.finish()
            else:
                self.downstream.reset(reset_code)

    def publisher_gone(self) -> None:
        if self.done:
            return
        if self.downstream is None:
            self.done = True
            self.viewer.fetches_out.pop(self.request_id, None)
            self.viewer.session.send(
                c.FetchError(
                    self.request_id, FetchErrorCode.INTERNAL_ERROR, "publisher disconnected"
                )
            )
        else:
            self.end(StreamResetCode.INTERNAL_ERROR)

    def cancel(self) -> None:
        """The viewer sent FETCH_CANCEL (or left): stop both sides."""
        if self.done:
            return
        self.done = True
        if self.downstream is not None:
            self.downstream.reset(StreamResetCode.CANCELLED)
        if self.upstream is not None:
            publisher, request_id = self.upstream
            publisher.fetches.pop(request_id, None)
            publisher.session.send(c.FetchCancel(request_id))
            if self.source is not None:
                self.source.stop(StreamResetCode.CANCELLED)


def on_fetch(peer: FetchPeer, msg: c.Fetch) -> None:
    """FETCH: answer from the cache, or forward to the publisher, or refuse."""
    try:
        track, wanted = _fetch_range(peer, msg)
    except FetchRefused as e:
        if not _forward(peer, msg, e):
            peer.session.send(c.FetchError(msg.request_id, e.code, e.reason))
        return
    cached_from = min(track.groups, default=wanted.start.group + 1)
    if wanted.start.group < cached_from and _forward(peer, msg, None):
        # The range starts before what the cache holds: the publisher may have it.
        return
    order = msg.group_order or track.group_order
    objects = collect(track, wanted, descending=order == c.GROUP_ORDER_DESCENDING)
    if not objects:
        peer.session.send(
            c.FetchError(msg.request_id, FetchErrorCode.NO_OBJECTS, "nothing cached in range")
        )
        return
    last = (
        objects[-1]
        if order != c.GROUP_ORDER_DESCENDING
        else max(objects, key=lambda o: (o.group_id, o.object_id))
    )
    end = c.Location(last.group_id, last.object_id + 1)
    peer.session.send(c.FetchOk(msg.request_id, order, False, end, []))
    stream = peer.session.open_uni_stream()
    stream.write(encode_fetch_stream(msg.request_id, objects))
    stream.finish()


def _fetch_range(peer: FetchPeer, msg: c.Fetch) -> tuple[Track, FetchRange]:
    if msg.fetch_type == c.FETCH_STANDALONE:
        assert msg.namespace is not None and msg.track_name is not None
        denied = peer.check("FETCH", False, msg.namespace, msg.params)
        if denied is not None:
            raise FetchRefused(denied.request_code, denied.reason)
        track = peer.live_track((msg.namespace, msg.track_name))
        if track is None:
            raise FetchRefused(FetchErrorCode.TRACK_DOES_NOT_EXIST, "track not live here")
        return track, standalone_range(msg, track)
    assert msg.joining_request_id is not None
    sub = peer.subscription(msg.joining_request_id)
    if sub is None or sub.filter_type != c.FILTER_LARGEST_OBJECT:
        raise FetchRefused(
            FetchErrorCode.INVALID_JOINING_REQUEST_ID,
            "no Largest Object subscription with that request id",
        )
    if sub.track.state != Track.LIVE:
        raise FetchRefused(FetchErrorCode.TRACK_DOES_NOT_EXIST, "track not live yet")
    return sub.track, joining_range(msg, sub.largest_at_start)


def _forward(peer: FetchPeer, msg: c.Fetch, refused: FetchRefused | None) -> bool:
    """A standalone FETCH the cache cannot answer goes to the track's publisher."""
    if msg.fetch_type != c.FETCH_STANDALONE or msg.namespace is None:
        return False
    if refused is not None and refused.code != FetchErrorCode.TRACK_DOES_NOT_EXIST:
        return False
    publisher = peer.fetch_source(msg.namespace)
    if publisher is None:
        return False
    forwarded = ForwardedFetch(peer, msg.request_id)
    peer.fetches_out[msg.request_id] = forwarded

    def make(request_id: int) -> c.ControlMessage:
        forwarded.upstream = (publisher, request_id)
        publisher.fetches[request_id] = forwarded
        return c.Fetch(
            request_id,
            msg.subscriber_priority,
            msg.group_order,
            c.FETCH_STANDALONE,
            msg.namespace,
            msg.track_name,
            msg.start,
            msg.end,
        )

    publisher.session.send_request(make)
    return True


def on_fetch_answer(peer: FetchPeer, msg: c.FetchOk | c.FetchError) -> None:
    """The publisher's answer to a forwarded FETCH, passed back to the viewer."""
    forwarded = peer.fetches.get(msg.request_id)
    if forwarded is None:
        return
    viewer = forwarded.viewer
    if isinstance(msg, c.FetchOk):
        viewer.session.send(
            c.FetchOk(forwarded.request_id, msg.group_order, msg.end_of_track, msg.end, [])
        )
        return
    del peer.fetches[msg.request_id]
    viewer.fetches_out.pop(forwarded.request_id, None)
    viewer.session.send(c.FetchError(forwarded.request_id, msg.error_code, msg.reason))


def on_fetch_cancel(peer: FetchPeer, msg: c.FetchCancel) -> None:
    forwarded = peer.fetches_out.pop(msg.request_id, None)
    if forwarded is not None:
        forwarded.cancel()


def fetch_stream_opened(peer: FetchPeer, stream: IncomingData, request_id: int) -> None:
    """A fetch stream from this peer (a publisher): copy it to the viewer, or stop it."""
    forwarded = peer.fetches.get(request_id)
    if forwarded is None or not forwarded.open_downstream():
        stream.stop(StreamResetCode.CANCELLED)
        return
    forwarded.source = stream
    stream.context = forwarded


def fetch_stream_ended(peer: FetchPeer, forwarded: ForwardedFetch, reset_code: int | None) -> None:
    if forwarded.upstream is not None:
        peer.fetches.pop(forwarded.upstream[1], None)
    forwarded.end(reset_code)


def peer_gone(peer: FetchPeer) -> None:
    """Stop every FETCH the closed session was part of, as viewer or as publisher."""
    fetches_out, peer.fetches_out = peer.fetches_out, {}
    for forwarded in fetches_out.values():
        forwarded.cancel()
    fetches, peer.fetches = peer.fetches, {}
    for forwarded in fetches.values():
        forwarded.publisher_gone()
