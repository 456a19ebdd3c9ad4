"""Tests for moqrelay.compat.qh3: every private part it relies on is still there."""

# mypy: disallow-untyped-calls=False
# (twisted.trial's assertion methods are not annotated.)

from __future__ import annotations

from typing import Any

from qh3 import _hazmat
from qh3.h3.connection import H3Connection, H3Stream
from twisted.trial.unittest import SynchronousTestCase

from moqrelay.compat import qh3 as compat
from tests import test_compat_aioquic
from tests.test_compat_aioquic import client_connection


class Qh3StackContract(test_compat_aioquic.StackContract):
    stack_name = "qh3"


class _Core:
    """A packet core that builds ``good`` datagrams, then fails as qh3's does."""

    def __init__(self, good: int) -> None:
        self.good = good

    def poll_transmit(self, now: float) -> tuple[bytes, Any] | None:
        if self.good:
            self.good -= 1
            return (b"d%d" % self.good, ("10.0.0.1", 1))
        raise RuntimeError("packet builder capacity exhausted")


class DatagramsToSendTests(SynchronousTestCase):
    def test_datagrams_built_before_a_core_error_are_kept(self) -> None:
        quic = client_connection("qh3")
        quic._core = _Core(2)
        sent = compat.datagrams_to_send(quic, 1.0)
        self.assertEqual([data for data, _ in sent], [b"d1", b"d0"])


class PrivatesTests(SynchronousTestCase):
    """Each private part of qh3 that moqrelay.compat.qh3 reads exists."""

    def test_hazmat_buffer(self) -> None:
        self.assertTrue(callable(_hazmat.Buffer))

    def test_connection_privates(self) -> None:
        quic = client_connection("qh3")
        for name in ("_core", "_quic_logger", "_remote_max_datagram_frame_size", "_tls"):
            self.assertTrue(hasattr(quic, name), name)
        self.assertTrue(callable(quic._end_trace))
        self.assertTrue(callable(quic._core.poll_transmit))
        self.assertTrue(hasattr(quic._tls, "remote_transport_parameters"))

    def test_h3_privates(self) -> None:
        for name in ("_get_local_settings", "_get_or_create_stream"):
            self.assertTrue(callable(getattr(H3Connection, name, None)), name)
        h3 = compat.h3_connection(client_connection("qh3"), {})
        self.assertIsInstance(h3._stream, dict)
        stream = H3Stream(0)
        self.assertTrue(hasattr(stream, "frame_type"))
        self.assertTrue(hasattr(stream, "session_id"))
