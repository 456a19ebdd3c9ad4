"""Client layer: a MoQT draft-14 publisher and subscriber on one session, any transport.

`MoqtClient` is the `SessionApp` of a client session. As a publisher it
announces namespaces and answers the relay's SUBSCRIBEs for the tracks it
offers (`TrackPublisher`); as a subscriber it subscribes and hands every
received object to a callback (`ClientSubscription`). Requests return
Deferreds that fire on the peer's answer and fail with `RequestRejected`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from moqrelay.session import IncomingData, MoqtSession
from moqrelay.transport.interfaces import IStream
from moqrelay.wire import control as c
from moqrelay.wire.control import Location, Namespace
from moqrelay.wire.data import (
    STATUS_NORMAL,
    FetchHeader,
    FetchObject,
    ObjectDatagram,
    ObjectRecord,
    SubgroupHeader,
    encode_datagram,
    encode_fetch_header,
    encode_fetch_object,
    encode_subgroup_header,
    encode_subgroup_object,
)
from moqrelay.wire.errors import PublishDoneCode, StreamResetCode, SubscribeErrorCode

_log = Logger()


class RequestRejected(Exception):
    """The peer answered a request with an error message."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{reason} (code {code:#x})")
        self.code = code
        self.reason = reason


class SessionLost(Exception):
    """The session ended before the request was answered."""


@dataclass(slots=True)
class ReceivedObject:
    group_id: int
    subgroup_id: int
    object_id: int
    payload: bytes
    status: int
    extensions: bytes


ObjectCallback = Callable[[ReceivedObject], None]


class ClientSubscription:
    """A subscription this client made; objects go to ``on_object``."""

    def __init__(
        self, client: MoqtClient, namespace: Namespace, name: bytes, on_object: ObjectCallback
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self.on_object = on_object
        self.request_id = -1
        self.alias: int | None = None
        self.largest: Location | None = None
        self.ok: Deferred[ClientSubscription] = Deferred()
        self.done: Deferred[c.PublishDone] = Deferred()
        self.streams_seen = 0

    def unsubscribe(self) -> None:
        self.client._end_subscription(self)
        self.client.session.send(c.Unsubscribe(self.request_id))


class _Fetch:
    """A FETCH in progress: FETCH_OK, then objects until the stream's FIN."""

    def __init__(self) -> None:
        self.ok: c.FetchOk | None = None
        self.objects: list[ReceivedObject] = []
        self.done: Deferred[list[ReceivedObject]] = Deferred()


class _Subgroup:
    """One open subgroup stream of a published track, to one subscriber."""

    __slots__ = ("next_id", "stream")

    def __init__(self, stream: IStream, next_id: int) -> None:
        self.stream = stream
        self.next_id = next_id


class _Downstream:
    """One subscriber's subscription to a track we publish."""

    def __init__(self, request_id: int, alias: int) -> None:
        self.request_id = request_id
        self.alias = alias
        self.subgroups: dict[tuple[int, int], _Subgroup] = {}
        self.streams_opened = 0


class TrackPublisher:
    """A track this client offers; every subscriber gets every object sent."""

    def __init__(
        self, client: MoqtClient, namespace: Namespace, name: bytes, priority: int = 128
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self.priority = priority
        self.largest: Location | None = None
        self.subscribers: dict[int, _Downstream] = {}
        self.subscribed: Deferred[None] = Deferred()

    def _subscribe(self, msg: c.Subscribe) -> None:
        alias = self.client.new_alias()
        self.client.session.send(
            c.SubscribeOk(msg.request_id, alias, 0, c.GROUP_ORDER_ASCENDING, self.largest, [])
        )
        self._add_subscriber(msg.request_id, alias)

    def _add_subscriber(self, request_id: int, alias: int) -> None:
        self.subscribers[request_id] = _Downstream(request_id, alias)
        if not self.subscribed.called:
            self.subscribed.callback(None)

    def send_object(
        self,
        group_id: int,
        object_id: int,
        payload: bytes,
        *,
        subgroup_id: int = 0,
        status: int = STATUS_NORMAL,
    ) -> None:
        """Send one object to every subscriber, on its subgroup stream."""
        location = Location(group_id, object_id)
        if self.largest is None or location > self.largest:
            self.largest = location
        session = self.client.session
        for down in self.subscribers.values():
            key = (group_id, subgroup_id)
            sub = down.subgroups.get(key)
            if sub is None or sub.next_id != object_id:
                if sub is not None:
                    sub.stream.finish()
                stream = session.open_uni_stream()
                down.streams_opened += 1
                stream.write(
                    encode_subgroup_header(
                        down.alias, group_id, subgroup_id, self.priority, extensions=False
                    )
                    + encode_subgroup_object(object_id, payload, extensions=None, status=status)
                )
                down.subgroups[key] = _Subgroup(stream, object_id + 1)
            else:
                sub.stream.write(
                    encode_subgroup_object(0, payload, extensions=None, status=status)
                )
                sub.next_id = object_id + 1

    def send_datagram(self, group_id: int, object_id: int, payload: bytes) -> None:
        """Send one object as an OBJECT_DATAGRAM to every subscriber."""
        location = Location(group_id, object_id)
        if self.largest is None or location > self.largest:
            self.largest = location
        for down in self.subscribers.values():
            self.client.session.transport.send_datagram(
                encode_datagram(
                    ObjectDatagram(
                        down.alias, group_id, object_id, self.priority, b"", payload, None, False
                    )
                )
            )

    def end_subgroup(self, group_id: int, subgroup_id: int = 0) -> None:
        for down in self.subscribers.values():
            sub = down.subgroups.pop((group_id, subgroup_id), None)
            if sub is not None:
                sub.stream.finish()

    def end(self, status: int = PublishDoneCode.TRACK_ENDED, reason: str = "") -> None:
        """Finish every open stream, then PUBLISH_DONE to every subscriber."""
        for request_id, down in list(self.subscribers.items()):
            for sub in down.subgroups.values():
                sub.stream.finish()
            down.subgroups = {}
            self.client.session.send(
                c.PublishDone(request_id, status, down.streams_opened, reason)
            )
        self.subscribers = {}

    def _unsubscribe(self, request_id: int) -> None:
        down = self.subscribers.pop(request_id, None)
        if down is not None:
            for sub in down.subgroups.values():
                sub.stream.reset(StreamResetCode.CANCELLED)


class MoqtClient:
    """The SessionApp of a client session (publisher, subscriber or both)."""

    def __init__(self, session: MoqtSession) -> None:
        self.session = session
        self.ready: Deferred[MoqtClient] = Deferred()
        self.closed: Deferred[tuple[int, str]] = Deferred()
        self.tracks: dict[tuple[Namespace, bytes], TrackPublisher] = {}
        self.subscriptions: dict[int, ClientSubscription] = {}
        self._by_alias: dict[int, ClientSubscription] = {}
        self._pending: dict[int, Deferred[Any]] = {}
        self._published: dict[int, tuple[TrackPublisher, int, Deferred[TrackPublisher]]] = {}
        self._fetches: dict[int, _Fetch] = {}
        self.goaway: c.GoAway | None = None
        self._next_alias = 0
        # Namespaces the relay announced to us (after subscribe_namespace).
        self.discovered: list[Namespace] = []
        # Decides on a relay PUBLISH: return a callback to accept it, None to refuse.
        self.on_publish: Callable[[c.Publish], ObjectCallback | None] = lambda msg: None
        self.offers: list[c.Publish] = []
        # Answers a FETCH as a publisher: the objects to send, or None to refuse it.
        self.on_fetch: Callable[[c.Fetch], list[FetchObject] | None] = lambda msg: None

    # -- API -------------------------------------------------------------------

    def new_alias(self) -> int:
        """A track alias unique on this session (every track we publish needs its own)."""
        alias = self._next_alias
        self._next_alias += 1
        return alias

    def announce(
        self, namespace: Namespace, params: list[c.Param] | None = None
    ) -> Deferred[None]:
        d: Deferred[None] = Deferred()

        def make(request_id: int) -> c.ControlMessage:
            self._pending[request_id] = d
            return c.PublishNamespace(request_id, namespace, list(params or []))

        self.session.send_request(make)
        return d

    def offer_track(self, namespace: Namespace, name: bytes) -> TrackPublisher:
        """A track answered when the relay SUBSCRIBEs (after ``announce``)."""
        track = TrackPublisher(self, namespace, name)
        self.tracks[(namespace, name)] = track
        return track

    def publish_track(self, namespace: Namespace, name: bytes) -> Deferred[TrackPublisher]:
        """PUBLISH a track without announcing its namespace; fires on PUBLISH_OK."""
        track = self.offer_track(namespace, name)
        d: Deferred[TrackPublisher] = Deferred()

        def make(request_id: int) -> c.ControlMessage:
            alias = self.new_alias()
            self._published[request_id] = (track, alias, d)
            return c.Publish(
                request_id, namespace, name, alias, c.GROUP_ORDER_ASCENDING, track.largest, True
            )

        self.session.send_request(make)
        return d

    def subscribe_namespace(self, prefix: Namespace) -> Deferred[None]:
        """Ask for PUBLISH_NAMESPACE and PUBLISH of everything under ``prefix``."""
        d: Deferred[None] = Deferred()

        def make(request_id: int) -> c.ControlMessage:
            self._pending[request_id] = d
            return c.SubscribeNamespace(request_id, prefix, [])

        self.session.send_request(make)
        return d

    def fetch(
        self,
        namespace: Namespace,
        name: bytes,
        start: Location,
        end: Location,
        *,
        group_order: int = c.GROUP_ORDER_ASCENDING,
    ) -> Deferred[list[ReceivedObject]]:
        """A standalone FETCH; fires with the objects once the fetch stream ends."""
        return self._fetch(
            lambda rid: c.Fetch(
                rid, 128, group_order, c.FETCH_STANDALONE, namespace, name, start, end
            )
        )

    def joining_fetch(
        self, sub: ClientSubscription, groups_back: int, *, absolute: bool = False
    ) -> Deferred[list[ReceivedObject]]:
        """A joining FETCH for ``sub`` (relative: ``groups_back`` groups before its largest)."""
        kind = c.FETCH_ABSOLUTE_JOINING if absolute else c.FETCH_RELATIVE_JOINING
        return self._fetch(
            lambda rid: c.Fetch(
                rid,
                128,
                c.GROUP_ORDER_ASCENDING,
                kind,
                joining_request_id=sub.request_id,
                joining_start=groups_back,
            )
        )

    def _fetch(self, build: Callable[[int], c.Fetch]) -> Deferred[list[ReceivedObject]]:
        fetch = _Fetch()

        def make(request_id: int) -> c.ControlMessage:
            self._fetches[request_id] = fetch
            return build(request_id)

        self.session.send_request(make)
        return fetch.done

    def track_status(self, namespace: Namespace, name: bytes) -> Deferred[c.TrackStatusOk]:
        d: Deferred[c.TrackStatusOk] = Deferred()

        def make(request_id: int) -> c.ControlMessage:
            self._pending[request_id] = d
            return c.TrackStatus(
                request_id,
                namespace,
                name,
                128,
                c.GROUP_ORDER_PUBLISHER,
                True,
                c.FILTER_LARGEST_OBJECT,
            )

        self.session.send_request(make)
        return d

    def update_subscription(
        self,
        sub: ClientSubscription,
        start: Location,
        end_group: int,
        *,
        priority: int = 128,
        forward: bool = True,
    ) -> None:
        """SUBSCRIBE_UPDATE (``end_group`` as on the wire: last group + 1, 0 = open)."""
        self.session.send_request(
            lambda rid: c.SubscribeUpdate(rid, sub.request_id, start, end_group, priority, forward)
        )

    def subscribe(
        self,
        namespace: Namespace,
        name: bytes,
        on_object: ObjectCallback,
        *,
        filter_type: int = c.FILTER_LARGEST_OBJECT,
        start: Location | None = None,
        end_group: int | None = None,
        priority: int = 128,
        group_order: int = c.GROUP_ORDER_ASCENDING,
        params: list[c.Param] | None = None,
    ) -> Deferred[ClientSubscription]:
        sub = ClientSubscription(self, namespace, name, on_object)

        def make(request_id: int) -> c.ControlMessage:
            sub.request_id = request_id
            self.subscriptions[request_id] = sub
            return c.Subscribe(
                request_id,
                namespace,
                name,
                priority,
                group_order,
                True,
                filter_type,
                start,
                end_group,
                list(params or []),
            )

        self.session.send_request(make)
        return sub.ok

    def close(self) -> None:
        self.session.close(0, "client done")

    # -- SessionApp ------------------------------------------------------------

    def session_ready(self) -> None:
        self.ready.callback(self)

    def control_message(self, msg: c.ControlMessage) -> None:
        if isinstance(msg, (c.PublishNamespaceOk, c.SubscribeNamespaceOk)):
            self._answer(msg.request_id, None)
        elif isinstance(msg, c.TrackStatusOk):
            self._answer(msg.request_id, msg)
        elif isinstance(
            msg, (c.PublishNamespaceError, c.SubscribeNamespaceError, c.TrackStatusError)
        ):
            self._reject(msg.request_id, msg.error_code, msg.reason)
        elif isinstance(msg, c.SubscribeOk):
            sub = self.subscriptions.get(msg.request_id)
            if sub is not None:
                sub.alias = msg.track_alias
                sub.largest = msg.largest
                self._by_alias[msg.track_alias] = sub
                sub.ok.callback(sub)
        elif isinstance(msg, c.SubscribeError):
            sub = self.subscriptions.pop(msg.request_id, None)
            if sub is not None:
                sub.ok.errback(RequestRejected(msg.error_code, msg.reason))
        elif isinstance(msg, c.PublishDone):
            # The alias stays known: objects may still be in flight on their streams.
            sub = self.subscriptions.pop(msg.request_id, None)
            if sub is not None:
                sub.done.callback(msg)
        elif isinstance(msg, (c.PublishOk, c.PublishError)):
            self._publish_answered(msg)
        elif isinstance(msg, (c.FetchOk, c.FetchError)):
            self._fetch_answered(msg)
        elif isinstance(msg, c.PublishNamespace):
            self.discovered.append(msg.namespace)
            self.session.send(c.PublishNamespaceOk(msg.request_id))
        elif isinstance(msg, c.PublishNamespaceDone):
            if msg.namespace in self.discovered:
                self.discovered.remove(msg.namespace)
        elif isinstance(msg, c.Publish):
            self._on_publish(msg)
        elif isinstance(msg, c.Subscribe):
            self._on_subscribe(msg)
        elif isinstance(msg, c.Unsubscribe):
            for track in self.tracks.values():
                track._unsubscribe(msg.request_id)
        elif isinstance(msg, c.GoAway):
            self.goaway = msg
        elif isinstance(msg, c.Fetch):
            self._serve_fetch(msg)
        elif isinstance(msg, (c.TrackStatus, c.SubscribeNamespace)):
            self._refuse(msg)

    def _serve_fetch(self, msg: c.Fetch) -> None:
        objects = self.on_fetch(msg)
        if not objects:
            self.session.send(c.FetchError(msg.request_id, 0x3, "this client serves no FETCH"))
            return
        last = max(objects, key=lambda o: (o.group_id, o.object_id))
        end = Location(last.group_id, last.object_id + 1)
        order = msg.group_order or c.GROUP_ORDER_ASCENDING
        self.session.send(c.FetchOk(msg.request_id, order, False, end, []))
        stream = self.session.open_uni_stream()
        stream.write(
            encode_fetch_header(msg.request_id) + b"".join(encode_fetch_object(o) for o in objects)
        )
        stream.finish()

    def _publish_answered(self, msg: c.PublishOk | c.PublishError) -> None:
        published = self._published.pop(msg.request_id, None)
        if published is None:
            return
        track, alias, d = published
        if isinstance(msg, c.PublishOk):
            track._add_subscriber(msg.request_id, alias)
            d.callback(track)
        else:
            d.errback(RequestRejected(msg.error_code, msg.reason))

    def _fetch_answered(self, msg: c.FetchOk | c.FetchError) -> None:
        if isinstance(msg, c.FetchOk):
            fetch = self._fetches.get(msg.request_id)
            if fetch is not None:
                fetch.ok = msg
            return
        failed = self._fetches.pop(msg.request_id, None)
        if failed is not None:
            failed.done.errback(RequestRejected(msg.error_code, msg.reason))

    def _on_publish(self, msg: c.Publish) -> None:
        self.offers.append(msg)
        callback = self.on_publish(msg)
        if callback is None:
            self.session.send(c.PublishError(msg.request_id, 0x4, "not interested"))
            return
        sub = ClientSubscription(self, msg.namespace, msg.track_name, callback)
        sub.request_id = msg.request_id
        sub.alias = msg.track_alias
        sub.largest = msg.largest
        self.subscriptions[msg.request_id] = sub
        self._by_alias[msg.track_alias] = sub
        self.session.send(
            c.PublishOk(
                msg.request_id, True, 128, c.GROUP_ORDER_ASCENDING, c.FILTER_LARGEST_OBJECT
            )
        )
        sub.ok.callback(sub)

    def _on_subscribe(self, msg: c.Subscribe) -> None:
        track = self.tracks.get((msg.namespace, msg.track_name))
        if track is None:
            self.session.send(
                c.SubscribeError(
                    msg.request_id, SubscribeErrorCode.TRACK_DOES_NOT_EXIST, "no such track"
                )
            )
            return
        track._subscribe(msg)

    def _refuse(self, msg: c.TrackStatus | c.SubscribeNamespace) -> None:
        if isinstance(msg, c.TrackStatus):
            self.session.send(c.TrackStatusError(msg.request_id, 0x3, "not supported"))
        else:
            self.session.send(c.SubscribeNamespaceError(msg.request_id, 0x3, "not supported"))

    def data_header(self, stream: IncomingData) -> None:
        header = stream.header
        if isinstance(header, FetchHeader):
            fetch = self._fetches.get(header.request_id)
            if fetch is None:
                stream.stop(StreamResetCode.CANCELLED)
            stream.context = fetch
            return
        if not isinstance(header, SubgroupHeader):
            stream.stop(StreamResetCode.CANCELLED)
            return
        sub = self._by_alias.get(header.track_alias)
        if sub is None:
            stream.stop(StreamResetCode.CANCELLED)
            return
        sub.streams_seen += 1
        stream.context = sub

    def data_object(self, stream: IncomingData, obj: ObjectRecord | FetchObject) -> None:
        if isinstance(obj, FetchObject):
            if isinstance(stream.context, _Fetch):
                stream.context.objects.append(
                    ReceivedObject(
                        obj.group_id,
                        obj.subgroup_id,
                        obj.object_id,
                        obj.payload,
                        obj.status,
                        obj.extensions,
                    )
                )
            return
        sub = stream.context
        header = stream.header
        if isinstance(sub, ClientSubscription) and isinstance(header, SubgroupHeader):
            subgroup_id = header.subgroup_id if header.subgroup_id is not None else obj.object_id
            sub.on_object(
                ReceivedObject(
                    header.group_id,
                    subgroup_id,
                    obj.object_id,
                    obj.payload,
                    obj.status,
                    obj.extensions,
                )
            )

    def data_end(self, stream: IncomingData, reset_code: int | None) -> None:
        """A fetch is complete when its stream ends; subgroup ends need nothing."""
        fetch = stream.context
        header = stream.header
        if isinstance(fetch, _Fetch) and isinstance(header, FetchHeader):
            self._fetches.pop(header.request_id, None)
            if reset_code is None:
                fetch.done.callback(fetch.objects)
            else:
                fetch.done.errback(RequestRejected(reset_code, "fetch stream reset"))

    def datagram(self, datagram: ObjectDatagram) -> None:
        sub = self._by_alias.get(datagram.track_alias)
        if sub is not None:
            status = datagram.status if datagram.status is not None else STATUS_NORMAL
            sub.on_object(
                ReceivedObject(
                    datagram.group_id,
                    datagram.object_id,
                    datagram.object_id,
                    datagram.payload,
                    status,
                    datagram.extensions,
                )
            )

    def session_ended(self, code: int, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(SessionLost(reason))
        fetches, self._fetches = self._fetches, {}
        for fetch in fetches.values():
            fetch.done.errback(SessionLost(reason))
        published, self._published = self._published, {}
        for _, _, waiting in published.values():
            waiting.errback(SessionLost(reason))
        subs, self.subscriptions = self.subscriptions, {}
        self._by_alias = {}
        for sub in subs.values():
            if not sub.ok.called:
                sub.ok.errback(SessionLost(reason))
        if not self.ready.called:
            self.ready.errback(SessionLost(f"{reason} (code {code:#x})"))
        self.closed.callback((code, reason))

    # -- internals -------------------------------------------------------------

    def _answer(self, request_id: int, value: object) -> None:
        d = self._pending.pop(request_id, None)
        if d is not None:
            d.callback(value)

    def _reject(self, request_id: int, code: int, reason: str) -> None:
        d = self._pending.pop(request_id, None)
        if d is not None:
            d.errback(RequestRejected(code, reason))

    def _end_subscription(self, sub: ClientSubscription) -> None:
        self.subscriptions.pop(sub.request_id, None)
        if sub.alias is not None and self._by_alias.get(sub.alias) is sub:
            del self._by_alias[sub.alias]
