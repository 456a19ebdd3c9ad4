"""Tests for moqrelay.compat.aioquic: every private part it relies on is still there.

`StackContract` runs the adapter-facing functions of a compat module against two
live connections in memory; `test_compat_qh3` reuses it for qh3.
"""

# mypy: disallow-untyped-calls=False
# (twisted.trial's assertion methods are not annotated.)

from __future__ import annotations

from typing import Any

from aioquic import _buffer
from aioquic.h3.connection import H3Connection, H3Stream
from twisted.trial.unittest import SynchronousTestCase

from moqrelay.compat import aioquic as compat
from moqrelay.transport.quicstack import load_quic_stack
from tests.test_quic import CHAIN, MemoryLink


def client_connection(stack_name: str) -> Any:
    stack = load_quic_stack(stack_name)
    configuration = stack.client_configuration(
        alpn_protocols=["moq-00"],
        idle_timeout=30.0,
        max_datagram_frame_size=65536,
        connection_id_length=8,
        server_name="localhost",
        verify=False,
    )
    quic = stack.new_connection(configuration)
    quic.connect(("10.0.0.1", 4443), now=0.0)
    return quic


class StackContract(SynchronousTestCase):
    """What the adapter asks of a compat module, checked on live connections."""

    stack_name = "aioquic"

    def setUp(self) -> None:
        self.stack = load_quic_stack(self.stack_name)
        self.link = MemoryLink(stack=self.stack)
        self.addCleanup(self.assertEqual, self.link.clock.getDelayedCalls(), [])
        self.addCleanup(self.link.shutdown)
        self.client, self.server = self.link.established()
        self.quic = self.link.client_handlers.handlers[0].session._quic  # type: ignore[attr-defined]

    def test_unsent_bytes_until_sent(self) -> None:
        stream = self.client.session.open_uni_stream()
        stream.write(b"x" * 3000)
        self.assertEqual(self.stack.unsent_bytes(self.quic, stream.stream_id, 3000), 3000)
        self.link.pump()
        self.assertEqual(self.stack.unsent_bytes(self.quic, stream.stream_id, 3000), 0)

    def test_peer_parameters_and_certificate(self) -> None:
        self.assertEqual(self.stack.peer_certificate_der(self.quic), CHAIN.leaf_der())
        self.assertEqual(self.stack.remote_idle_timeout(self.quic), 30.0)
        self.assertEqual(self.stack.remote_max_datagram_frame_size(self.quic), 65536)
        self.assertGreaterEqual(self.stack.max_datagram_size(self.quic), 1200)
        self.assertEqual(self.stack.pending_datagrams(self.quic), 0)

    def test_h3_stream_marked_and_forgotten(self) -> None:
        h3 = self.stack.h3_connection(self.quic, {0x8: 1})
        self.assertEqual(h3.sent_settings[0x8], 1)
        self.stack.h3_mark_webtransport_stream(h3, 8, 4)
        self.assertEqual(h3._stream[8].session_id, 4)
        self.stack.h3_forget_stream(h3, 8)
        self.assertNotIn(8, h3._stream)

    def test_retry_tokens(self) -> None:
        tokens = self.stack.retry_tokens()
        token = tokens.create(("10.0.0.2", 5000), b"O" * 8, b"R" * 8, 1.0)
        self.assertEqual(tokens.validate(("10.0.0.2", 5000), b"R" * 8, token, 1.0), b"O" * 8)
        with self.assertRaises(ValueError):
            tokens.validate(("10.0.0.3", 5000), b"R" * 8, token, 1.0)


class PrivatesTests(SynchronousTestCase):
    """Each private part of aioquic that moqrelay.compat.aioquic reads exists."""

    def test_buffer(self) -> None:
        self.assertTrue(callable(_buffer.Buffer))

    def test_connection_privates(self) -> None:
        quic = client_connection("aioquic")
        for name in (
            "_streams",
            "_datagrams_pending",
            "_remote_max_datagram_frame_size",
            "_max_datagram_size",
            "_remote_max_idle_timeout",
            "_quic_logger",
            "_configuration",
        ):
            self.assertTrue(hasattr(quic, name), name)
        self.assertTrue(hasattr(quic.tls, "_peer_certificate"))
        quic.send_stream_data(2, b"abc")
        self.assertEqual(quic._streams[2].sender.highest_offset, 0)

    def test_h3_privates(self) -> None:
        for name in ("_get_local_settings", "_get_or_create_stream"):
            self.assertTrue(callable(getattr(H3Connection, name, None)), name)
        h3 = compat.h3_connection(client_connection("aioquic"), {})
        self.assertIsInstance(h3._stream, dict)
        stream = H3Stream(0)
        self.assertTrue(hasattr(stream, "frame_type"))
        self.assertTrue(hasattr(stream, "session_id"))
