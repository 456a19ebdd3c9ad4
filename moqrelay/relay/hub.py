"""Relay layer: the hub that joins publishers and viewers, and each peer's view of it.

`Relay` holds what is shared: announced namespaces, live tracks, the reaper
and the configuration. `RelayPeer` is the `SessionApp` of one MoQT session:
it can publish (announce namespaces, answer the relay's upstream SUBSCRIBEs
and send objects) and view (subscribe), both on the same session.

One upstream SUBSCRIBE serves every viewer of a track; it is cancelled when
the last viewer leaves and a later viewer starts a fresh one. When a session
ends, its peer flips its state and hands each subscription and each track it
fed to the reaper, so a session with any number of children is torn down in
bounded steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from moqrelay.relay.namespaces import Namespace, NamespaceRegistry, format_namespace
from moqrelay.relay.reaper import Reaper
from moqrelay.relay.serve import SessionWriter
from moqrelay.relay.subscription import Subscription
from moqrelay.relay.tracks import Track, TrackKey
from moqrelay.session import IncomingData, MoqtSession, SessionApp
from moqrelay.wire import control as c
from moqrelay.wire.data import FetchObject, ObjectDatagram, ObjectRecord, SubgroupHeader
from moqrelay.wire.errors import (
    FetchErrorCode,
    NamespaceErrorCode,
    ProtocolViolation,
    PublishDoneCode,
    PublishErrorCode,
    SessionErrorCode,
    StreamResetCode,
    SubscribeErrorCode,
    SubscribeNamespaceErrorCode,
)

_log = Logger()


@dataclass
class RelayConfig:
    """Relay-wide bounds and policies; each is a command-line option."""

    cache_groups: int = 4
    cache_bytes: int = 64 << 20
    max_queued_bytes: int = 1 << 20
    max_lag_groups: int = 1
    max_skipped_groups: int = 8
    drain_timeout: float = 5.0
    max_subscriptions: int = 1000
    max_namespaces: int = 100
    join_at_group_start: bool = True


class Relay:
    """Shared relay state: namespaces, tracks, teardown."""

    def __init__(self, reactor: IReactorTime, config: RelayConfig | None = None) -> None:
        self.reactor = reactor
        self.config = config or RelayConfig()
        self.reaper = Reaper(reactor)
        self.namespaces: NamespaceRegistry[RelayPeer] = NamespaceRegistry()
        self.tracks: dict[TrackKey, Track] = {}
        self.peers: dict[RelayPeer, None] = {}

    def app_factory(self, session: MoqtSession) -> SessionApp:
        peer = RelayPeer(self, session)
        self.peers[peer] = None
        return peer

    # -- subscriptions -------------------------------------------------------

    def subscribe(self, viewer: RelayPeer, msg: c.Subscribe) -> None:
        session = viewer.session
        if len(viewer.subscriptions) >= self.config.max_subscriptions:
            session.send(
                c.SubscribeError(
                    msg.request_id,
                    SubscribeErrorCode.INTERNAL_ERROR,
                    f"too many subscriptions (limit {self.config.max_subscriptions})",
                )
            )
            return
        if (
            msg.filter_type == c.FILTER_ABSOLUTE_RANGE
            and msg.start is not None
            and msg.end_group is not None
            and msg.end_group < msg.start.group
        ):
            session.send(
                c.SubscribeError(
                    msg.request_id, SubscribeErrorCode.INVALID_RANGE, "end group before start"
                )
            )
            return
        key: TrackKey = (msg.namespace, msg.track_name)
        track = self.tracks.get(key)
        if track is None:
            publisher = self.namespaces.lookup(msg.namespace)
            if publisher is None:
                session.send(
                    c.SubscribeError(
                        msg.request_id,
                        SubscribeErrorCode.TRACK_DOES_NOT_EXIST,
                        f"no publisher for {format_namespace(msg.namespace)}",
                    )
                )
                return
            track = Track(key, self.config.cache_groups, self.config.cache_bytes)
            self.tracks[key] = track
            publisher.subscribe_upstream(track)
        sub = Subscription(viewer, track, msg)
        viewer.subscriptions[msg.request_id] = sub
        track.subscriptions[sub] = None
        if track.state == Track.LIVE:
            sub.activate()

    def track_live(self, track: Track, ok: c.SubscribeOk) -> None:
        track.state = Track.LIVE
        track.group_order = ok.group_order
        if ok.largest is not None:
            track.largest = ok.largest
        for sub in list(track.subscriptions):
            sub.activate()

    def track_failed(self, track: Track, code: int, reason: str) -> None:
        self._forget_track(track)
        subs = list(track.subscriptions)
        track.subscriptions = {}
        for sub in subs:
            sub.fail(code, reason)

    def end_track(self, track: Track, status: int, reason: str) -> None:
        """The publisher ended the track (PUBLISH_DONE) or went away."""
        if track.state == Track.PENDING:
            self.track_failed(track, SubscribeErrorCode.TRACK_DOES_NOT_EXIST, reason)
            return
        if track.state == Track.ENDED:
            return
        self._forget_track(track)
        track.end_status = status
        track.end_reason = reason
        for subgroup in list(track.open_subgroups()):
            track.close_subgroup(subgroup, None)
        subs = list(track.subscriptions)
        track.subscriptions = {}
        self.reaper.extend([partial(sub.end, status, reason) for sub in subs])

    def track_unwatched(self, track: Track) -> None:
        """A viewer left; the last one out cancels the upstream subscription."""
        if track.subscriptions or track.state == Track.ENDED:
            return
        publisher = track.publisher
        self._forget_track(track)
        if publisher is not None:
            publisher.unsubscribe_upstream(track)

    def _forget_track(self, track: Track) -> None:
        track.state = Track.ENDED
        if self.tracks.get(track.key) is track:
            del self.tracks[track.key]
        track.drop_cache()

    # -- teardown --------------------------------------------------------------

    def peer_gone(self, peer: RelayPeer) -> None:
        """Flat teardown of everything a closed session owned."""
        self.peers.pop(peer, None)
        for namespace in peer.namespaces:
            self.namespaces.remove(namespace, peer)
        peer.namespaces = set()
        subs = list(peer.subscriptions.values())
        peer.subscriptions = {}
        self.reaper.extend([sub.session_gone for sub in subs])
        tracks = list(peer.upstream.values())
        peer.upstream = {}
        peer.tracks_by_alias = {}
        self.reaper.extend(
            [
                partial(
                    self.end_track, track, PublishDoneCode.TRACK_ENDED, "publisher disconnected"
                )
                for track in tracks
            ]
        )


class RelayPeer:
    """One MoQT session as the relay sees it: publisher, viewer, or both."""

    def __init__(self, relay: Relay, session: MoqtSession) -> None:
        self.relay = relay
        self.session = session
        config = relay.config
        self.writer = SessionWriter(relay.reactor, session.transport, config.max_queued_bytes)
        self.subscriptions: dict[int, Subscription] = {}
        self.namespaces: set[Namespace] = set()
        # Upstream side: the relay's SUBSCRIBEs to this peer as a publisher.
        self.upstream: dict[int, Track] = {}
        self.tracks_by_alias: dict[int, Track] = {}
        self._handlers: dict[type, Callable[[Any], None]] = {
            c.PublishNamespace: self._on_publish_namespace,
            c.PublishNamespaceDone: self._on_publish_namespace_done,
            c.Subscribe: self._on_subscribe,
            c.Unsubscribe: self._on_unsubscribe,
            c.SubscribeUpdate: self._on_subscribe_update,
            c.SubscribeOk: self._on_subscribe_ok,
            c.SubscribeError: self._on_subscribe_error,
            c.PublishDone: self._on_publish_done,
            c.Fetch: self._on_fetch,
            c.FetchCancel: self._ignore,
            c.TrackStatus: self._on_track_status,
            c.SubscribeNamespace: self._on_subscribe_namespace,
            c.UnsubscribeNamespace: self._ignore,
            c.Publish: self._on_publish,
            c.PublishNamespaceCancel: self._ignore,
            c.GoAway: self._on_goaway,
        }

    # -- SessionApp ----------------------------------------------------------

    def session_ready(self) -> None:
        _log.info(
            "session from {peer} over {transport} ready (path {path!r})",
            peer=self.session.transport.peer,
            transport=self.session.transport.transport_name,
            path=self.session.path,
        )

    def control_message(self, msg: c.ControlMessage) -> None:
        handler = self._handlers.get(type(msg))
        if handler is None:
            raise ProtocolViolation(f"unexpected {type(msg).__name__} from a peer")
        handler(msg)

    def data_header(self, stream: IncomingData) -> None:
        header = stream.header
        if not isinstance(header, SubgroupHeader):
            stream.stop(StreamResetCode.CANCELLED)
            return
        track = self.tracks_by_alias.get(header.track_alias)
        if track is None or track.state == Track.ENDED:
            stream.stop(StreamResetCode.CANCELLED)
            return
        subgroup_id = header.subgroup_id
        stream.context = (
            track,
            track.open_subgroup(
                header.group_id,
                subgroup_id if subgroup_id is not None else -1,
                header.publisher_priority,
                header.has_extensions,
            ),
        )

    def data_object(self, stream: IncomingData, obj: ObjectRecord | FetchObject) -> None:
        context = stream.context
        if not isinstance(context, tuple) or not isinstance(obj, ObjectRecord):
            return
        track, subgroup = context
        if subgroup.subgroup_id == -1:
            # Subgroup id "= first object id" streams learn it from their first object.
            subgroup.subgroup_id = obj.object_id
        track.add_object(subgroup, obj.object_id, obj.payload, obj.status, obj.extensions)

    def data_end(self, stream: IncomingData, reset_code: int | None) -> None:
        context = stream.context
        if isinstance(context, tuple):
            track, subgroup = context
            track.close_subgroup(subgroup, reset_code)

    def datagram(self, datagram: ObjectDatagram) -> None:
        """Datagram objects reach every viewer on a one-object subgroup stream."""
        track = self.tracks_by_alias.get(datagram.track_alias)
        if track is None or track.state == Track.ENDED:
            return
        subgroup = track.open_subgroup(
            datagram.group_id,
            datagram.object_id,
            datagram.publisher_priority,
            bool(datagram.extensions),
        )
        status = datagram.status if datagram.status is not None else 0
        track.add_object(
            subgroup, datagram.object_id, datagram.payload, status, datagram.extensions
        )
        track.close_subgroup(subgroup, None)

    def session_ended(self, code: int, reason: str) -> None:
        _log.info(
            "session from {peer} ended: {reason} (code {code:#x})",
            peer=self.session.transport.peer,
            reason=reason,
            code=code,
        )
        self.writer.close()
        self.relay.peer_gone(self)

    # -- upstream (this peer publishes) --------------------------------------

    def subscribe_upstream(self, track: Track) -> None:
        track.publisher = self

        def make(request_id: int) -> c.ControlMessage:
            self.upstream[request_id] = track
            track.upstream_request_id = request_id
            return c.Subscribe(
                request_id,
                track.namespace,
                track.name,
                128,
                c.GROUP_ORDER_PUBLISHER,
                True,
                c.FILTER_LARGEST_OBJECT,
            )

        self.session.send_request(make)

    def unsubscribe_upstream(self, track: Track) -> None:
        request_id = track.upstream_request_id
        if request_id is None or self.upstream.get(request_id) is not track:
            return
        del self.upstream[request_id]
        if track.alias is not None and self.tracks_by_alias.get(track.alias) is track:
            del self.tracks_by_alias[track.alias]
        self.session.send(c.Unsubscribe(request_id))

    def _on_subscribe_ok(self, msg: c.SubscribeOk) -> None:
        track = self.upstream.get(msg.request_id)
        if track is None:
            return
        if msg.track_alias in self.tracks_by_alias:
            raise ProtocolViolation(
                f"track alias {msg.track_alias} already in use",
                SessionErrorCode.DUPLICATE_TRACK_ALIAS,
            )
        track.alias = msg.track_alias
        self.tracks_by_alias[msg.track_alias] = track
        self.relay.track_live(track, msg)

    def _on_subscribe_error(self, msg: c.SubscribeError) -> None:
        track = self.upstream.pop(msg.request_id, None)
        if track is not None:
            self.relay.track_failed(track, msg.error_code, msg.reason)

    def _on_publish_done(self, msg: c.PublishDone) -> None:
        track = self.upstream.pop(msg.request_id, None)
        if track is None:
            return
        if track.alias is not None:
            self.tracks_by_alias.pop(track.alias, None)
        self.relay.end_track(track, msg.status_code, msg.reason)

    def _on_publish_namespace(self, msg: c.PublishNamespace) -> None:
        namespace = msg.namespace
        name = format_namespace(namespace)
        if len(self.namespaces) >= self.relay.config.max_namespaces:
            self.session.send(
                c.PublishNamespaceError(
                    msg.request_id,
                    NamespaceErrorCode.INTERNAL_ERROR,
                    f"too many namespaces (limit {self.relay.config.max_namespaces})",
                )
            )
            return
        if not self.relay.namespaces.add(namespace, self):
            self.session.send(
                c.PublishNamespaceError(
                    msg.request_id,
                    NamespaceErrorCode.UNINTERESTED,
                    f"{name} is already announced by another publisher",
                )
            )
            return
        self.namespaces.add(namespace)
        _log.info("{peer} announced {ns}", peer=self.session.transport.peer, ns=name)
        self.session.send(c.PublishNamespaceOk(msg.request_id))

    def _on_publish_namespace_done(self, msg: c.PublishNamespaceDone) -> None:
        if msg.namespace in self.namespaces:
            self.namespaces.discard(msg.namespace)
            self.relay.namespaces.remove(msg.namespace, self)

    # -- downstream (this peer views) ----------------------------------------

    def _on_subscribe(self, msg: c.Subscribe) -> None:
        self.relay.subscribe(self, msg)

    def _on_unsubscribe(self, msg: c.Unsubscribe) -> None:
        sub = self.subscriptions.pop(msg.request_id, None)
        if sub is not None:
            sub.unsubscribe()

    def _on_subscribe_update(self, msg: c.SubscribeUpdate) -> None:
        sub = self.subscriptions.get(msg.subscription_request_id)
        if sub is None:
            return
        sub.priority = msg.subscriber_priority
        sub.forward = bool(msg.forward)
        if msg.end_group:
            sub.end_group = msg.end_group - 1

    def subscription_finished(self, sub: Subscription) -> None:
        if self.subscriptions.get(sub.request_id) is sub:
            del self.subscriptions[sub.request_id]
        self.relay.track_unwatched(sub.track)

    # -- not yet supported requests get the draft's error, never silence -------

    def _on_fetch(self, msg: c.Fetch) -> None:
        self.session.send(
            c.FetchError(
                msg.request_id, FetchErrorCode.NOT_SUPPORTED, "FETCH is not supported yet"
            )
        )

    def _on_track_status(self, msg: c.TrackStatus) -> None:
        track = self.relay.tracks.get((msg.namespace, msg.track_name))
        if track is None or track.state != Track.LIVE:
            self.session.send(
                c.TrackStatusError(
                    msg.request_id, SubscribeErrorCode.TRACK_DOES_NOT_EXIST, "track not live here"
                )
            )
            return
        self.session.send(
            c.TrackStatusOk(msg.request_id, 0, 0, track.group_order, track.largest, [])
        )

    def _on_subscribe_namespace(self, msg: c.SubscribeNamespace) -> None:
        self.session.send(
            c.SubscribeNamespaceError(
                msg.request_id,
                SubscribeNamespaceErrorCode.NOT_SUPPORTED,
                "SUBSCRIBE_NAMESPACE is not supported yet",
            )
        )

    def _on_publish(self, msg: c.Publish) -> None:
        self.session.send(
            c.PublishError(
                msg.request_id, PublishErrorCode.NOT_SUPPORTED, "PUBLISH is not supported yet"
            )
        )

    def _on_goaway(self, msg: c.GoAway) -> None:
        _log.info("{peer} sent GOAWAY", peer=self.session.transport.peer)

    def _ignore(self, msg: c.ControlMessage) -> None:
        """Messages that need no action from this relay."""
