"""Tests for moqrelay.wire.versions (wire layer): one object per draft, picked by ALPN."""

# mypy: disallow-untyped-calls=False
# (twisted.trial's assertion methods are not annotated.)

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from moqrelay.wire import control, draft16
from moqrelay.wire.control import (
    FILTER_LARGEST_OBJECT,
    GROUP_ORDER_ASCENDING,
    SETUP_MAX_REQUEST_ID,
    ClientSetup,
    ServerSetup,
    Subscribe,
)
from moqrelay.wire.errors import ProtocolViolation
from moqrelay.wire.versions import DRAFT_14, DRAFT_16, SUPPORTED, by_alpn, by_wt_protocol


class LookupTests(SynchronousTestCase):
    """Draft-14 is `moq-00` with versions in SETUP; draft-16 is `moqt-16` (§3.1)."""

    def test_tokens(self) -> None:
        self.assertEqual((DRAFT_14.alpn, DRAFT_16.alpn), ("moq-00", "moqt-16"))
        self.assertEqual((DRAFT_14.number, DRAFT_16.number), (0xFF00000E, 0xFF000010))
        self.assertTrue(DRAFT_14.setup_has_versions)
        self.assertFalse(DRAFT_16.setup_has_versions)

    def test_by_alpn(self) -> None:
        self.assertIs(by_alpn("moq-00"), DRAFT_14)
        self.assertIs(by_alpn(b"moqt-16"), DRAFT_16)
        self.assertIsNone(by_alpn("moqt-15"))
        self.assertIsNone(by_alpn(b"\xff"))
        self.assertIsNone(by_alpn(None))

    def test_by_wt_protocol(self) -> None:
        self.assertIs(by_wt_protocol(None), DRAFT_14)
        self.assertIs(by_wt_protocol("moqt-16"), DRAFT_16)
        self.assertIs(by_wt_protocol(b"moq-00"), DRAFT_14)
        self.assertIsNone(by_wt_protocol("h3"))

    def test_newest_first(self) -> None:
        self.assertEqual([version.alpn for version in SUPPORTED], ["moqt-16", "moq-00"])


class CodecTests(SynchronousTestCase):
    """Each object encodes and decodes in its own draft; draft-14's is control.py's."""

    def test_draft14_delegates(self) -> None:
        self.assertIs(DRAFT_14.encode_message, control.encode_message)
        self.assertIs(DRAFT_14.new_control_decoder, control.ControlStreamDecoder)
        self.assertIs(DRAFT_16.encode_message, draft16.encode_message)
        self.assertIs(DRAFT_16.new_control_decoder, draft16.ControlStreamDecoder16)

    def test_same_message_two_encodings(self) -> None:
        msg = Subscribe(0, (b"n",), b"t", 1, GROUP_ORDER_ASCENDING, True, FILTER_LARGEST_OBJECT)
        wire14 = DRAFT_14.encode_message(msg)
        wire16 = DRAFT_16.encode_message(msg)
        self.assertNotEqual(wire14, wire16)
        for version, wire in ((DRAFT_14, wire14), (DRAFT_16, wire16)):
            self.assertEqual(list(version.new_control_decoder(0xFFFF).feed(wire)), [msg])

    def test_setup(self) -> None:
        for version in SUPPORTED:
            client = ClientSetup([version.number], [(SETUP_MAX_REQUEST_ID, 10)])
            server = ServerSetup(version.number, [(SETUP_MAX_REQUEST_ID, 10)])
            wire = version.encode_message(client) + version.encode_message(server)
            decoded = version.new_control_decoder(0xFFFF).feed(wire)
            self.assertEqual(list(decoded), [client, server], version.name)

    def test_max_message_size(self) -> None:
        msg = Subscribe(0, (b"n",), b"t" * 40, 1, GROUP_ORDER_ASCENDING, True, 2)
        for version in SUPPORTED:
            with self.assertRaises(ProtocolViolation, msg=version.name):
                version.new_control_decoder(16).feed(version.encode_message(msg))
