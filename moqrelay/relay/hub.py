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
from moqrelay.relay.namespaces import (
    Namespace,
    NamespaceDirectory,
    format_namespace,
    is_prefix,
)
from moqrelay.relay.peer import RelayPeer
from moqrelay.relay.reaper import Reaper
from moqrelay.relay.subscription import Subscription
from moqrelay.relay.tracks import Source, Track, TrackKey
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
            self.reaper, self.config.max_namespaces, self.config.max_publishers
        )
        # Announced namespace -> its publishers (the directory's registry).
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

        A new track is subscribed to every publisher of the longest announced prefix
        of its namespace. With none, a viewer's request is pulled through the
        --announce relay; another relay's request never is (no loops).
        """
        key: TrackKey = (namespace, name)
        track = self.tracks.get(key)
        if track is not None:
            return track
        publishers = self.directory.publishers(namespace)
        upstream = self.upstream_peer
        if not publishers and upstream is not None and not viewer.is_relay:
            publishers = [upstream]
        if not publishers:
            return None
        track = self.new_track(key)
        for publisher in publishers:
            publisher.subscribe_upstream(track)
        return track

    def publisher_announced(self, publisher: RelayPeer, namespace: Namespace) -> None:
        """A new publisher of ``namespace``: it feeds the tracks under it from now on too
        (redundancy, or an encoder that restarted while its old session lingers)."""
        for track in list(self.tracks.values()):
            if (
                track.state != Track.ENDED
                and publisher not in track.sources
                and is_prefix(namespace, track.namespace)
                and publisher in self.directory.publishers(track.namespace)
            ):
                publisher.subscribe_upstream(track)

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

    def source_live(
        self, track: Track, source: Source, group_order: int, largest: c.Location | None
    ) -> None:
        """A publisher answered SUBSCRIBE_OK: the first one makes the track live."""
        source.live = True
        if track.state == Track.PENDING:
            self.track_live(track, group_order, largest)
        elif largest is not None and (track.largest is None or largest > track.largest):
            track.largest = largest

    def source_failed(self, track: Track, source: Source, code: int, reason: str) -> None:
        """A publisher refused the track: the track fails only once every publisher has."""
        self._drop_source(track, source)
        if track.sources:
            return
        if track.state == Track.PENDING:
            self.track_failed(track, code, reason)
        else:
            self.end_track(track, PublishDoneCode.TRACK_ENDED, reason)

    def source_gone(self, track: Track, source: Source, status: int, reason: str) -> None:
        """A publisher's session ended: the track ends with its last publisher."""
        if track.state == Track.ENDED:
            return
        self._drop_source(track, source)
        if not track.sources:
            self.end_track(track, status, reason)

    def restart_track(self, track: Track, reason: str) -> None:
        """A publisher numbers the track's groups anew, below what the relay has passed:
        the viewers get PUBLISH_DONE and subscribe again, to a fresh track (an epoch)."""
        for source in list(track.sources.values()):
            source.publisher.unsubscribe_upstream(track)
            self._drop_source(track, source)
        self.end_track(track, PublishDoneCode.TRACK_ENDED, reason)

    def track_failed(self, track: Track, code: int, reason: str) -> None:
        self._forget_track(track)
        subs = list(track.subscriptions)
        track.subscriptions = {}
        for sub in subs:
            sub.fail(code, reason)

    def end_track(self, track: Track, status: int, reason: str) -> None:
        """The publishers ended the track (PUBLISH_DONE) or went away.

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
        for subgroup in list(track.open_subgroups()):
            subgroup.closed = True
        self._forget_track(track)
        subs = list(track.subscriptions)
        track.subscriptions = {}
        self.reaper.extend([partial(sub.end, status, reason) for sub in subs])

    def track_unwatched(self, track: Track) -> None:
        """A viewer left; the last one out cancels the upstream subscriptions."""
        if track.subscriptions or track.state == Track.ENDED or track.pushed:
            return
        self._forget_track(track)
        for source in list(track.sources.values()):
            source.publisher.unsubscribe_upstream(track)
            self._drop_source(track, source)

    def publish_done_received(
        self, track: Track, source: Source, status: int, reason: str, streams: int
    ) -> None:
        """A publisher's PUBLISH_DONE: it stops feeding the track once its streams are in,
        or after the drain time."""
        source.pending_done = (status, reason, streams)
        if not self.maybe_finish(track, source):
            source.done_timer = self.reactor.callLater(
                self.config.drain_timeout, self.finish_source, track, source
            )

    def maybe_finish(self, track: Track, source: Source) -> bool:
        pending = source.pending_done
        if pending is None:
            return False
        streams = pending[2]
        complete = streams == UNKNOWN_STREAM_COUNT or source.streams >= streams
        if complete and source.open == 0:
            self.finish_source(track, source)
            return True
        return False

    def finish_source(self, track: Track, source: Source) -> None:
        pending = source.pending_done
        if pending is None or track.sources.get(source.publisher) is not source:
            return
        source.publisher.forget_upstream(track)
        self._drop_source(track, source)
        if not track.sources:
            self.end_track(track, pending[0], pending[1])

    def _drop_source(self, track: Track, source: Source) -> None:
        source.cancel_done_timer()
        if track.sources.get(source.publisher) is source:
            del track.sources[source.publisher]

    def _forget_track(self, track: Track) -> None:
        track.state = Track.ENDED
        for source in track.sources.values():
            source.cancel_done_timer()
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
        self.reaper.extend(
            [
                partial(self.source_gone, track, source, status, reason)
                for track in tracks
                if (source := track.sources.get(peer)) is not None
            ]
        )
