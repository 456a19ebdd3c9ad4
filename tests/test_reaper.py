"""Tests for moqrelay.relay.reaper: bounded batches, constant depth, idle notification."""

from __future__ import annotations

import sys

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from moqrelay.relay.reaper import Reaper
from tests.helpers import one_turn, recursion_headroom


class ReaperTests(SynchronousTestCase):
    def test_runs_in_batches_one_per_turn(self) -> None:
        clock = Clock()
        reaper = Reaper(clock, batch=10)
        ran: list[int] = []
        reaper.extend([lambda i=i: ran.append(i) for i in range(25)])  # type: ignore[misc]
        self.assertEqual(ran, [])
        self.assertEqual(one_turn(clock), 1)
        self.assertEqual(len(ran), 10)
        one_turn(clock)
        self.assertEqual(len(ran), 20)
        one_turn(clock)
        self.assertEqual(ran, list(range(25)))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_batch_ends_when_its_time_budget_is_spent(self) -> None:
        clock = Clock()
        now = [0.0]
        reaper = Reaper(clock, batch=100, budget=0.005, timer=lambda: now[0])
        ran: list[int] = []

        def slow(i: int) -> None:
            ran.append(i)
            now[0] += 0.002

        reaper.extend([lambda i=i: slow(i) for i in range(7)])  # type: ignore[misc]
        one_turn(clock)
        self.assertEqual(ran, [0, 1, 2])
        one_turn(clock)
        self.assertEqual(ran, [0, 1, 2, 3, 4, 5])
        one_turn(clock)
        self.assertEqual(ran, list(range(7)))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stop_ignores_the_time_budget(self) -> None:
        clock = Clock()
        now = [0.0]
        reaper = Reaper(clock, budget=0.001, timer=lambda: now[0])
        ran: list[int] = []

        def slow(i: int) -> None:
            ran.append(i)
            now[0] += 1.0

        reaper.extend([lambda i=i: slow(i) for i in range(5)])  # type: ignore[misc]
        reaper.stop()
        self.assertEqual(ran, list(range(5)))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_children_added_while_draining_run_later_at_constant_depth(self) -> None:
        clock = Clock()
        reaper = Reaper(clock, batch=100)
        depths: list[int] = []

        def close(level: int) -> None:
            depths.append(len(_stack()))
            if level < 20_000:
                reaper.add(lambda: close(level + 1))

        reaper.add(lambda: close(0))
        with recursion_headroom(50):
            while clock.getDelayedCalls():
                clock.advance(0)
        self.assertEqual(len(depths), 20_001)
        self.assertEqual(min(depths), max(depths))

    def test_a_failing_closer_is_logged_and_the_rest_still_run(self) -> None:
        clock = Clock()
        reaper = Reaper(clock)
        ran: list[str] = []

        def boom() -> None:
            raise RuntimeError("boom")

        reaper.extend([boom, lambda: ran.append("after")])
        clock.advance(0)
        self.assertEqual(ran, ["after"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_when_idle_fires_once_drained(self) -> None:
        clock = Clock()
        reaper = Reaper(clock, batch=1)
        self.successResultOf(reaper.when_idle())
        reaper.extend([lambda: None, lambda: None])
        idle = reaper.when_idle()
        self.assertNoResult(idle)
        one_turn(clock)
        self.assertNoResult(idle)
        one_turn(clock)
        self.successResultOf(idle)

    def test_stop_runs_everything_without_the_reactor(self) -> None:
        clock = Clock()
        reaper = Reaper(clock, batch=3)
        ran: list[int] = []
        reaper.extend([lambda i=i: ran.append(i) for i in range(10)])  # type: ignore[misc]
        reaper.stop()
        self.assertEqual(len(ran), 10)
        self.assertEqual(clock.getDelayedCalls(), [])


def _stack() -> list[object]:
    frames = []
    frame = sys._getframe()
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back  # type: ignore[assignment]
    return frames
