"""Relay layer: tracks as the relay holds them, with a bounded cache of recent groups.

A `Track` is one full track name with one upstream source. Objects arrive on
`Subgroup`s (one per upstream subgroup stream) and are stored once, already
encoded the way every downstream subgroup stream carries them (object id
delta 0), so fanning an object out to N viewers costs N writes of the same
bytes and no encoding. Only the few groups the cache keeps, plus what slow
viewers still hold (bounded by their lag), stay in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IDelayedCall

from moqrelay.wire.control import Location
from moqrelay.wire.data import ObjectDatagram, encode_subgroup_object

if TYPE_CHECKING:
    from moqrelay.relay.hub import RelayPeer
    from moqrelay.relay.subscription import Subscription

TrackKey = tuple[tuple[bytes, ...], bytes]


class CachedObject:
    """One object, kept with its downstream encoding (delta 0)."""

    __slots__ = ("extensions", "object_id", "payload", "status", "wire")

    def __init__(
        self, object_id: int, payload: bytes, status: int, extensions: bytes, with_ext: bool
    ) -> None:
        self.object_id = object_id
        self.payload = payload
        self.status = status
        self.extensions = extensions
        self.wire = self.encode(0, with_ext)

    def encode(self, delta: int, with_ext: bool) -> bytes:
        return encode_subgroup_object(
            delta,
            self.payload,
            extensions=self.extensions if with_ext else None,
            status=self.status,
        )

    def size(self) -> int:
        return len(self.wire)


class Subgroup:
    """The objects of one (group, subgroup), in arrival order."""

    __slots__ = (
        "__weakref__",
        "closed",
        "datagram",
        "evicted",
        "group_id",
        "has_extensions",
        "objects",
        "priority",
        "release",
        "reset_code",
        "subgroup_id",
    )

    def __init__(
        self, group_id: int, subgroup_id: int, priority: int, has_extensions: bool
    ) -> None:
        self.group_id = group_id
        self.subgroup_id = subgroup_id
        self.priority = priority
        self.has_extensions = has_extensions
        self.objects: list[CachedObject] = []
        self.closed = False
        self.reset_code: int | None = None
        # Dropped from the cache: nothing more is stored or served for it.
        self.evicted = False
        # Stops the upstream stream feeding it (set by the peer that receives it).
        self.release: Callable[[], None] | None = None
        # Set when the object arrived as a datagram.
        self.datagram: ObjectDatagram | None = None


class Group:
    __slots__ = ("__weakref__", "bytes", "group_id", "subgroups")

    def __init__(self, group_id: int) -> None:
        self.group_id = group_id
        self.subgroups: list[Subgroup] = []
        self.bytes = 0


class Track:
    """One full track name fed by one upstream subscription."""

    PENDING, LIVE, ENDED = "pending", "live", "ended"

    def __init__(self, key: TrackKey, max_groups: int, max_bytes: int) -> None:
        self.key = key
        self.max_groups = max_groups
        self.max_bytes = max_bytes
        self.state = Track.PENDING
        self.groups: dict[int, Group] = {}
        self.cached_bytes = 0
        self.largest: Location | None = None
        self.group_order = 1
        self.subscriptions: dict[Subscription, None] = {}
        self.end_status: int | None = None
        self.end_reason = ""
        # The upstream subscription (or PUBLISH) that feeds the track.
        self.publisher: RelayPeer | None = None
        self.upstream_request_id: int | None = None
        self.alias: int | None = None
        # Pushed with PUBLISH: lives while its publisher keeps it, watched or not.
        self.pushed = False
        self.upstream_streams = 0
        self.upstream_open = 0
        # The publisher's PUBLISH_DONE (status, reason, stream count), applied once
        # every stream it announced has arrived and ended, or after the drain time.
        self.pending_done: tuple[int, str, int] | None = None
        self.done_timer: IDelayedCall | None = None

    @property
    def namespace(self) -> tuple[bytes, ...]:
        return self.key[0]

    @property
    def name(self) -> bytes:
        return self.key[1]

    def open_subgroup(
        self, group_id: int, subgroup_id: int, priority: int, has_extensions: bool
    ) -> Subgroup:
        group = self.groups.get(group_id)
        if group is None:
            group = self.groups[group_id] = Group(group_id)
            self._evict()
        subgroup = Subgroup(group_id, subgroup_id, priority, has_extensions)
        group.subgroups.append(subgroup)
        return subgroup

    def add_object(
        self, subgroup: Subgroup, object_id: int, payload: bytes, status: int, extensions: bytes
    ) -> None:
        if self.state == Track.ENDED or subgroup.evicted:
            return
        obj = CachedObject(object_id, payload, status, extensions, subgroup.has_extensions)
        subgroup.objects.append(obj)
        group_id = subgroup.group_id
        group = self.groups.get(group_id)
        if group is not None:
            size = len(obj.wire)
            group.bytes += size
            self.cached_bytes += size
        # A new Location only when the largest moves (tuple order is the draft's order).
        largest = self.largest
        if largest is None or (group_id, object_id) > largest:
            self.largest = Location(group_id, object_id)
        if self.subscriptions:
            for sub in list(self.subscriptions):
                sub.object_available(subgroup)
        if self.cached_bytes > self.max_bytes:
            self._evict()

    def close_subgroup(self, subgroup: Subgroup, reset_code: int | None) -> None:
        if subgroup.closed:
            return
        subgroup.closed = True
        subgroup.reset_code = reset_code
        for sub in list(self.subscriptions):
            sub.subgroup_closed(subgroup)

    def _evict(self) -> None:
        """Drop the oldest groups past the bounds (the newest always stays).

        Viewers still on an evicted subgroup get what was cached of it and then
        its stream ends, so nothing keeps an evicted group alive, even when the
        publisher never finishes its streams.
        """
        while len(self.groups) > 1 and (
            len(self.groups) > self.max_groups or self.cached_bytes > self.max_bytes
        ):
            group = self.groups.pop(min(self.groups))
            self.cached_bytes -= group.bytes
            for subgroup in group.subgroups:
                subgroup.evicted = True
                release, subgroup.release = subgroup.release, None
                if release is not None and not subgroup.closed:
                    release()
                for sub in list(self.subscriptions):
                    sub.subgroup_closed(subgroup)

    def cached_subgroups(self, start_group: int) -> Iterator[Subgroup]:
        """Cached subgroups of groups >= start_group, oldest group first."""
        for group_id in sorted(self.groups):
            if group_id >= start_group:
                yield from self.groups[group_id].subgroups

    def open_subgroups(self) -> Iterator[Subgroup]:
        for group in self.groups.values():
            for subgroup in group.subgroups:
                if not subgroup.closed:
                    yield subgroup

    def cancel_done_timer(self) -> None:
        if self.done_timer is not None and self.done_timer.active():
            self.done_timer.cancel()
        self.done_timer = None

    def drop_cache(self) -> None:
        self.groups = {}
        self.cached_bytes = 0
