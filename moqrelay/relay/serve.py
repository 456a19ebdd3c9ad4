"""Relay layer: subgroup serving, one downstream stream per (subscription, subgroup).

A `DownstreamStream` is a cursor into a cached `Subgroup`: ``pump()`` writes
every object the viewer has not got yet, as long as the viewer's session can
take more. When it cannot, the stream parks itself on the session's
`SessionWriter`, which holds one ``when_writable()`` Deferred per session (not
per object): the Deferred chain is session -> writer -> parked streams, and
it resumes them from a reactor callback, so nothing recurses however many
streams wait. A viewer that stops reading therefore costs the relay only its
transport's bounded queue plus the cached groups its streams still point at;
`Subscription` bounds that lag.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from moqrelay.relay.tracks import Subgroup
from moqrelay.transport.interfaces import IStream, IStreamReceiver, ITransportSession
from moqrelay.wire.data import encode_subgroup_header


class Served(Protocol):
    """What a downstream stream asks of the subscription it serves."""

    @property
    def writer(self) -> SessionWriter: ...

    @property
    def alias(self) -> int: ...

    @property
    def priority(self) -> int: ...

    @property
    def descending(self) -> bool: ...

    @property
    def draining(self) -> bool: ...

    def open_stream(self) -> IStream:
        """A new uni stream on the viewer's session, counted for PUBLISH_DONE."""

    def stream_done(self, stream: DownstreamStream) -> None:
        """``stream`` is finished, reset or stopped by the viewer."""


class SessionWriter:
    """Backpressure for one downstream session, shared by all its streams."""

    def __init__(
        self, reactor: IReactorTime, transport: ITransportSession, max_queued: int
    ) -> None:
        self.reactor = reactor
        self.transport = transport
        self.max_queued = max_queued
        self.parked: dict[DownstreamStream, None] = {}
        self.waiting = False
        self.closed = False

    def blocked(self) -> bool:
        return self.waiting or self.transport.queued_bytes() > self.max_queued

    def park(self, stream: DownstreamStream) -> None:
        """Resume ``stream`` once the session drains."""
        self.parked[stream] = None
        if self.waiting or self.closed:
            return
        self.waiting = True
        d = self.transport.when_writable()
        if d.called:
            # Never resume synchronously from inside a write path.
            d.addCallback(lambda _: self.reactor.callLater(0, self._resume))
        else:
            d.addCallback(lambda _: self._resume())

    def unpark(self, stream: DownstreamStream) -> None:
        self.parked.pop(stream, None)

    def _resume(self) -> None:
        self.waiting = False
        if self.closed:
            return
        parked, self.parked = self.parked, {}
        for stream in sorted(parked, key=DownstreamStream.order):
            if not stream.done:
                stream.pump()

    def close(self) -> None:
        self.closed = True
        self.parked = {}


@implementer(IStreamReceiver)
class DownstreamStream:
    """The objects of one subgroup as served to one subscription."""

    __slots__ = (
        "__weakref__",
        "cursor",
        "done",
        "last_id",
        "min_object",
        "stream",
        "subgroup",
        "subscription",
    )

    def __init__(self, subscription: Served, subgroup: Subgroup, min_object: int) -> None:
        self.subscription = subscription
        self.subgroup = subgroup
        self.cursor = 0
        self.min_object = min_object
        self.last_id = -1
        self.stream: IStream | None = None
        self.done = False

    def order(self) -> tuple[int, int, int]:
        sub = self.subscription
        group = self.subgroup.group_id
        return (sub.priority, self.subgroup.priority, -group if sub.descending else group)

    def pump(self) -> None:
        """Write what the viewer has not got yet; park when the session is full."""
        subgroup = self.subgroup
        objects = subgroup.objects
        writer = self.subscription.writer
        while self.cursor < len(objects):
            if writer.blocked():
                writer.park(self)
                return
            obj = objects[self.cursor]
            self.cursor += 1
            if obj.object_id < self.min_object:
                continue
            stream = self.stream
            if stream is not None and obj.object_id == self.last_id + 1:
                stream.write(obj.wire)
            else:
                # A new stream, or a gap: object ids on one stream stay consecutive.
                if stream is not None:
                    stream.finish()
                stream = self._open()
                # One write for the subgroup header and the first object: one frame (one
                # WebSocket message) rather than two.
                stream.write(
                    self._header()
                    + (
                        obj.wire
                        if obj.object_id == 0
                        else obj.encode(obj.object_id, subgroup.has_extensions)
                    )
                )
            self.last_id = obj.object_id
        if subgroup.closed or subgroup.evicted or self.subscription.draining:
            self._complete()

    def _open(self) -> IStream:
        """Open the viewer's stream for this subgroup; its first write starts with `_header`."""
        sub = self.subscription
        stream = sub.open_stream()
        stream.set_receiver(self)
        self.stream = stream
        return stream

    def _header(self) -> bytes:
        subgroup = self.subgroup
        return encode_subgroup_header(
            self.subscription.alias,
            subgroup.group_id,
            subgroup.subgroup_id,
            subgroup.priority,
            extensions=subgroup.has_extensions,
        )

    def _complete(self) -> None:
        self.done = True
        stream = self.stream
        if stream is not None:
            code = self.subgroup.reset_code
            if code is None:
                stream.finish()
            else:
                stream.reset(code)
            stream.set_receiver(None)
        self.subscription.stream_done(self)

    def forget(self) -> None:
        """The session is gone: drop the stream without a frame. Each stream holds its
        receiver and each receiver its stream; unlinking them lets reference counting free
        both now rather than leaving the pair to the garbage collector."""
        self.done = True
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.set_receiver(None)

    def abandon(self, code: int) -> None:
        """Stop serving this subgroup now (viewer too far behind, unsubscribed)."""
        if self.done:
            return
        self.done = True
        self.subscription.writer.unpark(self)
        if self.stream is not None:
            self.stream.reset(code)
            self.stream.set_receiver(None)

    # IStreamReceiver: the viewer may STOP_SENDING a subgroup it no longer wants.

    def stream_data(self, data: bytes, fin: bool) -> None:
        """Nothing is read on a stream we send."""

    def stream_reset(self, code: int) -> None:
        """Nothing is read on a stream we send."""

    def stream_stop_sending(self, code: int) -> None:
        if not self.done:
            self.done = True
            self.stream = None
            self.subscription.writer.unpark(self)
            self.subscription.stream_done(self)
