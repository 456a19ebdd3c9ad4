"""Tests for moqrelay.compat.twisted: the installed Twisted still has what the relay uses."""

from __future__ import annotations

import inspect
from typing import Any

from twisted.internet import error
from twisted.internet.posixbase import PosixReactorBase
from twisted.trial.unittest import SynchronousTestCase

from moqrelay.compat.twisted import DISCONNECT_SELECTABLE
from moqrelay.reactor import PacedEPollReactor
from tests.test_reactor import HalfCloser, Harness, lost


class DisconnectSelectableTests(SynchronousTestCase):
    def test_the_reactor_base_has_the_hook(self) -> None:
        hook = getattr(PosixReactorBase, DISCONNECT_SELECTABLE)
        parameters = list(inspect.signature(hook).parameters)
        self.assertEqual(parameters[:4], ["self", "selectable", "why", "isRead"])

    def test_the_paced_reactor_overrides_it(self) -> None:
        self.assertIn(DISCONNECT_SELECTABLE, vars(PacedEPollReactor))

    def test_the_poll_loop_calls_it_on_a_loss(self) -> None:
        calls: list[tuple[type[BaseException], bool]] = []
        original = getattr(PacedEPollReactor, DISCONNECT_SELECTABLE)

        def spy(reactor: Any, selectable: Any, why: BaseException, isRead: bool) -> None:
            calls.append((type(why), isRead))
            original(reactor, selectable, why, isRead)

        self.patch(PacedEPollReactor, DISCONNECT_SELECTABLE, spy)
        harness = Harness(self)
        harness.connect(1)
        harness.hang_up()
        harness.turn_until(lambda: lost(harness.protocols) == 1)
        self.assertEqual(len(calls), 1)
        self.assertIn(calls[0][0], (error.ConnectionLost, error.ConnectionDone))

    def test_stock_handling_keeps_the_half_close(self) -> None:
        harness = Harness(self, HalfCloser)
        harness.connect(1)
        harness.hang_up(reset=False)
        [protocol] = harness.protocols
        assert isinstance(protocol, HalfCloser)
        harness.turn_until(lambda: protocol.read_ended)
        self.assertEqual(protocol.reasons, [])
