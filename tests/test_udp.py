"""Tests for moqrelay.transport.udp: the batched UDP port, on real sockets (127.0.0.1, ::1)."""

# mypy: disallow-untyped-calls=False
# (twisted.trial's assertion methods are not annotated.)

from __future__ import annotations

import errno
import os
import select
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any, cast

from twisted.internet import reactor as _global_reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall, IReadDescriptor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from moqrelay.transport import udp
from moqrelay.transport.quic import QuicEndpoint, QuicSessionBase, connect_quic
from moqrelay.transport.udp import (
    MAX_GSO_BYTES,
    MAX_SEGMENTS,
    UDP_GRO,
    UDP_SEGMENT,
    BatchDatagramProtocol,
    BatchUDPPort,
    listen_udp,
    offload_enabled,
    write_datagrams,
)
from tests.test_quic import CHAIN, HandlerFactory, until

reactor: Any = _global_reactor


def _offload_works() -> bool:
    """This kernel takes UDP_GRO and UDP_SEGMENT (Linux 5.0 and later)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.setsockopt(socket.IPPROTO_UDP, UDP_GRO, 1)
        probe.getsockopt(socket.IPPROTO_UDP, UDP_SEGMENT)
    except OSError:
        return False
    finally:
        probe.close()
    return True


OFFLOAD = _offload_works()
NO_OFFLOAD = "the kernel lacks UDP_GRO/UDP_SEGMENT"


def _ipv6_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


IPV6 = _ipv6_works()


class Collector(BatchDatagramProtocol):
    """Records every batch; optionally runs ``on_batch`` after each."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[bytes, Any]]] = []
        self.on_batch: Callable[[], None] | None = None
        self.stopped = 0

    def datagramsReceived(self, datagrams: list[tuple[bytes, Any]]) -> None:
        self.batches.append(datagrams)
        if self.on_batch is not None:
            self.on_batch()

    def stopProtocol(self) -> None:
        self.stopped += 1

    @property
    def datagrams(self) -> list[tuple[bytes, Any]]:
        return [item for batch in self.batches for item in batch]


class FakeReactor:
    """File-descriptor bookkeeping and a `Clock`: the test calls ``doRead`` itself."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.readers: list[IReadDescriptor] = []

    def addReader(self, reader: IReadDescriptor) -> None:
        self.readers.append(reader)

    def removeReader(self, reader: IReadDescriptor) -> None:
        self.readers.remove(reader)

    def callLater(
        self, delay: float, callable: Callable[..., Any], *args: object, **kw: object
    ) -> IDelayedCall:
        return self.clock.callLater(delay, callable, *args, **kw)


class SocketSpy:
    """Wraps a port's socket: counts calls, and raises ``errors`` from the send calls."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.calls: dict[str, int] = {}
        self.sendmsg_error: OSError | None = None
        self.sendto_error: OSError | None = None
        self.segments: list[int] = []

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def sendto(self, data: bytes, addr: Any) -> int:
        self._count("sendto")
        if self.sendto_error is not None:
            raise self.sendto_error
        return self.sock.sendto(data, addr)

    def sendmsg(self, buffers: list[bytes], ancillary: Any, flags: int, addr: Any) -> int:
        self._count("sendmsg")
        self.segments.append(len(buffers))
        if self.sendmsg_error is not None:
            raise self.sendmsg_error
        return self.sock.sendmsg(buffers, ancillary, flags, addr)

    def recvmsg(self, size: int, ancillary: int) -> Any:
        self._count("recvmsg")
        return self.sock.recvmsg(size, ancillary)

    def recvfrom(self, size: int) -> Any:
        self._count("recvfrom")
        return self.sock.recvfrom(size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


class RefusingOffload(socket.socket):
    """A socket on a kernel that refuses UDP_GRO and UDP_SEGMENT."""

    def setsockopt(self, *args: Any) -> None:
        if args[:2] == (socket.IPPROTO_UDP, UDP_GRO):
            raise OSError(errno.ENOPROTOOPT, "no GRO")
        super().setsockopt(*args)

    def getsockopt(self, *args: Any) -> Any:
        if args[:2] == (socket.IPPROTO_UDP, UDP_SEGMENT):
            raise OSError(errno.ENOPROTOOPT, "no GSO")
        return super().getsockopt(*args)


def restore_environ(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def roomy(sock: socket.socket) -> None:
    """A receive buffer that holds a test's burst (the kernel doubles what it grants)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)


def payloads(count: int, size: int, last: int | None = None) -> list[bytes]:
    """``count`` distinct datagrams of ``size`` bytes, the last of ``last`` bytes."""
    sizes = [size] * count
    if last is not None:
        sizes[-1] = last
    return [struct.pack("!I", i) + bytes([i % 251]) * (n - 4) for i, n in enumerate(sizes)]


class PortTestCase(SynchronousTestCase):
    """A port on a fake reactor: reads happen when the test calls ``doRead``."""

    def open(
        self, interface: str = "127.0.0.1", *, offload: bool = True, **options: Any
    ) -> tuple[BatchUDPPort, Collector, FakeReactor]:
        fake = FakeReactor()
        protocol = Collector()
        port = BatchUDPPort(fake, 0, protocol, interface=interface, offload=offload, **options)
        port.startListening()
        self.addCleanup(port.connectionLost, None)
        assert port.socket is not None
        roomy(port.socket)
        return port, protocol, fake

    def peer(self, family: int = socket.AF_INET, host: str = "127.0.0.1") -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        roomy(sock)
        sock.bind((host, 0))
        self.addCleanup(sock.close)
        return sock

    def read_all(self, port: BatchUDPPort, protocol: Collector, count: int) -> None:
        """Call ``doRead`` whenever the socket is readable, until ``count`` datagrams came."""
        assert port.socket is not None
        for _ in range(1000):
            if len(protocol.datagrams) >= count:
                return
            readable, _, _ = select.select([port.socket], [], [], 2.0)
            self.assertTrue(readable, f"only {len(protocol.datagrams)} of {count} datagrams")
            port.doRead()
        self.fail("read_all did not finish")

    def receive(self, sock: socket.socket, count: int) -> list[bytes]:
        sock.settimeout(2.0)
        return [sock.recvfrom(65535)[0] for _ in range(count)]

    def address(self, port: BatchUDPPort) -> tuple[str, int]:
        host = port.getHost()
        assert isinstance(host, (IPv4Address, IPv6Address))
        return host.host, host.port


class ListeningTests(PortTestCase):
    def test_lifecycle(self) -> None:
        port, protocol, fake = self.open()
        self.assertEqual(fake.readers, [port])
        self.assertIs(protocol.transport, port)
        host = port.getHost()
        self.assertIsInstance(host, IPv4Address)
        self.assertEqual(host.host, "127.0.0.1")
        self.assertGreater(host.port, 0)
        self.assertEqual(port.fileno(), port.socket.fileno())  # type: ignore[union-attr]
        stopped = port.stopListening()
        self.assertEqual(fake.readers, [])
        self.assertNoResult(stopped)  # closed on the next turn, as Twisted's port does
        fake.clock.advance(0)
        self.successResultOf(stopped)
        self.assertIsNone(port.socket)
        self.assertEqual(port.fileno(), -1)
        self.assertEqual(protocol.stopped, 1)
        self.assertIsNone(protocol.transport)
        self.successResultOf(port.stopListening())  # again: already closed
        self.assertRaises(RuntimeError, port.getHost)

    def test_bind_failure(self) -> None:
        taken = self.peer()
        port = BatchUDPPort(
            FakeReactor(), taken.getsockname()[1], Collector(), interface="127.0.0.1"
        )
        self.assertRaises(CannotListenError, port.startListening)
        self.assertIsNone(port.socket)

    def test_offload_switch(self) -> None:
        port, _, _ = self.open(offload=False)
        self.assertFalse(port.gro)
        self.assertFalse(port.gso)
        if OFFLOAD:
            on, _, _ = self.open(offload=True)
            self.assertTrue(on.gro)
            self.assertTrue(on.gso)

    def test_environment_forces_plain_path(self) -> None:
        previous = os.environ.get("MOQRELAY_UDP_OFFLOAD")
        self.addCleanup(restore_environ, "MOQRELAY_UDP_OFFLOAD", previous)
        os.environ["MOQRELAY_UDP_OFFLOAD"] = "0"
        self.assertFalse(offload_enabled())
        fake = FakeReactor()
        port = BatchUDPPort(fake, 0, Collector(), interface="127.0.0.1")
        port.startListening()
        self.addCleanup(port.connectionLost, None)
        self.assertFalse(port.gro or port.gso)
        for value, enabled in (("off", False), ("1", True)):
            os.environ["MOQRELAY_UDP_OFFLOAD"] = value
            self.assertEqual(offload_enabled(), enabled)
        del os.environ["MOQRELAY_UDP_OFFLOAD"]
        self.assertTrue(offload_enabled())

    def test_refused_gro_and_gso_fall_back(self) -> None:
        self.patch(socket, "socket", RefusingOffload)
        port, protocol, _ = self.open(offload=True)
        self.assertFalse(port.gro or port.gso)
        sender = self.peer()
        sender.sendto(b"plain", self.address(port))
        self.read_all(port, protocol, 1)
        self.assertEqual(protocol.datagrams[0][0], b"plain")

    def test_not_linux_means_plain(self) -> None:
        self.patch(udp, "_LINUX", False)
        port, _, _ = self.open(offload=True)
        self.assertFalse(port.gro or port.gso)


class ReadTests(PortTestCase):
    def check_many_in(self, offload: bool, interface: str, family: int) -> None:
        port, protocol, _ = self.open(interface, offload=offload)
        sender = self.peer(family, interface)
        sent = payloads(150, 1200)
        for datagram in sent:
            sender.sendto(datagram, self.address(port))
        self.read_all(port, protocol, len(sent))
        self.assertEqual([d for d, _ in protocol.datagrams], sent)
        self.assertEqual({a for _, a in protocol.datagrams}, {sender.getsockname()[:2]})
        self.assertLess(len(protocol.batches), len(sent))  # drained per wake-up

    def test_many_datagrams_in_ipv4(self) -> None:
        self.check_many_in(True, "127.0.0.1", socket.AF_INET)

    def test_many_datagrams_in_ipv4_plain(self) -> None:
        self.check_many_in(False, "127.0.0.1", socket.AF_INET)

    def test_many_datagrams_in_ipv6(self) -> None:
        if not IPV6:
            raise self.skipTest("no IPv6 loopback")
        self.check_many_in(True, "::1", socket.AF_INET6)

    def test_many_datagrams_in_ipv6_plain(self) -> None:
        if not IPV6:
            raise self.skipTest("no IPv6 loopback")
        self.check_many_in(False, "::1", socket.AF_INET6)

    def test_reads_bounded_per_wakeup(self) -> None:
        port, protocol, _ = self.open(offload=False, max_reads=4)
        sender = self.peer()
        for datagram in payloads(10, 100):
            sender.sendto(datagram, self.address(port))
        self.read_all(port, protocol, 10)
        self.assertTrue(all(len(batch) <= 4 for batch in protocol.batches))
        self.assertGreaterEqual(len(protocol.batches), 3)

    def test_gro_splits_coalesced_buffers(self) -> None:
        if not OFFLOAD:
            raise self.skipTest(NO_OFFLOAD)
        port, protocol, _ = self.open(offload=True)
        spy = SocketSpy(port.socket)  # type: ignore[arg-type]
        port.socket = spy  # type: ignore[assignment]
        sender = self.peer()
        sent = payloads(20, 1200, last=333)
        segment = struct.pack("=H", 1200)
        sender.sendmsg(sent, [(socket.IPPROTO_UDP, UDP_SEGMENT, segment)], 0, self.address(port))
        self.read_all(port, protocol, len(sent))
        self.assertEqual([d for d, _ in protocol.datagrams], sent)
        # The kernel handed the GSO send over whole: far fewer reads than datagrams.
        self.assertLess(spy.calls["recvmsg"], len(sent))

    def test_gro_segment_parsing(self) -> None:
        gro = socket.IPPROTO_UDP, UDP_GRO
        self.assertEqual(udp._gro_segment([(*gro, struct.pack("=i", 1350))]), 1350)
        self.assertEqual(udp._gro_segment([(*gro, struct.pack("=H", 1200))]), 1200)
        self.assertEqual(udp._gro_segment([(socket.SOL_SOCKET, 1, b"\0" * 4)]), 0)
        self.assertEqual(udp._gro_segment([]), 0)

    def test_dual_stack_any_address(self) -> None:
        if not IPV6:
            raise self.skipTest("no IPv6 loopback")
        port, protocol, _ = self.open("::")
        self.assertIsInstance(port.getHost(), IPv6Address)
        number = port.getHost().port
        v4 = self.peer()
        v6 = self.peer(socket.AF_INET6, "::1")
        v4.sendto(b"from v4", ("127.0.0.1", number))
        v6.sendto(b"from v6", ("::1", number))
        self.read_all(port, protocol, 2)
        got = dict(protocol.datagrams)
        self.assertEqual(got[b"from v4"], ("::ffff:127.0.0.1", v4.getsockname()[1]))
        self.assertEqual(got[b"from v6"], ("::1", v6.getsockname()[1]))
        port.write_batch([(b"back", got[b"from v4"]), (b"back", got[b"from v6"])])
        self.assertEqual(self.receive(v4, 1), [b"back"])
        self.assertEqual(self.receive(v6, 1), [b"back"])

    def test_handler_error_keeps_the_port(self) -> None:
        port, protocol, fake = self.open()

        def explode() -> None:
            raise ZeroDivisionError()

        protocol.on_batch = explode
        sender = self.peer()
        sender.sendto(b"one", self.address(port))
        self.read_all(port, protocol, 1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(fake.readers, [port])
        protocol.on_batch = None
        sender.sendto(b"two", self.address(port))
        self.read_all(port, protocol, 2)

    def test_stop_listening_while_reading(self) -> None:
        port, protocol, fake = self.open()
        stopped: list[Deferred[None]] = []
        protocol.on_batch = lambda: stopped.append(port.stopListening())
        sender = self.peer()
        address = self.address(port)
        sender.sendto(b"first", address)
        self.read_all(port, protocol, 1)
        self.assertEqual(fake.readers, [])
        # Still open for the rest of the turn: an answer can go out.
        receiver = self.peer()
        port.write(b"answer", receiver.getsockname())
        self.assertEqual(self.receive(receiver, 1), [b"answer"])
        sender.sendto(b"late", address)
        port.doRead()  # a wake-up already on its way finds the port stopped
        self.assertEqual(len(protocol.batches), 1)
        fake.clock.advance(0)
        self.successResultOf(stopped[0])
        self.assertEqual(protocol.stopped, 1)
        port.doRead()
        port.write(b"dropped", receiver.getsockname())
        port.write_batch([(b"dropped", receiver.getsockname())] * 2)
        self.assertEqual(port.dropped, 3)


class WriteTests(PortTestCase):
    def spied(self, **options: Any) -> tuple[BatchUDPPort, SocketSpy]:
        port, _, _ = self.open(**options)
        spy = SocketSpy(port.socket)  # type: ignore[arg-type]
        port.socket = spy  # type: ignore[assignment]
        return port, spy

    def check_many_out(self, offload: bool, host: str, family: int) -> None:
        port, spy = self.spied(interface=host, offload=offload)
        receiver = self.peer(family, host)
        sent = payloads(150, 1200, last=17)
        port.write_batch([(d, receiver.getsockname()[:2]) for d in sent])
        self.assertEqual(self.receive(receiver, len(sent)), sent)
        if offload and OFFLOAD:
            # 54 x 1200 bytes fit in MAX_GSO_BYTES; the short last one ends the last run.
            self.assertEqual(spy.calls, {"sendmsg": 3})
            self.assertEqual(spy.segments, [54, 54, 42])
        else:
            self.assertEqual(spy.calls, {"sendto": len(sent)})

    def test_many_datagrams_out_ipv4_gso(self) -> None:
        self.check_many_out(True, "127.0.0.1", socket.AF_INET)

    def test_many_datagrams_out_ipv4_plain(self) -> None:
        self.check_many_out(False, "127.0.0.1", socket.AF_INET)

    def test_many_datagrams_out_ipv6_gso(self) -> None:
        if not IPV6:
            raise self.skipTest("no IPv6 loopback")
        self.check_many_out(True, "::1", socket.AF_INET6)

    def test_many_datagrams_out_ipv6_plain(self) -> None:
        if not IPV6:
            raise self.skipTest("no IPv6 loopback")
        self.check_many_out(False, "::1", socket.AF_INET6)

    def test_gso_runs(self) -> None:
        """A run ends after a shorter datagram, before a longer one, at another address,
        at MAX_SEGMENTS and before MAX_GSO_BYTES."""
        if not OFFLOAD:
            raise self.skipTest(NO_OFFLOAD)
        port, spy = self.spied()
        a = self.peer()
        b = self.peer()
        to_a, to_b = a.getsockname(), b.getsockname()
        small = payloads(MAX_SEGMENTS + 1, 100)
        batch = [
            *[(d, to_a) for d in payloads(3, 1200, last=500)],  # run 1: short last
            (b"x" * 1200, to_a),  # run 2: 1200 after 500 starts a new run...
            (b"y" * 1300, to_a),  # run 3: ...and a longer one another
            (b"z" * 1300, to_b),  # run 4: another address
            *[(d, to_a) for d in small],  # runs 5 and 6: MAX_SEGMENTS, then 1
        ]
        port.write_batch(batch)
        self.assertEqual(spy.segments, [3, MAX_SEGMENTS])
        self.assertEqual(spy.calls, {"sendmsg": 2, "sendto": 4})
        got_a = self.receive(a, 3 + 2 + len(small))
        self.assertEqual(got_a, [d for d, addr in batch if addr == to_a])
        self.assertEqual(self.receive(b, 1), [b"z" * 1300])
        self.assertLessEqual(MAX_SEGMENTS * 100, MAX_GSO_BYTES)

    def test_eagain_is_counted_loss(self) -> None:
        for offload in (True, False):
            port, spy = self.spied(offload=offload)
            spy.sendmsg_error = spy.sendto_error = BlockingIOError(errno.EAGAIN, "full")
            receiver = self.peer()
            port.write_batch([(d, receiver.getsockname()) for d in payloads(10, 1200)])
            port.write(b"one more", receiver.getsockname())
            self.assertEqual(port.dropped, 11)
            self.assertEqual(port.gso, offload and OFFLOAD)  # EAGAIN keeps GSO on

    def test_gso_refused_falls_back_for_good(self) -> None:
        if not OFFLOAD:
            raise self.skipTest(NO_OFFLOAD)
        for code in (errno.EIO, errno.EMSGSIZE):
            port, spy = self.spied()
            spy.sendmsg_error = OSError(code, "refused")
            receiver = self.peer()
            sent = payloads(5, 1200, last=40)
            # Two runs (the short datagram ends the first): only the first tries GSO.
            port.write_batch([(d, receiver.getsockname()) for d in sent + sent])
            self.assertFalse(port.gso)
            self.assertEqual(self.receive(receiver, 10), sent + sent)
            port.write_batch([(d, receiver.getsockname()) for d in sent])
            self.assertEqual(self.receive(receiver, 5), sent)
            self.assertEqual(spy.calls, {"sendmsg": 1, "sendto": 15})
            self.assertEqual(port.dropped, 0)

    def test_other_send_errors_are_loss(self) -> None:
        port, spy = self.spied()
        spy.sendmsg_error = spy.sendto_error = OSError(errno.ENOBUFS, "no buffer space")
        receiver = self.peer()
        port.write_batch([(d, receiver.getsockname()) for d in payloads(4, 1200)])
        port.write(b"x", receiver.getsockname())
        self.assertEqual(port.dropped, 5)
        self.assertEqual(port.gso, OFFLOAD)


class FakeTwistedPort:
    """A transport with Twisted's ``write(datagram, addr)``."""

    def __init__(self, error: Exception | None = None) -> None:
        self.written: list[tuple[bytes, Any]] = []
        self.error = error

    def write(self, datagram: bytes, addr: Any) -> None:
        if self.error is not None:
            raise self.error
        self.written.append((datagram, addr))


class WriteDatagramsTests(SynchronousTestCase):
    def test_other_transports_write_one_at_a_time(self) -> None:
        transport = FakeTwistedPort()
        write_datagrams(transport, [(b"a", ("h", 1)), (b"b", ("h", 2))])
        self.assertEqual(transport.written, [(b"a", ("h", 1)), (b"b", ("h", 2))])
        write_datagrams(FakeTwistedPort(OSError(errno.ENOBUFS, "full")), [(b"a", ("h", 1))])
        write_datagrams(None, [(b"a", ("h", 1))])  # no port (yet, or any more)

    def test_listen_udp_without_file_descriptors(self) -> None:
        class UDPOnly:
            def __init__(self) -> None:
                self.calls: list[tuple[Any, ...]] = []

            def listenUDP(self, *args: Any, **kw: Any) -> str:
                self.calls.append((args, kw))
                return "twisted port"

        fallback = UDPOnly()
        protocol = Collector()
        self.assertEqual(
            listen_udp(fallback, 7, protocol, interface="::1", max_packet_size=9),
            "twisted port",
        )
        self.assertEqual(
            fallback.calls, [((7, protocol), {"interface": "::1", "maxPacketSize": 9})]
        )


class RealReactorTests(TestCase):
    """Two ports on the real reactor: datagrams both ways, then both ports close."""

    async def check_both_ways(self, interface: str, offload: bool) -> None:
        ends = []
        for _ in range(2):
            protocol = Collector()
            port = BatchUDPPort(reactor, 0, protocol, interface=interface, offload=offload)
            port.startListening()
            assert port.socket is not None
            roomy(port.socket)
            ends.append((port, protocol))
        (a, pa), (b, pb) = ends
        a_addr = (interface, a.getHost().port)
        b_addr = (interface, b.getHost().port)
        sent = payloads(150, 1200, last=99)
        a.write_batch([(d, b_addr) for d in sent])
        b.write_batch([(d, a_addr) for d in sent])
        await until(lambda: len(pa.datagrams) == len(sent) == len(pb.datagrams))
        self.assertEqual([d for d, _ in pb.datagrams], sent)
        self.assertEqual([d for d, _ in pa.datagrams], sent)
        self.assertEqual(pa.datagrams[0][1], b_addr)
        await a.stopListening()
        await b.stopListening()
        self.assertEqual(pa.stopped + pb.stopped, 2)

    async def test_both_ways_ipv4(self) -> None:
        await self.check_both_ways("127.0.0.1", True)

    async def test_both_ways_ipv4_plain(self) -> None:
        await self.check_both_ways("127.0.0.1", False)

    async def test_both_ways_ipv6(self) -> None:
        if not IPV6:
            raise self.skipTest("no IPv6 loopback")
        await self.check_both_ways("::1", True)

    async def test_listen_udp_on_the_reactor(self) -> None:
        protocol = Collector()
        port = listen_udp(reactor, 0, protocol, interface="127.0.0.1")
        assert isinstance(port, BatchUDPPort)
        self.assertIn(port, reactor.getReaders())
        await port.stopListening()
        self.assertNotIn(port, reactor.getReaders())


class CountingPort(BatchUDPPort):
    """Records the size of every batch the QUIC endpoint hands over."""

    batches: list[int]

    def write_batch(self, datagrams: Sequence[tuple[bytes, Any]]) -> None:
        self.batches.append(len(datagrams))
        super().write_batch(datagrams)


class QuicOverBatchPortTests(TestCase):
    """The QUIC endpoint on batched ports at both ends (IPv4 and IPv6): each flush of a
    connection is one batch, and 300 KiB echo back intact, with and without offload."""

    async def check_echo(self, interface: str, offload: bool) -> None:
        factory = HandlerFactory(echo=True)
        server = QuicEndpoint(reactor, chains=[CHAIN], handler_factory=factory)
        port = CountingPort(reactor, 0, server, interface=interface, offload=offload)
        port.batches = []
        port.startListening()
        self.addCleanup(port.stopListening)
        self.addCleanup(server.close_all)
        client_factory = HandlerFactory()
        host = f"[{interface}]" if ":" in interface else interface
        session = await connect_quic(
            reactor, f"moqt://{host}:{port.getHost().port}", client_factory, verify=False
        )
        client_endpoint = cast(QuicSessionBase, session)._connection.endpoint
        self.assertIsInstance(client_endpoint.transport, BatchUDPPort)
        [client] = client_factory.handlers
        stream = session.open_bidi_stream()
        recorder = client.track(stream, True)
        payload = bytes(range(256)) * 1200
        stream.write(payload)
        stream.finish()
        await until(lambda: recorder.fin)
        self.assertEqual(bytes(recorder.data), payload)
        self.assertGreater(max(port.batches), 1)  # a flush's datagrams went out together
        self.assertEqual(port.dropped, 0)
        client_endpoint.close_all()
        await until(lambda: client_endpoint.transport is None)

    async def test_echo_ipv4(self) -> None:
        await self.check_echo("127.0.0.1", True)

    async def test_echo_ipv4_plain(self) -> None:
        await self.check_echo("127.0.0.1", False)

    async def test_echo_ipv6(self) -> None:
        if not IPV6:
            raise self.skipTest("no IPv6 loopback")
        await self.check_echo("::1", True)
