"""Relay layer: FETCH served from a track's group cache.

Resolves the requested range (standalone, relative joining or absolute
joining) into start and end locations, checks it against what the relay
knows, and encodes the fetch stream: FETCH_HEADER, then the cached objects in
the requested group order, ascending object id within a group. Gaps mean
"does not exist", which the stream's FIN makes definite.
"""

from __future__ import annotations

from dataclasses import dataclass

from moqrelay.relay.tracks import Track
from moqrelay.wire import control as c
from moqrelay.wire.control import Location
from moqrelay.wire.data import FetchObject, encode_fetch_header, encode_fetch_object
from moqrelay.wire.errors import FetchErrorCode


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
