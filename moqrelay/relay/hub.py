"""Relay layer: the hub that joins publishers and viewers, and each peer's view of it.

`Relay` holds what is shared: announced namespaces, live tracks, namespace
subscriptions, the reaper and the configuration. `RelayPeer` is the
`SessionApp` of one MoQT session: it can publish (announce namespaces, answer
the relay's upstream SUBSCRIBEs, push tracks with PUBLISH) and view
(SUBSCRIBE, FETCH, TRACK_STATUS, SUBSCRIBE_NAMESPACE), on the same session.

One upstream SUBSCRIBE serves every viewer of a track; it is cancelled when
the last viewer leaves and a later viewer starts a fresh one. A track pushed
with PUBLISH lives as long as its publisher keeps it. When a session ends,
its peer hands each subscription and each track it fed to the reaper, so a
session with any number of children is torn down in bounded steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from moqrelay.auth import (
    AuthError,
    Authorizer,
    DenialLog,
    Grant,
    parse_token_struct,
    token_from_path,
)
from moqrelay.relay.fetch import (
    FetchRange,
    FetchRefused,
    collect,
    encode_fetch_stream,
    joining_range,
    standalone_range,
)
from moqrelay.relay.namespaces import Namespace, NamespaceRegistry, format_namespace
from moqrelay.relay.reaper import Reaper
from moqrelay.relay.serve import SessionWriter
from moqrelay.relay.subscription import Subscription
from moqrelay.relay.tracks import Track, TrackKey
from moqrelay.session import RELAY_IMPLEMENTATION, IncomingData, MoqtSession, SessionApp
from moqrelay.transport.interfaces import IStream
from moqrelay.wire import control as c
from moqrelay.wire.data import (
    FetchHeader,
    FetchObject,
    ObjectDatagram,
    ObjectRecord,
    SubgroupHeader,
    encode_fetch_header,
    encode_fetch_object,
)
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

UNKNOWN_STREAM_COUNT = (1 << 62) - 1


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


def is_prefix(prefix: Namespace, namespace: Namespace) -> bool:
    return namespace[: len(prefix)] == prefix


class Relay:
    """Shared relay state: namespaces, tracks, teardown."""

    def __init__(
        self,
        reactor: IReactorTime,
        config: RelayConfig | None = None,
        authorizer: Authorizer | None = None,
    ) -> None:
        self.reactor = reactor
        self.config = config or RelayConfig()
        # With an authorizer, every request needs a token that grants it.
        self.authorizer = authorizer
        self.denials = DenialLog()
        self.reaper = Reaper(reactor)
        self.namespaces: NamespaceRegistry[RelayPeer] = NamespaceRegistry()
        self.tracks: dict[TrackKey, Track] = {}
        self.peers: dict[RelayPeer, None] = {}
        # The --announce session, once its SETUP is done.
        self.upstream_peer: RelayPeer | None = None

    def app_factory(self, session: MoqtSession) -> SessionApp:
        peer = RelayPeer(self, session)
        self.peers[peer] = None
        return peer

    def watchers(self, namespace: Namespace, exclude: RelayPeer | None) -> list[RelayPeer]:
        """Peers whose SUBSCRIBE_NAMESPACE covers ``namespace`` (and who may see it)."""
        return [
            peer
            for peer in self.peers
            if peer is not exclude
            and any(is_prefix(prefix, namespace) for prefix in peer.namespace_subscriptions)
            and peer.denied(False, namespace, []) is None
        ]

    # -- namespaces ------------------------------------------------------------

    def namespace_added(self, namespace: Namespace, owner: RelayPeer) -> None:
        for peer in self.watchers(namespace, owner):
            peer.send_publish_namespace(namespace)
        upstream = self.upstream_peer
        if upstream is not None and not owner.is_relay:
            upstream.send_publish_namespace(namespace)

    def namespace_removed(self, namespace: Namespace, owner: RelayPeer) -> None:
        for peer in self.watchers(namespace, owner):
            peer.session.send(c.PublishNamespaceDone(namespace))
        upstream = self.upstream_peer
        if upstream is not None and not owner.is_relay:
            upstream.session.send(c.PublishNamespaceDone(namespace))

    def upstream_ready(self, peer: RelayPeer) -> None:
        """The --announce session is up: announce every namespace local publishers hold."""
        self.upstream_peer = peer
        for namespace, owner in self.namespaces.items():
            if not owner.is_relay:
                peer.send_publish_namespace(namespace)

    # -- subscriptions -----------------------------------------------------------

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
        track = self.track_for(msg.namespace, msg.track_name, viewer)
        if track is None:
            session.send(
                c.SubscribeError(
                    msg.request_id,
                    SubscribeErrorCode.TRACK_DOES_NOT_EXIST,
                    f"no publisher for {format_namespace(msg.namespace)}",
                )
            )
            return
        self.attach(viewer, track, Subscription.from_message(viewer, track, msg))

    def track_for(self, namespace: Namespace, name: bytes, viewer: RelayPeer) -> Track | None:
        """The live or pending track, or a new one subscribed upstream; None if nobody has it.

        With no local publisher, a viewer's request is pulled through the --announce
        relay; another relay's request never is (no loops).
        """
        key: TrackKey = (namespace, name)
        track = self.tracks.get(key)
        if track is not None:
            return track
        publisher = self.namespaces.lookup(namespace)
        if publisher is None and not viewer.is_relay:
            publisher = self.upstream_peer
        if publisher is None:
            return None
        track = Track(key, self.config.cache_groups, self.config.cache_bytes)
        self.tracks[key] = track
        publisher.subscribe_upstream(track)
        return track

    def attach(self, viewer: RelayPeer, track: Track, sub: Subscription) -> None:
        viewer.subscriptions[sub.request_id] = sub
        track.subscriptions[sub] = None
        if track.state == Track.LIVE:
            sub.activate()

    def track_live(self, track: Track, group_order: int, largest: c.Location | None) -> None:
        track.state = Track.LIVE
        track.group_order = group_order
        if largest is not None:
            track.largest = largest
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
        if track.subscriptions or track.state == Track.ENDED or track.pushed:
            return
        publisher = track.publisher
        self._forget_track(track)
        if publisher is not None:
            publisher.unsubscribe_upstream(track)

    def publish_done_received(self, track: Track, status: int, reason: str, streams: int) -> None:
        """The publisher's PUBLISH_DONE: end once its streams are in, or after the drain time."""
        track.pending_done = (status, reason, streams)
        if not self.maybe_finish(track):
            track.done_timer = self.reactor.callLater(
                self.config.drain_timeout, self.finish_track, track
            )

    def maybe_finish(self, track: Track) -> bool:
        pending = track.pending_done
        if pending is None:
            return False
        streams = pending[2]
        complete = streams == UNKNOWN_STREAM_COUNT or track.upstream_streams >= streams
        if complete and track.upstream_open == 0:
            self.finish_track(track)
            return True
        return False

    def finish_track(self, track: Track) -> None:
        pending = track.pending_done
        publisher = track.publisher
        if pending is None:
            return
        if publisher is not None:
            publisher.forget_upstream(track)
        self.end_track(track, pending[0], pending[1])

    def _forget_track(self, track: Track) -> None:
        track.state = Track.ENDED
        track.cancel_done_timer()
        if self.tracks.get(track.key) is track:
            del self.tracks[track.key]
        track.drop_cache()

    # -- teardown --------------------------------------------------------------

    def peer_gone(self, peer: RelayPeer) -> None:
        """Flat teardown of everything a closed session owned."""
        self.peers.pop(peer, None)
        if self.upstream_peer is peer:
            self.upstream_peer = None
        for namespace in peer.namespaces:
            if self.namespaces.remove(namespace, peer):
                self.namespace_removed(namespace, peer)
        peer.namespaces = set()
        peer.namespace_subscriptions = {}
        fetches_out, peer.fetches_out = peer.fetches_out, {}
        for forwarded in fetches_out.values():
            forwarded.cancel()
        fetches, peer.fetches = peer.fetches, {}
        for forwarded in fetches.values():
            forwarded.publisher_gone()
        subs = list(peer.subscriptions.values())
        peer.subscriptions = {}
        self.reaper.extend([sub.session_gone for sub in subs])
        tracks = list(peer.upstream.values())
        peer.upstream = {}
        peer.tracks_by_alias = {}
        if peer.is_upstream:
            status, reason = PublishDoneCode.GOING_AWAY, "upstream relay disconnected"
        else:
            status, reason = PublishDoneCode.TRACK_ENDED, "publisher disconnected"
        self.reaper.extend([partial(self.end_track, track, status, reason) for track in tracks])


class ForwardedFetch:
    """A viewer's FETCH answered by a publisher: its fetch stream is copied to the viewer."""

    def __init__(self, viewer: RelayPeer, request_id: int) -> None:
        self.viewer = viewer
        self.request_id = request_id
        self.upstream: tuple[RelayPeer, int] | None = None
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


class RelayPeer:
    """One MoQT session as the relay sees it: publisher, viewer, or both."""

    def __init__(self, relay: Relay, session: MoqtSession) -> None:
        self.relay = relay
        self.session = session
        # Another relay (it says so in MOQT_IMPLEMENTATION), or our --announce upstream.
        self.is_relay = False
        self.is_upstream = False
        self.takes_datagrams = bool(session.transport.supports_datagrams)
        # What the session's token (URL ?jwt= or AUTHORIZATION_TOKEN in SETUP) grants.
        self.grant: Grant | None = None
        self._expiry: IDelayedCall | None = None
        config = relay.config
        self.writer = SessionWriter(relay.reactor, session.transport, config.max_queued_bytes)
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
        # TRACK_STATUS forwarded upstream for a viewer: our request id -> (viewer, its id).
        self.status_requests: dict[int, tuple[RelayPeer, int]] = {}

    @property
    def name(self) -> str:
        return str(self.session.transport.peer)

    # -- SessionApp ----------------------------------------------------------

    def session_ready(self) -> None:
        if self.relay.authorizer is not None:
            self._authenticate(self.relay.authorizer)
            if self.session.closed:
                return
        implementation = c.get_param(self.session.peer_params, c.SETUP_MOQT_IMPLEMENTATION)
        if implementation == RELAY_IMPLEMENTATION:
            self.is_relay = True
        _log.info(
            "session from {peer} over {transport} ready (path {path!r})",
            peer=self.name,
            transport=self.session.transport.transport_name,
            path=self.session.path,
        )

    def control_message(self, msg: c.ControlMessage) -> None:
        name = _HANDLERS.get(type(msg))
        if name is None:
            raise ProtocolViolation(f"unexpected {type(msg).__name__} from a peer")
        getattr(self, name)(msg)

    def data_header(self, stream: IncomingData) -> None:
        header = stream.header
        if isinstance(header, FetchHeader):
            forwarded = self.fetches.get(header.request_id)
            if forwarded is None or not forwarded.open_downstream():
                stream.stop(StreamResetCode.CANCELLED)
                return
            forwarded.source = stream
            stream.context = forwarded
            return
        if not isinstance(header, SubgroupHeader):
            stream.stop(StreamResetCode.CANCELLED)
            return
        track = self.tracks_by_alias.get(header.track_alias)
        if track is None or track.state == Track.ENDED:
            stream.stop(StreamResetCode.CANCELLED)
            return
        subgroup_id = header.subgroup_id
        track.upstream_streams += 1
        track.upstream_open += 1
        subgroup = track.open_subgroup(
            header.group_id,
            subgroup_id if subgroup_id is not None else -1,
            header.publisher_priority,
            header.has_extensions,
        )
        stream.context = (track, subgroup)
        subgroup.release = partial(self._stop_upstream, stream)

    def _stop_upstream(self, stream: IncomingData) -> None:
        """The subgroup this stream feeds left the cache: the relay wants no more of it."""
        context = stream.context
        if not isinstance(context, tuple):
            return
        track, _ = context
        stream.context = None
        stream.stop(StreamResetCode.CANCELLED)
        track.upstream_open -= 1
        self.relay.maybe_finish(track)

    def data_object(self, stream: IncomingData, obj: ObjectRecord | FetchObject) -> None:
        context = stream.context
        if isinstance(context, ForwardedFetch) and isinstance(obj, FetchObject):
            context.forward(obj)
            return
        if not isinstance(context, tuple) or not isinstance(obj, ObjectRecord):
            return
        track, subgroup = context
        if subgroup.subgroup_id == -1:
            # Subgroup id "= first object id" streams learn it from their first object.
            subgroup.subgroup_id = obj.object_id
        track.add_object(subgroup, obj.object_id, obj.payload, obj.status, obj.extensions)

    def data_end(self, stream: IncomingData, reset_code: int | None) -> None:
        context = stream.context
        if isinstance(context, ForwardedFetch):
            self.fetches.pop(context.upstream[1] if context.upstream else -1, None)
            context.end(reset_code)
            return
        if isinstance(context, tuple):
            track, subgroup = context
            track.upstream_open -= 1
            track.close_subgroup(subgroup, reset_code)
            self.relay.maybe_finish(track)

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
        subgroup.datagram = datagram
        status = datagram.status if datagram.status is not None else 0
        track.add_object(
            subgroup, datagram.object_id, datagram.payload, status, datagram.extensions
        )
        track.close_subgroup(subgroup, None)

    def session_ended(self, code: int, reason: str) -> None:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
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

    # -- authorization -----------------------------------------------------------

    def _authenticate(self, authorizer: Authorizer) -> None:
        """The session's token, if it brought one: a bad one ends the session."""
        token = token_from_path(self.session.path)
        if token is None:
            for key, value in self.session.peer_params:
                if key == c.SETUP_AUTHORIZATION_TOKEN and isinstance(value, bytes):
                    raw = parse_token_struct(value, in_setup=True)
                    token = raw.decode("utf-8", "replace") if raw is not None else None
                    break
        if token is None:
            return
        now = self.relay.reactor.seconds()
        try:
            self.grant = authorizer.verify(token, now)
        except AuthError as e:
            self._log_denial("session", e)
            self.session.close(e.code, e.reason)
            return
        if self.grant.expires is not None:
            self._expiry = self.relay.reactor.callLater(
                max(0.0, self.grant.expires - now), self._token_expired
            )

    def _token_expired(self) -> None:
        self._expiry = None
        _log.info("token of {peer} expired; closing its session", peer=self.name)
        self.session.close(SessionErrorCode.EXPIRED_AUTH_TOKEN, "authorization token expired")

    def denied(
        self, publish: bool, namespace: Namespace, params: list[c.Param]
    ) -> AuthError | None:
        """Why this request may not go on, or None when the relay is open or it may."""
        authorizer = self.relay.authorizer
        if authorizer is None:
            return None
        now = self.relay.reactor.seconds()
        grant = self.grant
        token = c.get_param(params, c.PARAM_AUTHORIZATION_TOKEN)
        if isinstance(token, bytes):
            raw = parse_token_struct(token)
            if raw is None:
                return AuthError(SessionErrorCode.UNAUTHORIZED, "token aliases are not supported")
            try:
                grant = authorizer.verify(raw.decode("utf-8", "replace"), now)
            except AuthError as e:
                return e
        if grant is None:
            return AuthError(SessionErrorCode.UNAUTHORIZED, "an authorization token is required")
        if grant.expired(now):
            return AuthError(SessionErrorCode.EXPIRED_AUTH_TOKEN, "authorization token expired")
        if publish and not grant.may_publish(namespace):
            return AuthError(
                SessionErrorCode.UNAUTHORIZED, f"may not publish {format_namespace(namespace)}"
            )
        if not publish and not grant.may_subscribe(namespace):
            return AuthError(
                SessionErrorCode.UNAUTHORIZED,
                f"may not subscribe to {format_namespace(namespace)}",
            )
        return None

    def _log_denial(self, what: str, error: AuthError) -> None:
        if self.relay.denials.should_log(f"{self.name} {what}", self.relay.reactor.seconds()):
            _log.info(
                "denied {what} to {peer}: {reason} (more denials of it are not logged for a "
                "while)",
                what=what,
                peer=self.name,
                reason=error.reason,
            )

    def _refuse(self, what: str, error: AuthError, answer: c.ControlMessage) -> None:
        self._log_denial(what, error)
        self.session.send(answer)

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
        if self.forget_upstream(track) and track.upstream_request_id is not None:
            self.session.send(c.Unsubscribe(track.upstream_request_id))

    def forget_upstream(self, track: Track) -> bool:
        request_id = track.upstream_request_id
        if request_id is None or self.upstream.get(request_id) is not track:
            return False
        del self.upstream[request_id]
        if track.alias is not None and self.tracks_by_alias.get(track.alias) is track:
            del self.tracks_by_alias[track.alias]
        return True

    def _bind_alias(self, track: Track, alias: int) -> None:
        if alias in self.tracks_by_alias:
            raise ProtocolViolation(
                f"track alias {alias} already in use", SessionErrorCode.DUPLICATE_TRACK_ALIAS
            )
        track.alias = alias
        self.tracks_by_alias[alias] = track

    def _on_subscribe_ok(self, msg: c.SubscribeOk) -> None:
        track = self.upstream.get(msg.request_id)
        if track is None or track.state != Track.PENDING:
            return
        self._bind_alias(track, msg.track_alias)
        self.relay.track_live(track, msg.group_order, msg.largest)

    def _on_subscribe_error(self, msg: c.SubscribeError) -> None:
        track = self.upstream.pop(msg.request_id, None)
        if track is not None:
            self.relay.track_failed(track, msg.error_code, msg.reason)

    def _on_publish_done(self, msg: c.PublishDone) -> None:
        track = self.upstream.get(msg.request_id)
        if track is not None and track.pending_done is None:
            self.relay.publish_done_received(track, msg.status_code, msg.reason, msg.stream_count)

    def _on_publish(self, msg: c.Publish) -> None:
        denied = self.denied(True, msg.namespace, msg.params)
        if denied is not None:
            answer = c.PublishError(msg.request_id, PublishErrorCode.UNAUTHORIZED, denied.reason)
            self._refuse("PUBLISH", denied, answer)
            return
        key: TrackKey = (msg.namespace, msg.track_name)
        if key in self.relay.tracks:
            self.session.send(
                c.PublishError(
                    msg.request_id, PublishErrorCode.UNINTERESTED, "this track is already live"
                )
            )
            return
        config = self.relay.config
        track = Track(key, config.cache_groups, config.cache_bytes)
        track.pushed = True
        track.publisher = self
        track.upstream_request_id = msg.request_id
        self._bind_alias(track, msg.track_alias)
        self.upstream[msg.request_id] = track
        self.relay.tracks[key] = track
        self.relay.track_live(track, msg.group_order, msg.largest)
        self.session.send(
            c.PublishOk(
                msg.request_id, True, 128, msg.group_order, c.FILTER_LARGEST_OBJECT, None, None
            )
        )
        _log.info(
            "{peer} published {ns} {name!r}",
            peer=self.name,
            ns=format_namespace(msg.namespace),
            name=msg.track_name,
        )
        for peer in self.relay.watchers(msg.namespace, self):
            peer.offer(track)

    def _on_publish_namespace(self, msg: c.PublishNamespace) -> None:
        denied = self.denied(True, msg.namespace, msg.params)
        if denied is not None:
            answer = c.PublishNamespaceError(msg.request_id, denied.request_code, denied.reason)
            self._refuse("PUBLISH_NAMESPACE", denied, answer)
            return
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
        _log.info("{peer} announced {ns}", peer=self.name, ns=name)
        self.session.send(c.PublishNamespaceOk(msg.request_id))
        self.relay.namespace_added(namespace, self)

    def _on_publish_namespace_done(self, msg: c.PublishNamespaceDone) -> None:
        if msg.namespace in self.namespaces:
            self.namespaces.discard(msg.namespace)
            if self.relay.namespaces.remove(msg.namespace, self):
                self.relay.namespace_removed(msg.namespace, self)

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

    # -- downstream (this peer views) ----------------------------------------

    def _on_subscribe(self, msg: c.Subscribe) -> None:
        denied = self.denied(False, msg.namespace, msg.params)
        if denied is not None:
            answer = c.SubscribeError(msg.request_id, denied.request_code, denied.reason)
            self._refuse("SUBSCRIBE", denied, answer)
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

    def _on_subscribe_namespace(self, msg: c.SubscribeNamespace) -> None:
        prefix = msg.namespace_prefix
        denied = self.denied(False, prefix, msg.params)
        if denied is not None:
            answer = c.SubscribeNamespaceError(msg.request_id, denied.request_code, denied.reason)
            self._refuse("SUBSCRIBE_NAMESPACE", denied, answer)
            return
        for existing in self.namespace_subscriptions:
            if is_prefix(existing, prefix) or is_prefix(prefix, existing):
                self.session.send(
                    c.SubscribeNamespaceError(
                        msg.request_id,
                        SubscribeNamespaceErrorCode.NAMESPACE_PREFIX_OVERLAP,
                        f"overlaps {format_namespace(existing)}",
                    )
                )
                return
        self.namespace_subscriptions[prefix] = msg.request_id
        self.session.send(c.SubscribeNamespaceOk(msg.request_id))
        relay = self.relay
        for namespace in relay.namespaces.under(prefix):
            if relay.namespaces.owner(namespace) is not self:
                self.send_publish_namespace(namespace)
        for track in list(relay.tracks.values()):
            if (
                track.state == Track.LIVE
                and track.publisher is not self
                and is_prefix(prefix, track.namespace)
            ):
                self.offer(track)

    def _on_unsubscribe_namespace(self, msg: c.UnsubscribeNamespace) -> None:
        self.namespace_subscriptions.pop(msg.namespace_prefix, None)

    def send_publish_namespace(self, namespace: Namespace) -> None:
        self.session.send_request(lambda rid: c.PublishNamespace(rid, namespace, []))

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
        self.relay.attach(self, track, Subscription.from_message(self, track, msg))

    def _on_publish_error(self, msg: c.PublishError) -> None:
        self.offered.pop(msg.request_id, None)

    def _on_fetch(self, msg: c.Fetch) -> None:
        try:
            track, wanted = self._fetch_range(msg)
        except FetchRefused as e:
            if not self._forward_fetch(msg, e):
                self.session.send(c.FetchError(msg.request_id, e.code, e.reason))
            return
        cached_from = min(track.groups, default=wanted.start.group + 1)
        if wanted.start.group < cached_from and self._forward_fetch(msg, None):
            # The range starts before what the cache holds: the publisher may have it.
            return
        order = msg.group_order or track.group_order
        objects = collect(track, wanted, descending=order == c.GROUP_ORDER_DESCENDING)
        if not objects:
            self.session.send(
                c.FetchError(msg.request_id, FetchErrorCode.NO_OBJECTS, "nothing cached in range")
            )
            return
        last = (
            objects[-1]
            if order != c.GROUP_ORDER_DESCENDING
            else max(objects, key=lambda o: (o.group_id, o.object_id))
        )
        end = c.Location(last.group_id, last.object_id + 1)
        self.session.send(c.FetchOk(msg.request_id, order, False, end, []))
        stream = self.session.open_uni_stream()
        stream.write(encode_fetch_stream(msg.request_id, objects))
        stream.finish()

    def _fetch_range(self, msg: c.Fetch) -> tuple[Track, FetchRange]:
        if msg.fetch_type == c.FETCH_STANDALONE:
            assert msg.namespace is not None and msg.track_name is not None
            denied = self.denied(False, msg.namespace, msg.params)
            if denied is not None:
                self._log_denial("FETCH", denied)
                raise FetchRefused(denied.request_code, denied.reason)
            track = self.relay.tracks.get((msg.namespace, msg.track_name))
            if track is None or track.state != Track.LIVE:
                raise FetchRefused(FetchErrorCode.TRACK_DOES_NOT_EXIST, "track not live here")
            return track, standalone_range(msg, track)
        assert msg.joining_request_id is not None
        sub = self.subscriptions.get(msg.joining_request_id)
        if sub is None or sub.filter_type != c.FILTER_LARGEST_OBJECT:
            raise FetchRefused(
                FetchErrorCode.INVALID_JOINING_REQUEST_ID,
                "no Largest Object subscription with that request id",
            )
        if sub.track.state != Track.LIVE:
            raise FetchRefused(FetchErrorCode.TRACK_DOES_NOT_EXIST, "track not live yet")
        return sub.track, joining_range(msg, sub.largest_at_start)

    def _forward_fetch(self, msg: c.Fetch, refused: FetchRefused | None) -> bool:
        """A standalone FETCH the cache cannot answer goes to the track's publisher."""
        if msg.fetch_type != c.FETCH_STANDALONE or msg.namespace is None:
            return False
        if refused is not None and refused.code != FetchErrorCode.TRACK_DOES_NOT_EXIST:
            return False
        publisher = self.relay.namespaces.lookup(msg.namespace)
        if publisher is None and not self.is_relay:
            publisher = self.relay.upstream_peer
        if publisher is None or publisher is self:
            return False
        publisher.fetch_for(self, msg)
        return True

    def fetch_for(self, viewer: RelayPeer, msg: c.Fetch) -> None:
        """Ask this peer (a publisher) for a FETCH on behalf of ``viewer``."""
        forwarded = ForwardedFetch(viewer, msg.request_id)
        viewer.fetches_out[msg.request_id] = forwarded

        def make(request_id: int) -> c.ControlMessage:
            forwarded.upstream = (self, request_id)
            self.fetches[request_id] = forwarded
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

        self.session.send_request(make)

    def _on_fetch_answer(self, msg: c.FetchOk | c.FetchError) -> None:
        forwarded = self.fetches.get(msg.request_id)
        if forwarded is None:
            return
        viewer = forwarded.viewer
        if isinstance(msg, c.FetchOk):
            viewer.session.send(
                c.FetchOk(forwarded.request_id, msg.group_order, msg.end_of_track, msg.end, [])
            )
            return
        del self.fetches[msg.request_id]
        viewer.fetches_out.pop(forwarded.request_id, None)
        viewer.session.send(c.FetchError(forwarded.request_id, msg.error_code, msg.reason))

    def _on_fetch_cancel(self, msg: c.FetchCancel) -> None:
        forwarded = self.fetches_out.pop(msg.request_id, None)
        if forwarded is not None:
            forwarded.cancel()

    def _on_track_status(self, msg: c.TrackStatus) -> None:
        denied = self.denied(False, msg.namespace, msg.params)
        if denied is not None:
            answer = c.TrackStatusError(msg.request_id, denied.request_code, denied.reason)
            self._refuse("TRACK_STATUS", denied, answer)
            return
        relay = self.relay
        track = relay.tracks.get((msg.namespace, msg.track_name))
        if track is not None and track.state == Track.LIVE:
            self.session.send(
                c.TrackStatusOk(msg.request_id, 0, 0, track.group_order, track.largest, [])
            )
            return
        publisher = relay.namespaces.lookup(msg.namespace)
        if publisher is None or publisher is self:
            self.session.send(
                c.TrackStatusError(
                    msg.request_id, SubscribeErrorCode.TRACK_DOES_NOT_EXIST, "unknown track"
                )
            )
            return
        publisher.forward_track_status(self, msg)

    def forward_track_status(self, viewer: RelayPeer, msg: c.TrackStatus) -> None:
        def make(request_id: int) -> c.ControlMessage:
            self.status_requests[request_id] = (viewer, msg.request_id)
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

        self.session.send_request(make)

    def _on_track_status_answer(self, msg: c.TrackStatusOk | c.TrackStatusError) -> None:
        asked = self.status_requests.pop(msg.request_id, None)
        if asked is None:
            return
        viewer, request_id = asked
        if isinstance(msg, c.TrackStatusOk):
            viewer.session.send(
                c.TrackStatusOk(request_id, 0, 0, msg.group_order, msg.largest, msg.params)
            )
        else:
            viewer.session.send(c.TrackStatusError(request_id, msg.error_code, msg.reason))

    def _on_goaway(self, msg: c.GoAway) -> None:
        _log.info("{peer} sent GOAWAY", peer=self.name)

    def _ignore(self, msg: c.ControlMessage) -> None:
        """Messages that need no action from this relay."""


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
