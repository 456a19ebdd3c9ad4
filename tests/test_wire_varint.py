"""Tests for moqrelay.wire.varint (wire layer): varints and the Reader cursor."""

# mypy: disallow-untyped-calls=False
# (twisted.trial's assertion methods are not annotated.)

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from twisted.trial.unittest import SynchronousTestCase

from moqrelay.wire.errors import ProtocolViolation
from moqrelay.wire.varint import (
    MAX_VARINT,
    NeedMoreData,
    Reader,
    encode_varint,
    truncation_is_violation,
    varint_size,
)

# Hypothesis caches (constants, unicode tables) go to the temp dir, not into the repository.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "moqrelay-hypothesis")

_PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=500)

# Reference §2.1 examples.
_EXAMPLES = {
    37: "25",
    100: "40 64",
    2000: "47 d0",
    42069: "80 00 a4 55",
    0xFF00000E: "c0 00 00 00 ff 00 00 0e",
}

_BOUNDARIES = [
    (0, 1),
    (63, 1),
    (64, 2),
    (16383, 2),
    (16384, 4),
    (2**30 - 1, 4),
    (2**30, 8),
    (MAX_VARINT, 8),
]


class EncodeTests(SynchronousTestCase):
    def test_reference_examples(self) -> None:
        for value, hex_bytes in _EXAMPLES.items():
            self.assertEqual(encode_varint(value), bytes.fromhex(hex_bytes), value)
            self.assertEqual(Reader(bytes.fromhex(hex_bytes)).varint(), value)

    def test_boundaries(self) -> None:
        for value, size in _BOUNDARIES:
            encoded = encode_varint(value)
            self.assertEqual(len(encoded), size, value)
            self.assertEqual(varint_size(value), size, value)
            self.assertEqual(Reader(encoded).varint(), value)

    def test_out_of_range(self) -> None:
        for value in (-1, MAX_VARINT + 1, 2**64):
            self.assertRaises(ValueError, encode_varint, value)
            self.assertRaises(ValueError, varint_size, value)

    @_PROPERTY
    @given(st.one_of(st.integers(0, 2**14), st.integers(0, MAX_VARINT)))
    def test_round_trip(self, value: int) -> None:
        encoded = encode_varint(value)
        self.assertEqual(len(encoded), varint_size(value))
        reader = Reader(encoded)
        self.assertEqual(reader.varint(), value)
        self.assertTrue(reader.at_end())


class ReaderTests(SynchronousTestCase):
    def test_accepts_non_shortest_forms(self) -> None:
        """Receivers must accept any length form (RFC 9000 §16)."""
        for hex_bytes in ("25", "40 25", "80 00 00 25", "c0 00 00 00 00 00 00 25"):
            self.assertEqual(Reader(bytes.fromhex(hex_bytes)).varint(), 37, hex_bytes)

    def test_buffer_types(self) -> None:
        raw = bytes.fromhex("40 64 7f 01 02 03 61 62 63 ff")
        for data in (raw, bytearray(raw), memoryview(raw)):
            r = Reader(data)
            self.assertEqual(r.varint(), 100)
            self.assertEqual(r.uint8(), 0x7F)
            self.assertEqual(r.uint16(), 0x0102)
            self.assertEqual(r.remaining(), 5)
            value = r.length_prefixed()
            self.assertEqual(value, b"abc")
            self.assertIs(type(value), bytes)
            self.assertFalse(r.at_end())
            rest = r.rest()
            self.assertEqual(rest, b"\xff")
            self.assertIs(type(rest), bytes)
            self.assertTrue(r.at_end())
            self.assertEqual(r.pos, len(raw))

    def test_bytes_copies_view_does_not(self) -> None:
        buf = bytearray(b"hello world")
        copied = Reader(buf).bytes_(5)
        view = Reader(buf, 6).view(5)
        buf[0:1] = b"J"
        buf[6:7] = b"W"
        self.assertEqual(copied, b"hello")
        self.assertEqual(bytes(view), b"World")
        view.release()
        buf += b"!"  # the bytearray can grow again once the view is released
        self.assertEqual(bytes(buf), b"Jello World!")

    def test_bytes_from_bytearray_releases_buffer(self) -> None:
        """Reading from a bytearray leaves no export behind: it can still be resized."""
        buf = bytearray(b"abcdef")
        self.assertEqual(Reader(buf, 1).bytes_(3), b"bcd")
        self.assertEqual(Reader(buf).copy_range(2, 4), b"cd")
        buf += b"g"
        del buf[:2]
        self.assertEqual(bytes(buf), b"cdefg")

    def test_end_limit(self) -> None:
        r = Reader(b"\x01\x02\x03\x04", 1, 3)
        self.assertEqual(r.end, 3)
        self.assertEqual(r.rest(), b"\x02\x03")
        self.assertRaises(NeedMoreData, r.uint8)

    def test_skip(self) -> None:
        r = Reader(b"abcd")
        r.skip(3)
        self.assertEqual(r.pos, 3)
        with self.assertRaises(NeedMoreData) as caught:
            r.skip(2)
        self.assertEqual(caught.exception.needed_end, 5)
        self.assertEqual(r.pos, 3)

    def test_need_more_data(self) -> None:
        """Every read past the end raises NeedMoreData, saying how far it needed to go."""
        cases = [
            (b"", Reader.varint, 1),
            (b"\x40", Reader.varint, 2),
            (b"\x80\x00\x00", Reader.varint, 4),
            (b"\xc0", Reader.varint, 8),
            (b"", Reader.uint8, 1),
            (b"\x00", Reader.uint16, 2),
            (b"\x05ab", Reader.length_prefixed, 6),
        ]
        for data, method, needed_end in cases:
            with self.assertRaises(NeedMoreData) as caught:
                method(Reader(data))
            self.assertEqual(caught.exception.needed_end, needed_end, (data, method))
        for method_name, n in (("bytes_", 3), ("view", 3)):
            with self.assertRaises(NeedMoreData):
                getattr(Reader(b"ab"), method_name)(n)

    def test_need_more_data_is_not_a_violation(self) -> None:
        self.assertFalse(issubclass(NeedMoreData, ProtocolViolation))


class TruncationTests(SynchronousTestCase):
    def test_converts_need_more_data(self) -> None:
        with self.assertRaises(ProtocolViolation) as caught:
            with truncation_is_violation("DATAGRAM"):
                Reader(b"\x40").varint()
        self.assertEqual(caught.exception.reason, "truncated DATAGRAM")
        self.assertEqual(caught.exception.code, 0x3)

    def test_passes_other_exceptions_and_results(self) -> None:
        with self.assertRaises(KeyError):
            with truncation_is_violation("x"):
                raise KeyError("k")
        with truncation_is_violation("x"):
            value = Reader(b"\x07").varint()
        self.assertEqual(value, 7)
