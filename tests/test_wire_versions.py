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
from moqrelay.wire.data import STATUS_NORMAL, ObjectDatagram, ObjectRecord, SubgroupHeader
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


class DataPlaneTests(SynchronousTestCase):
    """The data plane through the version objects: same calls, each draft's bytes."""

    def test_subgroup_stream(self) -> None:
        sizes: dict[str, int] = {}
        for version in SUPPORTED:
            wire = version.encode_subgroup_header(3, 4, 0, 128, True, False, 128)
            block = version.encode_extensions([(0x3C, 2), (0x3E, 1)])
            self.assertEqual(version.parse_extensions(block), [(0x3C, 2), (0x3E, 1)])
            wire += version.encode_subgroup_object(0, b"abc", block, STATUS_NORMAL)
            decoder = version.new_data_decoder(1024, lambda alias: 128)
            events = list(decoder.feed(wire))
            decoder.end_of_stream()
            self.assertEqual(
                events,
                [
                    SubgroupHeader(wire[0], 3, 4, 0, 128),
                    ObjectRecord(0, b"abc", STATUS_NORMAL, block),
                ],
                version.name,
            )
            sizes[version.name] = wire[0]
        # Draft-16 leaves the default priority out (type 0x31); draft-14 cannot (0x11).
        self.assertEqual(sizes, {"draft-14": 0x11, "draft-16": 0x31})

    def test_datagram(self) -> None:
        datagram = ObjectDatagram(1, 2, 3, 128, b"", b"payload", None, False)
        lengths: list[int] = []
        for version in SUPPORTED:
            wire = version.encode_datagram(datagram, 128)
            self.assertEqual(version.decode_datagram(wire, lambda alias: 128), datagram)
            lengths.append(len(wire))
        self.assertEqual(lengths, [11, 12])  # draft-16, draft-14
