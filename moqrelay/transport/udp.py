"""Below the transport layer: a UDP port that moves datagrams in batches.

Twisted's UDP port reads one datagram per ``recvfrom``, hands it over, and
validates the address of every ``write`` before one ``sendto``: under QUIC at
full rate that was a third of the relay's CPU. `BatchUDPPort` is a port of our
own for the QUIC endpoint:

- On each wake-up it drains the waiting datagrams (at most ``max_reads``
  receive calls, so one busy socket cannot starve the reactor) and hands them
  to `BatchDatagramProtocol.datagramsReceived` as one list.
- On Linux with UDP_GRO the kernel coalesces datagrams of one sender into one
  buffer; the port splits it by the segment size the kernel reports.
- `write_batch` sends the datagrams of one flush: with UDP_SEGMENT (GSO) every
  run of equal-sized datagrams to one address (the last may be shorter) is one
  ``sendmsg``; without it, one plain ``sendto`` each, with no address checks.
  A send the kernel refuses (EAGAIN, ENOBUFS, ...) is a lost packet that QUIC
  recovers: it is counted in ``dropped``. If a GSO send fails in a way that
  says the path or NIC refuses segmentation, GSO is turned off for the port and
  the run is sent plainly.

Where GRO/GSO are missing (another platform, an old kernel, a refused
``setsockopt``) the same port works with plain ``recvfrom``/``sendto``;
``offload=False``, or ``MOQRELAY_UDP_OFFLOAD=0`` in the environment, forces
that path. `listen_udp` opens a `BatchUDPPort` on a reactor that offers file
descriptors and falls back to ``reactor.listenUDP`` elsewhere.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError, MessageLengthError
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IReactorFDSet,
    IReactorUDP,
    IReadDescriptor,
)
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

_log = Logger()

Address = Any  # (host, port), as the socket module takes and Twisted's UDP port reports

# Linux <linux/udp.h>; Python's socket module does not name them.
UDP_SEGMENT = 103
UDP_GRO = 104
# The kernel's cap on segments per GSO send (UDP_MAX_SEGMENTS) and on one UDP payload.
MAX_SEGMENTS = 64
MAX_GSO_BYTES = 65507
_SEGMENT_SIZE = struct.Struct("=H")
_GRO_SIZE = struct.Struct("=i")
_GRO_ANCILLARY = socket.CMSG_SPACE(_GRO_SIZE.size) if hasattr(socket, "CMSG_SPACE") else 0
# A GSO send failing with one of these: the path or the device will not segment.
_GSO_REFUSED = frozenset({errno.EIO, errno.EMSGSIZE, errno.EINVAL, errno.EOPNOTSUPP})
_ENV_OFFLOAD = "MOQRELAY_UDP_OFFLOAD"
_LINUX = sys.platform.startswith("linux")


def offload_enabled() -> bool:
    """GRO/GSO unless ``MOQRELAY_UDP_OFFLOAD`` is ``0`` (or ``no``/``off``/``false``)."""
    value = os.environ.get(_ENV_OFFLOAD, "1").strip().lower()
    return value not in ("0", "no", "off", "false")


class BatchDatagramProtocol(DatagramProtocol):
    """A datagram protocol that takes every datagram of one wake-up as one list."""

    def datagramsReceived(self, datagrams: list[tuple[bytes, Address]]) -> None:
        for datagram, addr in datagrams:
            self.datagramReceived(datagram, addr)


class PortReactor(Protocol):
    """What `BatchUDPPort` needs from a reactor: file descriptors and ``callLater``."""

    def addReader(self, reader: IReadDescriptor) -> None: ...

    def removeReader(self, reader: IReadDescriptor) -> None: ...

    def callLater(
        self, delay: float, callable: Callable[..., Any], *args: object, **kw: object
    ) -> IDelayedCall: ...


@implementer(IListeningPort, IReadDescriptor)
class BatchUDPPort:
    """A UDP port reading and writing in batches (see the module docstring)."""

    def __init__(
        self,
        reactor: PortReactor,
        port: int,
        protocol: BatchDatagramProtocol,
        *,
        interface: str = "",
        max_packet_size: int = 65535,
        offload: bool | None = None,
        max_reads: int = 256,
    ) -> None:
        self.reactor = reactor
        self.port = port
        self.protocol = protocol
        self.interface = interface
        self.max_packet_size = max_packet_size
        self.max_reads = max_reads
        self._offload = offload_enabled() if offload is None else offload
        self.family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        self.socket: socket.socket | None = None
        self.gro = False
        self.gso = False
        self.dropped = 0  # datagrams the kernel refused to send (lost; QUIC recovers)
        self._reading = False
        self._close_call: IDelayedCall | None = None
        self._waiters: list[Deferred[None]] = []

    # -- IListeningPort -----------------------------------------------------------

    def startListening(self) -> None:
        sock = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            if self.family == socket.AF_INET6 and self.interface == "::":
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((self.interface or "0.0.0.0", self.port))
        except OSError as e:
            sock.close()
            raise CannotListenError(self.interface, self.port, e) from e
        sock.setblocking(False)
        self.socket = sock
        if self._offload and _LINUX:
            self.gro = _try_enable_gro(sock)
            self.gso = _gso_available(sock)
        self.port = sock.getsockname()[1]
        self.protocol.makeConnection(self)  # type: ignore[arg-type]
        self._reading = True
        self.reactor.addReader(self)

    def stopListening(self) -> Deferred[None]:
        """Stop reading now; the socket closes on the next reactor turn (as Twisted's
        port does), so a protocol that stops its port while it handles a batch can
        still write the rest of that turn. Fires once the socket is closed."""
        waiter: Deferred[None] = Deferred()
        if self.socket is None:
            waiter.callback(None)
            return waiter
        self._waiters.append(waiter)
        if self._reading:
            self._reading = False
            self.reactor.removeReader(self)
        if self._close_call is None:
            self._close_call = self.reactor.callLater(0, self.connectionLost, None)
        return waiter

    def getHost(self) -> IPv4Address | IPv6Address:
        if self.socket is None:
            raise RuntimeError("the UDP port is not listening")
        host, port = self.socket.getsockname()[:2]
        if self.family == socket.AF_INET6:
            return IPv6Address("UDP", host, port)
        return IPv4Address("UDP", host, port)

    # -- IReadDescriptor ------------------------------------------------------------

    def fileno(self) -> int:
        return -1 if self.socket is None else self.socket.fileno()

    def logPrefix(self) -> str:
        return f"{self.protocol.__class__.__name__} (UDP)"

    def doRead(self) -> None:
        sock = self.socket
        if sock is None or not self._reading:
            return
        batch: list[tuple[bytes, Address]] = []
        gro = self.gro
        size = max(self.max_packet_size, MAX_GSO_BYTES) if gro else self.max_packet_size
        trim = self.family == socket.AF_INET6
        for _ in range(self.max_reads):
            try:
                if gro:
                    data, ancillary, _flags, addr = sock.recvmsg(size, _GRO_ANCILLARY)
                else:
                    data, addr = sock.recvfrom(size)
                    ancillary = []
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as e:
                # An ICMP error queued on the socket, or worse: what was read still counts.
                _log.debug("UDP receive failed: {error}", error=e)
                break
            if trim:
                addr = addr[:2]
            segment = _gro_segment(ancillary) if ancillary else 0
            if 0 < segment < len(data):
                batch.extend(
                    (data[start : start + segment], addr) for start in range(0, len(data), segment)
                )
            else:
                batch.append((data, addr))
        if batch:
            try:
                self.protocol.datagramsReceived(batch)
            except Exception:
                # Raised into the reactor, it would close the port.
                _log.failure("error handling UDP datagrams")

    def connectionLost(self, reason: Failure | None) -> None:
        """Close the socket (after `stopListening`, or when the reactor shuts down)."""
        call, self._close_call = self._close_call, None
        if call is not None and call.active():
            call.cancel()
        sock, self.socket = self.socket, None
        if sock is None:
            return
        if self._reading:
            self._reading = False
            self.reactor.removeReader(self)
        sock.close()
        self.protocol.doStop()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # -- writing ----------------------------------------------------------------------

    def write(self, datagram: bytes, addr: Address) -> None:
        """Send one datagram; a refused send is counted in ``dropped``."""
        sock = self.socket
        if sock is None:
            self.dropped += 1
            return
        try:
            sock.sendto(datagram, addr)
        except OSError as e:
            self._lost(1, e)

    def write_batch(self, datagrams: Sequence[tuple[bytes, Address]]) -> None:
        """Send ``(datagram, addr)`` pairs in order, each run to one address in as few
        syscalls as the kernel allows."""
        sock = self.socket
        if sock is None:
            self.dropped += len(datagrams)
            return
        count = len(datagrams)
        start = 0
        while start < count:
            if not self.gso:  # never had it, or lost it on an earlier run
                for datagram, addr in datagrams[start:]:
                    try:
                        sock.sendto(datagram, addr)
                    except OSError as e:
                        self._lost(1, e)
                return
            first, addr = datagrams[start]
            segment = len(first)
            run = [first]
            total = segment
            end = start + 1
            while end < count and len(run) < MAX_SEGMENTS:
                datagram, other = datagrams[end]
                size = len(datagram)
                if other != addr or size > segment or total + size > MAX_GSO_BYTES:
                    break
                run.append(datagram)
                total += size
                end += 1
                if size < segment:
                    break
            self._send_run(sock, run, segment, addr)
            start = end

    def _send_run(
        self, sock: socket.socket, run: list[bytes], segment: int, addr: Address
    ) -> None:
        if len(run) == 1:
            try:
                sock.sendto(run[0], addr)
            except OSError as e:
                self._lost(1, e)
            return
        try:
            sock.sendmsg(
                run, [(socket.IPPROTO_UDP, UDP_SEGMENT, _SEGMENT_SIZE.pack(segment))], 0, addr
            )
        except (BlockingIOError, InterruptedError) as e:
            self._lost(len(run), e)
        except OSError as e:
            if e.errno not in _GSO_REFUSED:
                self._lost(len(run), e)
                return
            _log.info(
                "UDP GSO refused ({error}): sending one datagram per syscall on this port",
                error=e,
            )
            self.gso = False
            for datagram in run:
                try:
                    sock.sendto(datagram, addr)
                except OSError as plain_error:
                    self._lost(1, plain_error)

    def _lost(self, count: int, error: OSError) -> None:
        self.dropped += count
        if not isinstance(error, BlockingIOError):
            _log.debug("UDP send failed, counted as loss: {error}", error=error)


def write_datagrams(transport: object, datagrams: Sequence[tuple[bytes, Address]]) -> None:
    """Send through a `BatchUDPPort` in batches, or one ``write`` at a time through
    any other UDP transport (Twisted's port: its send errors count as loss too)."""
    if isinstance(transport, BatchUDPPort):
        transport.write_batch(datagrams)
        return
    if transport is None:
        return
    write = cast(Any, transport).write
    for datagram, addr in datagrams:
        try:
            write(datagram, addr)
        except (OSError, MessageLengthError) as e:
            _log.debug("UDP send to {addr} failed, counted as loss: {error}", addr=addr, error=e)


def listen_udp(
    reactor: object,
    port: int,
    protocol: BatchDatagramProtocol,
    *,
    interface: str = "",
    max_packet_size: int = 65535,
) -> IListeningPort:
    """A listening `BatchUDPPort` where the reactor offers file descriptors, else the
    reactor's own ``listenUDP``."""
    if IReactorFDSet.providedBy(reactor):
        udp_port = BatchUDPPort(
            cast(PortReactor, reactor),
            port,
            protocol,
            interface=interface,
            max_packet_size=max_packet_size,
        )
        udp_port.startListening()
        return cast(IListeningPort, udp_port)
    return cast(IReactorUDP, reactor).listenUDP(
        port, protocol, interface=interface, maxPacketSize=max_packet_size
    )


def _try_enable_gro(sock: socket.socket) -> bool:
    try:
        sock.setsockopt(socket.IPPROTO_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def _gso_available(sock: socket.socket) -> bool:
    try:
        sock.getsockopt(socket.IPPROTO_UDP, UDP_SEGMENT)
    except OSError:
        return False
    return True


def _gro_segment(ancillary: list[tuple[int, int, bytes]]) -> int:
    """The segment size in a UDP_GRO control message, 0 when there is none."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_UDP and kind == UDP_GRO:
            if len(data) >= _GRO_SIZE.size:
                return int(_GRO_SIZE.unpack_from(data)[0])
            if len(data) >= _SEGMENT_SIZE.size:
                return int(_SEGMENT_SIZE.unpack_from(data)[0])
    return 0
