"""Relay layer: the flat teardown worklist.

Every owner's ``close()`` flips its own state, detaches from its parent and
hands its children here instead of closing them inline. The reaper runs the
queued closers in bounded batches, one batch per reactor turn, so the stack
depth of a teardown is constant whatever the size of the tree: a session with
100,000 subgroup streams is torn down over many reactor turns, not by 100,000
nested calls. A closer may also stop part way and ask to be called again (it
returns True), so that no single child holds one turn for long.

A batch also ends once it has used its time budget (2 ms by default), so that a
mass disconnect is reaped between the reactor's polls rather than in one long
turn that the viewers who stay would see as latency.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

_log = Logger()

# A closer returns True when it stopped with work left: it is queued again, at the
# back, so one big child (a subscription with 100,000 streams) is taken apart in
# steps between the others instead of in one turn.
Closer = Callable[[], bool | None]


class Reaper:
    """A worklist of closers drained through the reactor, one batch per turn.

    A batch is at most ``batch`` closers, and ends early once ``budget`` seconds of
    ``timer`` have passed (the closer that crosses the budget still finishes).
    """

    def __init__(
        self,
        reactor: IReactorTime,
        batch: int = 1000,
        budget: float = 0.002,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._reactor = reactor
        self._batch = batch
        self._budget = budget
        self._timer = timer
        self._work: deque[Closer] = deque()
        self._call: IDelayedCall | None = None
        self._idle_waiters: list[Deferred[None]] = []
        self.reaped = 0

    def add(self, closer: Closer) -> None:
        """Queue one closer; it runs on a later reactor turn."""
        self._work.append(closer)
        self._schedule()

    def extend(self, closers: list[Closer]) -> None:
        self._work.extend(closers)
        self._schedule()

    def pending(self) -> int:
        return len(self._work)

    def when_idle(self) -> Deferred[None]:
        """Fires once the worklist is empty (at once if it is now)."""
        if not self._work:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle_waiters.append(d)
        return d

    def _schedule(self) -> None:
        if self._call is None and self._work:
            self._call = self._reactor.callLater(0, self._run)

    def _run(self) -> None:
        self._call = None
        self._drain_batch()
        if self._work:
            self._schedule()
        else:
            self._fire_idle()

    def _drain_batch(self) -> None:
        work = self._work
        timer = self._timer
        deadline = timer() + self._budget
        for _ in range(min(self._batch, len(work))):
            closer = work.popleft()
            try:
                if closer() is True:
                    work.append(closer)
            except Exception:
                _log.failure("teardown step {closer!r} failed", closer=closer)
            self.reaped += 1
            if timer() >= deadline:
                return

    def _fire_idle(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for d in waiters:
            d.callback(None)

    def stop(self) -> None:
        """Run everything left now, batch after batch, without the reactor (shutdown)."""
        while self._work:
            self._drain_batch()
        if self._call is not None:
            self._call.cancel()
            self._call = None
        self._fire_idle()
