"""Tests for moqrelay.reactor: TCP connection losses paced over reactor turns.

Each test drives its own `PacedEPollReactor` (never the global one) by hand, with real
sockets on 127.0.0.1 on the client side, so that the kernel reports the hang-ups.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable

from twisted.internet import error
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.tcp import Port
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from moqrelay.reactor import PacedEPollReactor


class Recorder(Protocol):
    """Records every loss; ``cost`` seconds of the test's clock pass in each one."""

    def __init__(self, owner: Harness) -> None:
        self.owner = owner
        self.received = b""
        self.reasons: list[Failure] = []

    def connectionMade(self) -> None:
        self.owner.protocols.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        assert reason is not None
        self.reasons.append(reason)
        self.owner.now += self.owner.cost


@implementer(IHalfCloseableProtocol)
class HalfCloser(Recorder):
    def __init__(self, owner: Harness) -> None:
        super().__init__(owner)
        self.read_ended = False

    def readConnectionLost(self) -> None:
        self.read_ended = True

    def writeConnectionLost(self) -> None:
        pass


class Harness:
    """A paced reactor listening on 127.0.0.1, and the client sockets connected to it."""

    def __init__(self, test: SynchronousTestCase, protocol: type[Recorder] = Recorder) -> None:
        self.now = 0.0
        self.cost = 0.0
        self.protocols: list[Recorder] = []
        self.clients: list[socket.socket] = []
        self.reactor = PacedEPollReactor(budget=0.010, timer=lambda: self.now)
        factory = Factory.forProtocol(lambda: protocol(self))
        self.port: Port = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        test.addCleanup(self.close)

    def connect(self, count: int) -> None:
        for _ in range(count):
            client = socket.create_connection(("127.0.0.1", self.port.getHost().port))
            self.clients.append(client)
        self.turn_until(lambda: len(self.protocols) == len(self.clients))

    def turn(self) -> None:
        self.reactor.iterate(0.05)

    def turn_until(self, done: Callable[[], bool], turns: int = 200) -> int:
        for taken in range(turns):
            if done():
                return taken
            self.turn()
        raise AssertionError("the reactor never got there")

    def hang_up(self, reset: bool = True) -> None:
        """Close every client socket, with an RST (``reset``) or a FIN."""
        for client in self.clients:
            if reset:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.port.stopListening()
        self.reactor.disconnectAll()
        self.reactor.runUntilCurrent()
        for reader in list(self.reactor._internalReaders):
            self.reactor.removeReader(reader)
            reader.connectionLost(Failure(error.ConnectionDone()))
        self.reactor._poller.close()


def lost(protocols: list[Recorder]) -> int:
    return sum(1 for p in protocols if p.reasons)


class PacedLossTests(SynchronousTestCase):
    def test_losses_leave_the_poll_and_run_within_the_budget(self) -> None:
        harness = Harness(self)
        harness.cost = 0.004
        harness.connect(30)
        harness.hang_up()
        harness.turn_until(lambda: harness.reactor.pending_losses() == 30)
        self.assertEqual(lost(harness.protocols), 0)
        transports = {p.transport for p in harness.protocols}
        polled = harness.reactor.getReaders() + harness.reactor.getWriters()
        self.assertEqual(transports.intersection(polled), set())
        # 10 ms of budget, 4 ms a loss: three losses a turn (the one crossing it finishes).
        harness.turn()
        self.assertEqual(lost(harness.protocols), 3)
        harness.turn_until(lambda: lost(harness.protocols) == 30)
        self.assertEqual(harness.reactor.pending_losses(), 0)
        for protocol in harness.protocols:
            self.assertEqual(len(protocol.reasons), 1)
            protocol.reasons[0].trap(error.ConnectionLost, error.ConnectionDone)
        self.assertEqual(harness.reactor.getDelayedCalls(), [])

    def test_a_fin_is_a_clean_loss_after_the_data_before_it(self) -> None:
        harness = Harness(self)
        harness.connect(1)
        harness.clients[0].sendall(b"last words")
        harness.hang_up(reset=False)
        harness.turn_until(lambda: lost(harness.protocols) == 1)
        (protocol,) = harness.protocols
        self.assertEqual(protocol.received, b"last words")
        protocol.reasons[0].trap(error.ConnectionDone)

    def test_a_paused_reader_still_writing_that_is_reset_is_lost(self) -> None:
        harness = Harness(self)
        harness.connect(1)
        (protocol,) = harness.protocols
        assert protocol.transport is not None
        protocol.transport.pauseProducing()  # type: ignore[attr-defined]
        protocol.transport.write(b"x" * (8 << 20))
        harness.turn()
        harness.hang_up()
        harness.turn_until(lambda: lost(harness.protocols) == 1)
        protocol.reasons[0].trap(error.ConnectionLost)
        self.assertEqual(harness.reactor.pending_losses(), 0)

    def test_writes_while_queued_neither_requeue_nor_lose_twice(self) -> None:
        harness = Harness(self)
        harness.cost = 1.0
        harness.connect(3)
        harness.hang_up()
        harness.turn_until(lambda: harness.reactor.pending_losses() == 3)
        harness.turn()
        queued = [p for p in harness.protocols if not p.reasons]
        self.assertEqual(len(queued), 2)
        for _ in range(5):
            for protocol in queued:
                assert protocol.transport is not None
                protocol.transport.write(b"x" * 100_000)
            harness.reactor.iterate(0.01)
            waiting = [p for p in queued if not p.reasons]
            self.assertLessEqual(harness.reactor.pending_losses(), len(waiting))
        harness.turn_until(lambda: lost(harness.protocols) == 3)
        self.assertEqual([len(p.reasons) for p in harness.protocols], [1, 1, 1])
        self.assertEqual(harness.reactor.pending_losses(), 0)

    def test_an_abort_while_queued_loses_once(self) -> None:
        harness = Harness(self)
        harness.cost = 1.0
        harness.connect(2)
        harness.hang_up()
        harness.turn_until(lambda: harness.reactor.pending_losses() == 2)
        for protocol in harness.protocols:
            assert protocol.transport is not None
            protocol.transport.abortConnection()  # type: ignore[attr-defined]
        harness.turn_until(lambda: lost(harness.protocols) == 2)
        harness.turn_until(lambda: harness.reactor.pending_losses() == 0)
        harness.turn()
        self.assertEqual([len(p.reasons) for p in harness.protocols], [1, 1])

    def test_a_half_close_the_protocol_wants_is_not_paced(self) -> None:
        harness = Harness(self, HalfCloser)
        harness.connect(1)
        harness.clients[0].shutdown(socket.SHUT_WR)
        (protocol,) = harness.protocols
        harness.turn_until(lambda: cast_half(protocol).read_ended)
        self.assertEqual(harness.reactor.pending_losses(), 0)
        self.assertEqual(protocol.reasons, [])

    def test_shutdown_runs_every_queued_loss(self) -> None:
        harness = Harness(self)
        harness.cost = 1.0
        harness.connect(5)
        harness.hang_up()
        harness.turn_until(lambda: harness.reactor.pending_losses() == 5)
        harness.reactor.disconnectAll()
        self.assertEqual([len(p.reasons) for p in harness.protocols], [1] * 5)
        self.assertEqual(harness.reactor.pending_losses(), 0)
        self.assertEqual(harness.reactor.getDelayedCalls(), [])

    def test_a_failing_connection_lost_is_logged_and_the_rest_run(self) -> None:
        harness = Harness(self)
        harness.connect(2)
        first = harness.protocols[0]

        def boom(reason: Failure | None = None) -> None:
            raise RuntimeError("boom")

        first.connectionLost = boom  # type: ignore[method-assign]
        harness.hang_up()
        harness.turn_until(lambda: lost(harness.protocols[1:]) == 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


def cast_half(protocol: Recorder) -> HalfCloser:
    assert isinstance(protocol, HalfCloser)
    return protocol
