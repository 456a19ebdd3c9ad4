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
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall

from moqrelay.wire.control import Location
from moqrelay.wire.data import ObjectDatagram, encode_subgroup_object

TrackKey = tuple[tuple[bytes, ...], bytes]


class TrackViewer(Protocol):
    """What a track (and the hub, for the track's lifecycle) asks of one subscription."""

    def object_available(self, subgroup: Subgroup) -> None:
        """``subgroup`` has a new object."""

    def subgroup_closed(self, subgroup: Subgroup) -> None:
        """``subgroup`` ended (FIN, reset or eviction)."""

    def activate(self) -> None:
        """The track went live."""

    def fail(self, code: int, reason: str) -> None:
        """The track failed before it went live."""

    def end(self, status: int, reason: str) -> None:
        """The track ended: finish in-flight streams, then PUBLISH_DONE."""


class Publisher(Protocol):
    """What the hub asks of the peer that feeds a track."""

    def unsubscribe_upstream(self, track: Track) -> None:
        """The last viewer left: cancel the upstream subscription."""

    def forget_upstream(self, track: Track) -> bool:
        """Stop routing the track's upstream streams; False if it was not routed."""


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
        "feeds",
        "group_id",
        "has_extensions",
        "ids",
        "objects",
        "priority",
        "releases",
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
        # Upstream streams feeding it (one per publisher that sends it), and what stops
        # each of them (set by the peer that receives it).
        self.feeds = 1
        self.releases: list[Callable[[], None]] = []
        # The object ids stored, kept only once a second publisher feeds the subgroup
        # (for deduplication); None while one publisher does.
        self.ids: set[int] | None = None
        # Set when the object arrived as a datagram.
        self.datagram: ObjectDatagram | None = None


class Group:
    __slots__ = ("__weakref__", "by_id", "bytes", "group_id", "subgroups")

    def __init__(self, group_id: int) -> None:
        self.group_id = group_id
        self.subgroups: list[Subgroup] = []
        # Subgroups by id, for a second publisher's stream of the same subgroup.
        self.by_id: dict[int, Subgroup] = {}
        self.bytes = 0


class Source:
    """One publisher's feed of a track: the relay's SUBSCRIBE to it, or its PUBLISH."""

    __slots__ = (
        "alias",
        "done_timer",
        "live",
        "open",
        "pending_done",
        "publisher",
        "request_id",
        "streams",
    )

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self.request_id: int | None = None
        self.alias: int | None = None
        # Answered SUBSCRIBE_OK (or came with PUBLISH).
        self.live = False
        # Subgroup streams received from it, and how many are still open.
        self.streams = 0
        self.open = 0
        # Its PUBLISH_DONE (status, reason, stream count), applied once every stream it
        # announced has arrived and ended, or after the drain time.
        self.pending_done: tuple[int, str, int] | None = None
        self.done_timer: IDelayedCall | None = None

    def cancel_done_timer(self) -> None:
        if self.done_timer is not None and self.done_timer.active():
            self.done_timer.cancel()
        self.done_timer = None


class Track:
    """One full track name, fed by one or more publishers (`Source`), deduplicated.

    Draft-14 ("Multiple Publishers"): the relay subscribes to every publisher of the
    track's namespace and forwards each object once: a second publisher's stream for a
    subgroup the cache already has feeds the same `Subgroup`, and objects already stored
    are dropped, so a viewer sees neither a gap nor a duplicate when one of two
    redundant publishers goes away.
    """

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
        self.subscriptions: dict[TrackViewer, None] = {}
        # The publishers that feed the track, oldest first.
        self.sources: dict[Publisher, Source] = {}
        # Pushed with PUBLISH: lives while a publisher keeps it, watched or not.
        self.pushed = False

    @property
    def namespace(self) -> tuple[bytes, ...]:
        return self.key[0]

    @property
    def name(self) -> bytes:
        return self.key[1]

    def open_subgroup(
        self, group_id: int, subgroup_id: int, priority: int, has_extensions: bool
    ) -> Subgroup:
        """The cached subgroup a new upstream stream feeds: a new one, or the one another
        publisher already feeds (then its objects are deduplicated from now on)."""
        group = self.groups.get(group_id)
        if group is None:
            group = self.groups[group_id] = Group(group_id)
            self._evict()
        elif (existing := group.by_id.get(subgroup_id)) is not None:
            existing.feeds += 1
            if existing.ids is None:
                existing.ids = {obj.object_id for obj in existing.objects}
            return existing
        subgroup = Subgroup(group_id, subgroup_id, priority, has_extensions)
        group.subgroups.append(subgroup)
        if subgroup_id != -1:
            group.by_id[subgroup_id] = subgroup
        return subgroup

    def add_object(
        self, subgroup: Subgroup, object_id: int, payload: bytes, status: int, extensions: bytes
    ) -> None:
        if self.state == Track.ENDED or subgroup.evicted or subgroup.closed:
            return
        ids = subgroup.ids
        if ids is not None:
            if object_id in ids:
                return
            ids.add(object_id)
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
        """One upstream stream of ``subgroup`` ended. A FIN completes the subgroup; a
        reset ends it only when no other publisher's stream still feeds it."""
        subgroup.feeds -= 1
        if subgroup.closed or (reset_code is not None and subgroup.feeds > 0):
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
                releases, subgroup.releases = subgroup.releases, []
                if not subgroup.closed:
                    for release in releases:
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

    def drop_cache(self) -> None:
        self.groups = {}
        self.cached_bytes = 0
