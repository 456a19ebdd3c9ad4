"""Relay layer: one MoQT session as the relay sees it, publisher, viewer or both.

`RelayPeer` is the `SessionApp` of one session. It dispatches each control
message (one table of handler names for every peer, so that no peer holds a
cycle of bound methods), and holds what is the peer's own: its subscriptions
(viewer side), the upstream subscriptions and PUBLISHed tracks it feeds and the
data streams and datagrams that carry them (publisher side), its namespaces and
namespace watches, its forwarded FETCH and TRACK_STATUS requests, and its
token's grant (`access.PeerAccess`). What is shared between peers (tracks,
namespaces, teardown) it asks of the relay through the narrow `Hub` protocol;
FETCH, TRACK_STATUS and the namespace messages are handled by their own
modules (`fetch`, `status`, `namespaces`).
"""

from __future__ import annotations

from functools import partial
from typing import Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from moqrelay.auth import AuthError, Authorizer, DenialLog, redact
from moqrelay.relay import fetch, status
from moqrelay.relay.access import PeerAccess
from moqrelay.relay.config import RelayConfig
from moqrelay.relay.fetch import ForwardedFetch
from moqrelay.relay.namespaces import (
    Namespace,
    NamespaceDirectory,
    format_namespace,
)
from moqrelay.relay.reaper import Reaper
from moqrelay.relay.serve import SessionWriter
from moqrelay.relay.subscription import Subscription
from moqrelay.relay.tracks import Source, Subgroup, Track, TrackKey
from moqrelay.session import RELAY_IMPLEMENTATION, IncomingData, MoqtSession
from moqrelay.wire import control as c
from moqrelay.wire.data import (
    FetchHeader,
    FetchObject,
    ObjectDatagram,
    ObjectRecord,
    SubgroupHeader,
)
from moqrelay.wire.errors import (
    ProtocolViolation,
    PublishDoneCode,
    PublishErrorCode,
    SessionErrorCode,
    StreamResetCode,
)

_log = Logger()


class Hub(Protocol):
    """What a peer asks of the relay it belongs to (`moqrelay.relay.hub.Relay`)."""

    reactor: IReactorTime
    config: RelayConfig
    reaper: Reaper
    authorizer: Authorizer | None
    denials: DenialLog
    directory: NamespaceDirectory[RelayPeer]
    tracks: dict[TrackKey, Track]

    @property
    def upstream_peer(self) -> RelayPeer | None: ...

    def subscribe(self, viewer: RelayPeer, msg: c.Subscribe) -> None: ...

    def attach(self, viewer: RelayPeer, track: Track, sub: Subscription) -> None: ...

    def new_track(self, key: TrackKey) -> Track: ...

    def source_live(
        self, track: Track, source: Source, group_order: int, largest: c.Location | None
    ) -> None: ...

    def source_failed(self, track: Track, source: Source, code: int, reason: str) -> None: ...

    def restart_track(self, track: Track, reason: str) -> None: ...

    def track_unwatched(self, track: Track) -> None: ...

    def publisher_announced(self, publisher: RelayPeer, namespace: Namespace) -> None: ...

    def publish_done_received(
        self, track: Track, source: Source, status: int, reason: str, streams: int
    ) -> None: ...

    def maybe_finish(self, track: Track, source: Source) -> bool: ...

    def peer_gone(self, peer: RelayPeer) -> None: ...


class RelayPeer:
    """One MoQT session as the relay sees it: publisher, viewer, or both."""

    def __init__(self, relay: Hub, session: MoqtSession) -> None:
        self.relay = relay
        self.session = session
        # Another relay (it says so in MOQT_IMPLEMENTATION), or our --announce upstream.
        self.is_relay = False
        self.is_upstream = False
        self.takes_datagrams = bool(session.transport.supports_datagrams)
        self.access = PeerAccess(relay.authorizer, relay.denials, relay.reactor)
        self.writer = SessionWriter(
            relay.reactor, session.transport, relay.config.max_queued_bytes
        )
        self.subscriptions: dict[int, Subscription] = {}
        self.namespaces: set[Namespace] = set()
        self.namespace_subscriptions: dict[Namespace, int] = {}
        # Upstream side: the relay's SUBSCRIBEs to this peer, and tracks it PUBLISHed.
        self.upstream: dict[int, Track] = {}
        self.tracks_by_alias: dict[int, Track] = {}
        # Our PUBLISHes to this peer awaiting PUBLISH_OK, by our request id.
        self.offered: dict[int, Track] = {}
        # FETCHes forwarded to this peer as a publisher (by our request id), and this
        # peer's own FETCHes being answered by another publisher (by its request id).
        self.fetches: dict[int, ForwardedFetch] = {}
        self.fetches_out: dict[int, ForwardedFetch] = {}
        # TRACK_STATUS forwarded to this peer: our request id -> (viewer, its id).
        self.status_requests: dict[int, tuple[status.StatusPeer, int]] = {}

    @property
    def name(self) -> str:
        return str(self.session.transport.peer)

    # -- what the request modules ask of a peer --------------------------------

    def check(
        self, what: str, publish: bool, namespace: Namespace, params: list[c.Param]
    ) -> AuthError | None:
        return self.access.check(self.name, what, publish, namespace, params)

    def may_see(self, namespace: Namespace) -> bool:
        return self.access.denied(False, namespace, []) is None

    def live_track(self, key: TrackKey) -> Track | None:
        track = self.relay.tracks.get(key)
        return track if track is not None and track.state == Track.LIVE else None

    def subscription(self, request_id: int) -> Subscription | None:
        return self.subscriptions.get(request_id)

    def fetch_source(self, namespace: Namespace) -> RelayPeer | None:
        publisher = self.relay.directory.lookup(namespace, exclude=self)
        if publisher is None and not self.is_relay:
            publisher = self.relay.upstream_peer
        return publisher if publisher is not self else None

    def status_source(self, namespace: Namespace) -> RelayPeer | None:
        return self.relay.directory.lookup(namespace, exclude=self)

    # -- SessionApp ----------------------------------------------------------

    def session_ready(self) -> None:
        self.access.authenticate(self.session, self.name)
        if self.session.closed:
            return
        implementation = c.get_param(self.session.peer_params, c.SETUP_MOQT_IMPLEMENTATION)
        if implementation == RELAY_IMPLEMENTATION:
            self.is_relay = True
        _log.info(
            "session from {peer} over {transport} ready (path {path!r})",
            peer=self.name,
            transport=self.session.transport.transport_name,
            path=redact(self.session.path),
        )

    def control_message(self, msg: c.ControlMessage) -> None:
        name = _HANDLERS.get(type(msg))
        if name is None:
            raise ProtocolViolation(f"unexpected {type(msg).__name__} from a peer")
        getattr(self, name)(msg)

    def data_header(self, stream: IncomingData) -> None:
        header = stream.header
        if isinstance(header, FetchHeader):
            fetch.fetch_stream_opened(self, stream, header.request_id)
            return
        if not isinstance(header, SubgroupHeader):
            stream.stop(StreamResetCode.CANCELLED)
            return
        track = self.tracks_by_alias.get(header.track_alias)
        source = track.sources.get(self) if track is not None else None
        if track is None or source is None or track.state == Track.ENDED:
            stream.stop(StreamResetCode.CANCELLED)
            return
        if source.streams == 0 and self._restarts(track, header.group_id):
            stream.stop(StreamResetCode.CANCELLED)
            self.relay.restart_track(
                track, f"{self.name} restarted the track at group {header.group_id}"
            )
            return
        subgroup_id = header.subgroup_id
        source.streams += 1
        source.open += 1
        subgroup = track.open_subgroup(
            header.group_id,
            subgroup_id if subgroup_id is not None else -1,
            header.publisher_priority,
            header.has_extensions,
        )
        stream.context = _Feed(track, subgroup, source)
        subgroup.releases.append(partial(self._stop_upstream, stream))

    @staticmethod
    def _restarts(track: Track, group_id: int) -> bool:
        """Whether a publisher's first stream, for ``group_id``, numbers the track anew.

        The relay subscribes from the largest object, so a publisher that carries the
        same track starts at the current group, or one behind when it lags. A first
        group further back means new numbering (an encoder that restarted): forwarding
        it would be filtered out by every viewer, or deduplicated against old objects.
        """
        largest = track.largest
        return largest is not None and group_id + 1 < largest.group

    def _stop_upstream(self, stream: IncomingData) -> None:
        """The subgroup this stream feeds left the cache: the relay wants no more of it."""
        feed = stream.context
        if not isinstance(feed, _Feed):
            return
        stream.context = None
        stream.stop(StreamResetCode.CANCELLED)
        feed.source.open -= 1
        self.relay.maybe_finish(feed.track, feed.source)

    def data_object(self, stream: IncomingData, obj: ObjectRecord | FetchObject) -> None:
        feed = stream.context
        if isinstance(feed, ForwardedFetch) and isinstance(obj, FetchObject):
            feed.forward(obj)
            return
        if not isinstance(feed, _Feed) or not isinstance(obj, ObjectRecord):
            return
        subgroup = feed.subgroup
        if subgroup.subgroup_id == -1:
            # Subgroup id "= first object id" streams learn it from their first object.
            subgroup.subgroup_id = obj.object_id
        feed.track.add_object(subgroup, obj.object_id, obj.payload, obj.status, obj.extensions)

    def data_end(self, stream: IncomingData, reset_code: int | None) -> None:
        context = stream.context
        if isinstance(context, ForwardedFetch):
            fetch.fetch_stream_ended(self, context, reset_code)
            return
        if isinstance(context, _Feed):
            context.source.open -= 1
            context.track.close_subgroup(context.subgroup, reset_code)
            self.relay.maybe_finish(context.track, context.source)

    def datagram(self, datagram: ObjectDatagram) -> None:
        """A datagram object is cached as a one-object subgroup; viewers whose transport
        has datagrams get it as a datagram, the others (WebSocket) on a subgroup stream."""
        track = self.tracks_by_alias.get(datagram.track_alias)
        if track is None or track.state == Track.ENDED:
            return
        subgroup = track.open_subgroup(
            datagram.group_id,
            datagram.object_id,
            datagram.publisher_priority,
            bool(datagram.extensions),
        )
        if subgroup.datagram is None:
            subgroup.datagram = datagram
        status_code = datagram.status if datagram.status is not None else 0
        track.add_object(
            subgroup, datagram.object_id, datagram.payload, status_code, datagram.extensions
        )
        track.close_subgroup(subgroup, None)

    def session_ended(self, code: int, reason: str) -> None:
        self.access.close()
        # Logged from the reaper: the lines of a mass disconnect are then written between
        # polls, within the reaper's time budget, not in the poll that brought the losses.
        self.relay.reaper.add(
            partial(
                _log.info,
                "session from {peer} ended: {reason} (code {code:#x})",
                peer=self.name,
                reason=reason,
                code=code,
            )
        )
        self.writer.close()
        self.relay.peer_gone(self)

    # -- upstream (this peer publishes) --------------------------------------

    def subscribe_upstream(self, track: Track) -> None:
        """SUBSCRIBE to ``track`` here: this peer becomes one of the track's sources."""
        source = track.sources[self] = Source(self)

        def make(request_id: int) -> c.ControlMessage:
            self.upstream[request_id] = track
            source.request_id = request_id
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
        source = track.sources.get(self)
        if source is None or source.request_id is None:
            return
        if self.forget_upstream(track):
            self.session.send(c.Unsubscribe(source.request_id))

    def forget_upstream(self, track: Track) -> bool:
        source = track.sources.get(self)
        if source is None or source.request_id is None:
            return False
        if self.upstream.get(source.request_id) is not track:
            return False
        del self.upstream[source.request_id]
        if source.alias is not None and self.tracks_by_alias.get(source.alias) is track:
            del self.tracks_by_alias[source.alias]
        return True

    def _bind_alias(self, track: Track, source: Source, alias: int) -> None:
        if alias in self.tracks_by_alias:
            raise ProtocolViolation(
                f"track alias {alias} already in use", SessionErrorCode.DUPLICATE_TRACK_ALIAS
            )
        source.alias = alias
        self.tracks_by_alias[alias] = track

    def _on_subscribe_ok(self, msg: c.SubscribeOk) -> None:
        track = self.upstream.get(msg.request_id)
        source = track.sources.get(self) if track is not None else None
        if track is None or source is None or source.live or track.state == Track.ENDED:
            return
        self._bind_alias(track, source, msg.track_alias)
        self.relay.source_live(track, source, msg.group_order, msg.largest)

    def _on_subscribe_error(self, msg: c.SubscribeError) -> None:
        track = self.upstream.pop(msg.request_id, None)
        source = track.sources.get(self) if track is not None else None
        if track is not None and source is not None:
            self.relay.source_failed(track, source, msg.error_code, msg.reason)

    def _on_publish_done(self, msg: c.PublishDone) -> None:
        track = self.upstream.get(msg.request_id)
        source = track.sources.get(self) if track is not None else None
        if track is not None and source is not None and source.pending_done is None:
            self.relay.publish_done_received(
                track, source, msg.status_code, msg.reason, msg.stream_count
            )

    def _on_publish(self, msg: c.Publish) -> None:
        denied = self.check("PUBLISH", True, msg.namespace, msg.params)
        if denied is not None:
            self.session.send(
                c.PublishError(msg.request_id, PublishErrorCode.UNAUTHORIZED, denied.reason)
            )
            return
        key: TrackKey = (msg.namespace, msg.track_name)
        track = self.relay.tracks.get(key)
        if track is not None and self in track.sources:
            self.session.send(
                c.PublishError(
                    msg.request_id,
                    PublishErrorCode.UNINTERESTED,
                    "this session already publishes this track",
                )
            )
            return
        new = track is None
        if track is None:
            track = self.relay.new_track(key)
            track.pushed = True
        source = track.sources[self] = Source(self)
        source.request_id = msg.request_id
        self._bind_alias(track, source, msg.track_alias)
        self.upstream[msg.request_id] = track
        self.relay.source_live(track, source, msg.group_order, msg.largest)
        self.session.send(
            c.PublishOk(
                msg.request_id, True, 128, msg.group_order, c.FILTER_LARGEST_OBJECT, None, None
            )
        )
        _log.info(
            "{peer} published {ns} {name!r} ({n} publishers)",
            peer=self.name,
            ns=format_namespace(msg.namespace),
            name=msg.track_name,
            n=len(track.sources),
        )
        if new:
            for peer in self.relay.directory.watchers(msg.namespace, self):
                peer.offer(track)

    # -- namespaces -------------------------------------------------------------

    def _on_publish_namespace(self, msg: c.PublishNamespace) -> None:
        denied = self.check("PUBLISH_NAMESPACE", True, msg.namespace, msg.params)
        if denied is not None:
            self.session.send(
                c.PublishNamespaceError(msg.request_id, denied.request_code, denied.reason)
            )
            return
        if self.relay.directory.announce(self, msg):
            self.relay.publisher_announced(self, msg.namespace)

    def _on_publish_namespace_done(self, msg: c.PublishNamespaceDone) -> None:
        self.relay.directory.withdraw(self, msg.namespace)

    def _on_publish_namespace_error(self, msg: c.PublishNamespaceError) -> None:
        _log.info(
            "{peer} refused a namespace: {reason} ({code:#x})",
            peer=self.name,
            reason=msg.reason,
            code=msg.error_code,
        )

    def _on_publish_namespace_cancel(self, msg: c.PublishNamespaceCancel) -> None:
        _log.info(
            "{peer} cancelled {ns}: {reason}",
            peer=self.name,
            ns=format_namespace(msg.namespace),
            reason=msg.reason,
        )

    def _on_subscribe_namespace(self, msg: c.SubscribeNamespace) -> None:
        prefix = msg.namespace_prefix
        denied = self.check("SUBSCRIBE_NAMESPACE", False, prefix, msg.params)
        if denied is not None:
            self.session.send(
                c.SubscribeNamespaceError(msg.request_id, denied.request_code, denied.reason)
            )
            return
        self.relay.directory.watch(self, msg, self.relay.tracks.values())

    def _on_unsubscribe_namespace(self, msg: c.UnsubscribeNamespace) -> None:
        self.relay.directory.unwatch(self, msg.namespace_prefix)

    # -- downstream (this peer views) ----------------------------------------

    def _on_subscribe(self, msg: c.Subscribe) -> None:
        denied = self.check("SUBSCRIBE", False, msg.namespace, msg.params)
        if denied is not None:
            self.session.send(c.SubscribeError(msg.request_id, denied.request_code, denied.reason))
            return
        self.relay.subscribe(self, msg)

    def _on_unsubscribe(self, msg: c.Unsubscribe) -> None:
        sub = self.subscriptions.pop(msg.request_id, None)
        if sub is not None:
            sub.unsubscribe()

    def _on_subscribe_update(self, msg: c.SubscribeUpdate) -> None:
        sub = self.subscriptions.get(msg.subscription_request_id)
        if sub is not None:
            sub.update(msg)

    def subscription_finished(self, sub: Subscription) -> None:
        if self.subscriptions.get(sub.request_id) is sub:
            del self.subscriptions[sub.request_id]
        self.relay.track_unwatched(sub.track)

    def offer(self, track: Track) -> None:
        """PUBLISH a live track to this peer, which asked with SUBSCRIBE_NAMESPACE."""

        def make(request_id: int) -> c.ControlMessage:
            self.offered[request_id] = track
            # Our request ids are odd, the peer's subscriptions even: aliases never collide.
            return c.Publish(
                request_id,
                track.namespace,
                track.name,
                request_id,
                track.group_order,
                track.largest,
                True,
            )

        self.session.send_request(make)

    def _on_publish_ok(self, msg: c.PublishOk) -> None:
        track = self.offered.pop(msg.request_id, None)
        if track is None:
            return
        if track.state != Track.LIVE:
            self.session.send(
                c.PublishDone(msg.request_id, PublishDoneCode.TRACK_ENDED, 0, "track ended")
            )
            return
        relay = self.relay
        sub = Subscription.from_message(self, track, msg, relay.config, relay.reactor)
        relay.attach(self, track, sub)

    def _on_publish_error(self, msg: c.PublishError) -> None:
        self.offered.pop(msg.request_id, None)

    # -- FETCH and TRACK_STATUS (moqrelay.relay.fetch, moqrelay.relay.status) --

    def _on_fetch(self, msg: c.Fetch) -> None:
        fetch.on_fetch(self, msg)

    def _on_fetch_answer(self, msg: c.FetchOk | c.FetchError) -> None:
        fetch.on_fetch_answer(self, msg)

    def _on_fetch_cancel(self, msg: c.FetchCancel) -> None:
        fetch.on_fetch_cancel(self, msg)

    def _on_track_status(self, msg: c.TrackStatus) -> None:
        status.on_track_status(self, msg)

    def _on_track_status_answer(self, msg: c.TrackStatusOk | c.TrackStatusError) -> None:
        status.on_track_status_answer(self, msg)

    def _on_goaway(self, msg: c.GoAway) -> None:
        _log.info("{peer} sent GOAWAY", peer=self.name)

    def _ignore(self, msg: c.ControlMessage) -> None:
        """Messages that need no action from this relay."""


class _Feed:
    """What an incoming subgroup stream feeds: a cached subgroup of a track, for one source."""

    __slots__ = ("source", "subgroup", "track")

    def __init__(self, track: Track, subgroup: Subgroup, source: Source) -> None:
        self.track = track
        self.subgroup = subgroup
        self.source = source


# The method that handles each control message type (by name, so that subclasses may
# override it). One table for every peer: a per-peer dict of bound methods would tie each
# peer into a reference cycle that only the garbage collector frees.
_HANDLERS: dict[type, str] = {
    c.PublishNamespace: "_on_publish_namespace",
    c.PublishNamespaceDone: "_on_publish_namespace_done",
    c.PublishNamespaceOk: "_ignore",
    c.PublishNamespaceError: "_on_publish_namespace_error",
    c.PublishNamespaceCancel: "_on_publish_namespace_cancel",
    c.Subscribe: "_on_subscribe",
    c.Unsubscribe: "_on_unsubscribe",
    c.SubscribeUpdate: "_on_subscribe_update",
    c.SubscribeOk: "_on_subscribe_ok",
    c.SubscribeError: "_on_subscribe_error",
    c.PublishDone: "_on_publish_done",
    c.Publish: "_on_publish",
    c.PublishOk: "_on_publish_ok",
    c.PublishError: "_on_publish_error",
    c.Fetch: "_on_fetch",
    c.FetchCancel: "_on_fetch_cancel",
    c.FetchOk: "_on_fetch_answer",
    c.FetchError: "_on_fetch_answer",
    c.TrackStatus: "_on_track_status",
    c.TrackStatusOk: "_on_track_status_answer",
    c.TrackStatusError: "_on_track_status_answer",
    c.SubscribeNamespace: "_on_subscribe_namespace",
    c.SubscribeNamespaceOk: "_ignore",
    c.SubscribeNamespaceError: "_ignore",
    c.UnsubscribeNamespace: "_on_unsubscribe_namespace",
    c.GoAway: "_on_goaway",
}
