"""Below the transport layer: the epoll reactor with connection losses paced over turns.

When many TCP peers vanish at once (a network path drops, a load balancer or a
browser farm goes away), the kernel reports all of them in one ``epoll_wait``,
and the stock reactor runs every ``connectionLost`` inside that one poll: TCP,
TLS, Autobahn and the MoQT session teardown, about 0.2 ms each for a relay's
WebSocket viewer. A thousand of them stall the relay for 0.2 s, and every viewer
that stays sees that stall as latency.

`PacedEPollReactor` keeps the cheap half of a TCP connection's loss in the poll
(the read or write that found the end, and taking the socket out of the poll
set) and queues the ``connectionLost`` call. The queue is drained through
``callLater(0)`` for at most ``budget`` seconds per reactor turn, so the polls
that carry the other peers' traffic keep coming. Only TCP connections are
paced, and never a half-close the protocol asked to hear about; the socket stays
open until its ``connectionLost`` runs, so its descriptor cannot be reused meanwhile.

``moqrelay.tap`` installs it for ``twistd moqrelay`` when no reactor was chosen
(``twistd --reactor`` still wins); ``install()`` is the usual reactor installer.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import error, main
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol
from twisted.internet.tcp import Connection
from twisted.logger import Logger
from twisted.python.failure import Failure

from moqrelay.compat.twisted import stock_disconnect_selectable

_log = Logger()

_DONE = Failure(error.ConnectionDone())
_LOST = Failure(error.ConnectionLost())


class PacedEPollReactor(EPollReactor):
    """`EPollReactor`, with TCP ``connectionLost`` calls run ``budget`` seconds a turn.

    ``timer`` measures the budget (``time.perf_counter`` unless a test gives one).
    """

    def __init__(
        self, budget: float = 0.001, timer: Callable[[], float] = time.perf_counter
    ) -> None:
        self._loss_budget = budget
        self._loss_timer = timer
        self._losses: deque[tuple[Connection, Failure]] = deque()
        self._lost_pending: set[Connection] = set()
        self._losses_call: IDelayedCall | None = None
        super().__init__()

    def pending_losses(self) -> int:
        """How many connections are out of the poll set, their ``connectionLost`` queued."""
        return len(self._losses)

    def _disconnectSelectable(
        self, selectable: Any, why: BaseException, isRead: bool, *args: Any
    ) -> None:
        """Override of `moqrelay.compat.twisted.DISCONNECT_SELECTABLE`: queue a TCP loss."""
        if not isinstance(selectable, Connection) or (
            isRead
            and isinstance(why, error.ConnectionDone)
            and IHalfCloseableProtocol(selectable.protocol, None) is not None
        ):
            stock_disconnect_selectable(self, selectable, why, isRead, *args)
            return
        self.removeReader(selectable)
        self.removeWriter(selectable)
        if selectable in self._lost_pending:
            return
        if type(why) is error.ConnectionDone:
            reason = _DONE
        elif type(why) is error.ConnectionLost:
            reason = _LOST
        else:
            reason = Failure(why)
        self._lost_pending.add(selectable)
        self._losses.append((selectable, reason))
        if self._losses_call is None:
            self._losses_call = self.callLater(0, self._run_losses)

    def _run_losses(self) -> None:
        self._losses_call = None
        timer = self._loss_timer
        deadline = timer() + self._loss_budget
        while self._losses:
            self._lose_one()
            if timer() >= deadline:
                break
        if self._losses:
            self._losses_call = self.callLater(0, self._run_losses)

    def _lose_one(self) -> None:
        selectable, reason = self._losses.popleft()
        self._lost_pending.discard(selectable)
        if selectable.disconnected:
            return
        try:
            selectable.connectionLost(reason)
        except Exception:
            _log.failure("connectionLost of {selectable!r} failed", selectable=selectable)

    def disconnectAll(self) -> None:
        """At shutdown, every queued loss runs too, whatever the budget."""
        super().disconnectAll()
        while self._losses:
            self._lose_one()
        if self._losses_call is not None and self._losses_call.active():
            self._losses_call.cancel()
        self._losses_call = None


def install() -> None:
    """Install `PacedEPollReactor` as the global reactor."""
    main.installReactor(PacedEPollReactor())
