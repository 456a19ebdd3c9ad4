"""Fakes for the relay modules' unit tests: a MoQT session that records what is sent."""

from __future__ import annotations

from collections.abc import Callable

from moqrelay.relay.namespaces import Namespace
from moqrelay.relay.tracks import Track
from moqrelay.wire import control as c


class FakeSession:
    """Stands in for `MoqtSession` where a relay module only sends control messages."""

    def __init__(self, first_request_id: int = 1) -> None:
        self.sent: list[c.ControlMessage] = []
        self.closed = False
        self.close_code: int | None = None
        self.path = ""
        self.peer_params: list[c.Param] = []
        self._next_id = first_request_id

    def send(self, msg: c.ControlMessage) -> None:
        self.sent.append(msg)

    def send_request(self, make: Callable[[int], c.ControlMessage]) -> None:
        request_id = self._next_id
        self._next_id += 2
        self.sent.append(make(request_id))

    def close(self, code: int = 0, reason: str = "") -> None:
        self.closed = True
        self.close_code = code

    def of_type(self, kind: type[c.ControlMessage]) -> list[c.ControlMessage]:
        return [m for m in self.sent if isinstance(m, kind)]


class FakePeer:
    """A peer as the namespace directory sees it."""

    def __init__(self, name: str, *, is_relay: bool = False, sees: bool = True) -> None:
        self.session = FakeSession()
        self.name = name
        self.is_relay = is_relay
        self.sees = sees
        self.namespaces: set[Namespace] = set()
        self.namespace_subscriptions: dict[Namespace, int] = {}
        self.offered: list[Track] = []

    def may_see(self, namespace: Namespace) -> bool:
        return self.sees

    def offer(self, track: Track) -> None:
        self.offered.append(track)

    def unsubscribe_upstream(self, track: Track) -> None:
        """Not used by the directory."""

    def forget_upstream(self, track: Track) -> bool:
        return False
