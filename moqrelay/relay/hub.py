"""Relay layer: the hub that joins publishers and viewers, and the life of each track.

`Relay` holds what is shared between sessions: the live tracks, the namespace
directory, the reaper, the configuration and the authorizer. Each session gets
a `RelayPeer` (`moqrelay.relay.peer`) from `app_factory`.

One upstream SUBSCRIBE serves every viewer of a track; it is cancelled when
the last viewer leaves and a later viewer starts a fresh one. A track pushed
with PUBLISH lives as long as its publisher keeps it. Teardown is flat and
bounded per reactor turn: ending a track flips its open subgroups to closed and
hands each of its subscriptions to the reaper; a closed session's
subscriptions, tracks and namespace withdrawals go to the reaper too, and a
subscription with many streams forgets them a chunk per reaper step.
"""

from __future__ import annotations

from functools import partial

from twisted.internet.interfaces import IReactorTime

from moqrelay.auth import Authorizer, DenialLog
from moqrelay.relay import fetch
from moqrelay.relay.config import RelayConfig
from moqrelay.relay.namespaces import Namespace, NamespaceDirectory, format_namespace
from moqrelay.relay.peer import RelayPeer
from moqrelay.relay.reaper import Reaper
from moqrelay.relay.subscription import Subscription
from moqrelay.relay.tracks import Track, TrackKey
from moqrelay.session import MoqtSession, SessionApp
from moqrelay.wire import control as c
from moqrelay.wire.errors import PublishDoneCode, SubscribeErrorCode

__all__ = ["Relay", "RelayConfig"]

UNKNOWN_STREAM_COUNT = (1 << 62) - 1


class Relay:
    """Shared relay state: namespaces, tracks, teardown."""

    def __init__(
        self,
        reactor: IReactorTime,
        config: RelayConfig | None = None,
        authorizer: Authorizer | None = None,
        reaper: Reaper | None = None,
    ) -> None:
        self.reactor = reactor
        self.config = config or RelayConfig()
        # With an authorizer, every request needs a token that grants it.
        self.authorizer = authorizer
        self.denials = DenialLog()
        self.reaper = reaper or Reaper(reactor)
        self.directory: NamespaceDirectory[RelayPeer] = NamespaceDirectory(
            self.reaper, self.config.max_namespaces
        )
        # Announced namespace -> publisher (the directory's registry).
        self.namespaces = self.directory.registry
        self.tracks: dict[TrackKey, Track] = {}
        self.peers: dict[RelayPeer, None] = {}

    @property
    def upstream_peer(self) -> RelayPeer | None:
        """The --announce session, once its SETUP is done."""
        return self.directory.upstream

    def app_factory(self, session: MoqtSession) -> SessionApp:
        peer = RelayPeer(self, session)
        self.peers[peer] = None
        return peer

    def upstream_ready(self, peer: RelayPeer) -> None:
        """The --announce session is up: announce every namespace local publishers hold."""
        self.directory.upstream_ready(peer)

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
        sub = Subscription.from_message(viewer, track, msg, self.config, self.reactor)
        self.attach(viewer, track, sub)

    def track_for(self, namespace: Namespace, name: bytes, viewer: RelayPeer) -> Track | None:
        """The live or pending track, or a new one subscribed upstream; None if nobody has it.

        With no local publisher, a viewer's request is pulled through the --announce
        relay; another relay's request never is (no loops).
        """
        key: TrackKey = (namespace, name)
        track = self.tracks.get(key)
        if track is not None:
            return track
        publisher = self.directory.lookup(namespace)
        if publisher is None and not viewer.is_relay:
            publisher = self.upstream_peer
        if publisher is None:
            return None
        track = self.new_track(key)
        publisher.subscribe_upstream(track)
        return track

    def new_track(self, key: TrackKey) -> Track:
        track = Track(key, self.config.cache_groups, self.config.cache_bytes)
        self.tracks[key] = track
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
        """The publisher ended the track (PUBLISH_DONE) or went away.

        Open subgroups are marked closed here without telling anyone; each
        subscription then finishes its own streams (which now see their subgroups
        closed) and sends PUBLISH_DONE as one reaper step, so a track with many
        viewers ends over as many reactor turns as the reaper's budget needs.
        """
        if track.state == Track.PENDING:
            self.track_failed(track, SubscribeErrorCode.TRACK_DOES_NOT_EXIST, reason)
            return
        if track.state == Track.ENDED:
            return
        track.end_status = status
        track.end_reason = reason
        for subgroup in list(track.open_subgroups()):
            subgroup.closed = True
        self._forget_track(track)
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
        """Flat teardown of everything a closed session owned, in reaper steps.

        Inline here is only what is bounded by the session's own limits (its
        namespaces, its open requests); its subscriptions, the tracks it fed and
        the notifications of its withdrawn namespaces each become reaper steps.
        """
        self.peers.pop(peer, None)
        self.directory.peer_gone(peer)
        fetch.peer_gone(peer)
        peer.status_requests = {}
        peer.offered = {}
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
