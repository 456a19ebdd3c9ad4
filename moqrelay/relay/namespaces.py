"""Relay layer: announced namespaces (who publishes what), prefix lookup and watchers.

`NamespaceRegistry` maps each announced namespace to its publishers and finds
the longest announced prefix of a track's namespace. `NamespaceDirectory`
handles PUBLISH_NAMESPACE, PUBLISH_NAMESPACE_DONE, SUBSCRIBE_NAMESPACE and
UNSUBSCRIBE_NAMESPACE for the relay: it tells watching peers and the
--announce relay of every change, and withdraws a closed session's namespaces
with the notifications queued on the reaper. A SUBSCRIBE_NAMESPACE with an empty
prefix watches every namespace (a draft-14 deviation, logged once per session).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Generic, Protocol, TypeVar

from twisted.logger import Logger

from moqrelay.relay.reaper import Reaper
from moqrelay.relay.tracks import Publisher, Track
from moqrelay.session import ControlChannel
from moqrelay.wire import control as c
from moqrelay.wire.errors import NamespaceErrorCode, SubscribeNamespaceErrorCode

_log = Logger()

Namespace = tuple[bytes, ...]
Owner = TypeVar("Owner")


def format_namespace(namespace: Namespace) -> str:
    """A printable form for logs and reason phrases: fields joined by '/'."""
    return "/".join(field.decode("utf-8", "backslashreplace") for field in namespace)


class NamespaceRegistry(Generic[Owner]):
    """Announced namespaces to their publishers (oldest first), looked up by longest prefix.

    Draft-14 lets several publishers announce one namespace; a track is subscribed to
    all of them, and a single request (FETCH, TRACK_STATUS) goes to the newest
    (`NamespaceDirectory.lookup`).
    """

    def __init__(self) -> None:
        self._owners: dict[Namespace, list[Owner]] = {}

    def __len__(self) -> int:
        return len(self._owners)

    def __contains__(self, namespace: Namespace) -> bool:
        return namespace in self._owners

    def items(self) -> list[tuple[Namespace, Owner]]:
        """Every (namespace, publisher) pair."""
        return [(ns, owner) for ns, owners in self._owners.items() for owner in owners]

    def owners(self, namespace: Namespace) -> list[Owner]:
        """The publishers of exactly ``namespace``, oldest first."""
        return list(self._owners.get(namespace, ()))

    def add(self, namespace: Namespace, owner: Owner) -> bool:
        """Register ``owner`` for ``namespace``; False if it already is."""
        owners = self._owners.setdefault(namespace, [])
        if owner in owners:
            return False
        owners.append(owner)
        return True

    def remove(self, namespace: Namespace, owner: Owner) -> bool:
        """Withdraw ``owner``'s announcement of ``namespace``; False if it had none."""
        owners = self._owners.get(namespace)
        if owners is None or owner not in owners:
            return False
        owners.remove(owner)
        if not owners:
            del self._owners[namespace]
        return True

    def under(self, prefix: Namespace) -> list[Namespace]:
        """Announced namespaces that ``prefix`` is a prefix of (or equal to)."""
        size = len(prefix)
        return [ns for ns in self._owners if ns[:size] == prefix]

    def lookup_all(self, track_namespace: Namespace) -> list[Owner]:
        """The publishers of the longest announced prefix of ``track_namespace``."""
        owners = self._owners
        for end in range(len(track_namespace), 0, -1):
            found = owners.get(track_namespace[:end])
            if found:
                return list(found)
        return []


def is_prefix(prefix: Namespace, namespace: Namespace) -> bool:
    """Whether ``prefix`` is a tuple prefix of (or equal to) ``namespace``."""
    return namespace[: len(prefix)] == prefix


def send_publish_namespace(session: ControlChannel, namespace: Namespace) -> None:
    session.send_request(lambda request_id: c.PublishNamespace(request_id, namespace, []))


class NamespacePeer(Publisher, Protocol):
    """What the namespace directory asks of a peer (which publishes what it announces)."""

    namespaces: set[Namespace]
    namespace_subscriptions: dict[Namespace, int]

    @property
    def session(self) -> ControlChannel: ...

    @property
    def name(self) -> str: ...

    @property
    def is_relay(self) -> bool: ...

    def may_see(self, namespace: Namespace) -> bool:
        """Whether this peer's token lets it learn of ``namespace``."""

    def offer(self, track: Track) -> None:
        """PUBLISH the live ``track`` to this peer."""


P = TypeVar("P", bound=NamespacePeer)


class NamespaceDirectory(Generic[P]):
    """Who announced what, who watches which prefixes, and the --announce relay.

    A namespace announced by a local publisher is told to every peer whose
    SUBSCRIBE_NAMESPACE covers it and to the --announce relay; one announced by
    another relay is never sent upstream (no loops).
    """

    def __init__(self, reaper: Reaper, max_namespaces: int, max_publishers: int) -> None:
        self.reaper = reaper
        self.max_namespaces = max_namespaces
        self.max_publishers = max_publishers
        self.registry: NamespaceRegistry[P] = NamespaceRegistry()
        # Peers with at least one SUBSCRIBE_NAMESPACE: the only ones scanned on a change.
        self.watching: dict[P, None] = {}
        # The --announce session, once its SETUP is done.
        self.upstream: P | None = None
        # Namespaces whose last publisher's session ended, their PUBLISH_NAMESPACE_DONE
        # still queued on the reaper.
        self._withdrawing: set[Namespace] = set()
        # Peers already logged for watching the empty prefix (once per session).
        self.empty_prefix_logged: set[P] = set()

    def lookup(self, namespace: Namespace, exclude: P | None = None) -> P | None:
        """The newest publisher (other than ``exclude``) of the longest announced prefix."""
        for owner in reversed(self.registry.lookup_all(namespace)):
            if owner is not exclude:
                return owner
        return None

    def publishers(self, namespace: Namespace) -> list[P]:
        """Every publisher of the longest announced prefix of ``namespace``."""
        return self.registry.lookup_all(namespace)

    def watchers(self, namespace: Namespace, exclude: P | None) -> list[P]:
        """Peers whose SUBSCRIBE_NAMESPACE covers ``namespace`` (and who may see it)."""
        return [
            peer
            for peer in self.watching
            if peer is not exclude
            and any(is_prefix(prefix, namespace) for prefix in peer.namespace_subscriptions)
            and peer.may_see(namespace)
        ]

    def announce(self, peer: P, msg: c.PublishNamespace) -> bool:
        """A PUBLISH_NAMESPACE the peer's token allows: register it (True) or refuse it.

        Several publishers may announce one namespace (redundant encoders, or one that
        restarted while its old session lingers), up to ``max_publishers``; watchers and
        the --announce relay hear of the namespace when its first publisher comes.
        """
        namespace = msg.namespace
        name = format_namespace(namespace)
        refusal = None
        if len(peer.namespaces) >= self.max_namespaces:
            refusal = f"too many namespaces (limit {self.max_namespaces})"
        elif namespace in peer.namespaces:
            refusal = f"{name} is already announced on this session"
        elif len(self.registry.owners(namespace)) >= self.max_publishers:
            refusal = f"{name} has too many publishers (limit {self.max_publishers})"
        if refusal is not None:
            peer.session.send(
                c.PublishNamespaceError(msg.request_id, NamespaceErrorCode.INTERNAL_ERROR, refusal)
            )
            return False
        # A namespace announced again before the news of its withdrawal went out is,
        # for watchers, a namespace that never went away.
        first = namespace not in self.registry and namespace not in self._withdrawing
        self._withdrawing.discard(namespace)
        self.registry.add(namespace, peer)
        peer.namespaces.add(namespace)
        _log.info(
            "{peer} announced {ns} ({n} publishers)",
            peer=peer.name,
            ns=name,
            n=len(self.registry.owners(namespace)),
        )
        peer.session.send(c.PublishNamespaceOk(msg.request_id))
        if not first:
            return True
        for watcher in self.watchers(namespace, peer):
            send_publish_namespace(watcher.session, namespace)
        upstream = self.upstream
        if upstream is not None and not peer.is_relay:
            send_publish_namespace(upstream.session, namespace)
        return True

    def withdraw(self, peer: P, namespace: Namespace) -> None:
        """PUBLISH_NAMESPACE_DONE: the peer no longer publishes ``namespace``."""
        if namespace not in peer.namespaces:
            return
        peer.namespaces.discard(namespace)
        if self.registry.remove(namespace, peer) and namespace not in self.registry:
            self._withdrawn(namespace, peer)

    def _withdrawn(self, namespace: Namespace, owner: P) -> None:
        done = c.PublishNamespaceDone(namespace)
        for watcher in self.watchers(namespace, owner):
            watcher.session.send(done)
        upstream = self.upstream
        if upstream is not None and not owner.is_relay:
            upstream.session.send(done)

    def watch(self, peer: P, msg: c.SubscribeNamespace, live: Iterable[Track]) -> None:
        """A SUBSCRIBE_NAMESPACE the peer's token allows: answer, then send what matches.

        The empty prefix (0 fields, which draft-14 forbids; see `c.SubscribeNamespace`)
        covers every namespace, so it overlaps every other prefix of the same session.
        """
        prefix = msg.namespace_prefix
        for existing in peer.namespace_subscriptions:
            if is_prefix(existing, prefix) or is_prefix(prefix, existing):
                peer.session.send(
                    c.SubscribeNamespaceError(
                        msg.request_id,
                        SubscribeNamespaceErrorCode.NAMESPACE_PREFIX_OVERLAP,
                        f"overlaps {format_namespace(existing)}",
                    )
                )
                return
        if not prefix and peer not in self.empty_prefix_logged:
            self.empty_prefix_logged.add(peer)
            _log.info(
                "{peer} watches every namespace (SUBSCRIBE_NAMESPACE with an empty prefix: a "
                "draft-14 violation that moq-dev's library relies on, accepted)",
                peer=peer.name,
            )
        peer.namespace_subscriptions[prefix] = msg.request_id
        self.watching[peer] = None
        peer.session.send(c.SubscribeNamespaceOk(msg.request_id))
        for namespace in self.registry.under(prefix):
            if self.registry.owners(namespace) != [peer]:
                send_publish_namespace(peer.session, namespace)
        for track in list(live):
            if (
                track.state == Track.LIVE
                and peer not in track.sources
                and is_prefix(prefix, track.namespace)
            ):
                peer.offer(track)

    def unwatch(self, peer: P, prefix: Namespace) -> None:
        """UNSUBSCRIBE_NAMESPACE."""
        peer.namespace_subscriptions.pop(prefix, None)
        if not peer.namespace_subscriptions:
            self.watching.pop(peer, None)

    def upstream_ready(self, peer: P) -> None:
        """The --announce session is up: announce every namespace local publishers hold."""
        self.upstream = peer
        local = {namespace for namespace, owner in self.registry.items() if not owner.is_relay}
        for namespace in sorted(local):
            send_publish_namespace(peer.session, namespace)

    def peer_gone(self, peer: P) -> None:
        """Forget a closed session's namespaces and watches.

        The registry forgets them at once (so a restarted publisher may announce the
        same namespace straight away); telling the watchers, which scans them, is
        queued on the reaper, one namespace per step.
        """
        self.watching.pop(peer, None)
        self.empty_prefix_logged.discard(peer)
        if self.upstream is peer:
            self.upstream = None
        namespaces, peer.namespaces = peer.namespaces, set()
        peer.namespace_subscriptions = {}
        withdrawn = [
            ns for ns in namespaces if self.registry.remove(ns, peer) and ns not in self.registry
        ]
        self._withdrawing.update(withdrawn)
        self.reaper.extend([partial(self._withdraw_later, ns, peer) for ns in withdrawn])

    def _withdraw_later(self, namespace: Namespace, owner: P) -> None:
        if namespace in self._withdrawing:
            self._withdrawing.discard(namespace)
            self._withdrawn(namespace, owner)
