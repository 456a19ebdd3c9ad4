"""Wire layer: one object per MoQT draft, so the session and relay stay draft-blind.

A `WireVersion` gives everything that differs between drafts at the wire: the
ALPN / WebTransport protocol token that selects it, whether SETUP carries a
version list, and its codec (control-message encoder, control-stream decoder
factory, data-stream decoder factory, datagram and subgroup codecs). The session
picks one at negotiation (`by_alpn`, `by_wt_protocol`) and calls through it;
nothing outside `moqrelay.wire` needs a draft number.

`DRAFT_14` delegates to `moqrelay.wire.control` and `.data` unchanged. `DRAFT_16` uses
`moqrelay.wire.draft16`, which decodes into the same dataclasses wherever a
message means the same thing. (`control.DRAFT_14` and `draft16.DRAFT_16` are the
version numbers; the objects here carry them as `number`.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from moqrelay.wire import control, data, draft16, draft16_data
from moqrelay.wire.control import Param
from moqrelay.wire.data import ObjectDatagram
from moqrelay.wire.varint import Buffer

__all__ = [
    "DRAFT_14",
    "DRAFT_16",
    "SUPPORTED",
    "ControlDecoder",
    "DataDecoder",
    "WireVersion",
    "by_alpn",
    "by_wt_protocol",
]


class ControlDecoder(Protocol):
    """What a control-stream decoder offers: feed bytes, get the completed messages."""

    def feed(self, data: bytes | bytearray | memoryview) -> Sequence[Any]:
        """Add stream bytes; return the messages they complete (ProtocolViolation if bad)."""
        ...


class DataDecoder(Protocol):
    """What a data-stream decoder offers (see `data.DataStreamDecoder`)."""

    def feed(self, data: Buffer) -> Sequence[Any]:
        """Add stream bytes; return the header and object events they complete."""
        ...

    def end_of_stream(self) -> None:
        """The stream ended with a FIN (ProtocolViolation inside a header or object)."""
        ...


# The data plane of every version takes the track's default publisher priority:
# draft-16 leaves a priority equal to it off the wire; draft-14 always writes it.
DefaultPriority = Callable[[int], int]


@dataclass(frozen=True, slots=True)
class WireVersion:
    """One MoQT draft as seen from the wire.

    `alpn` is both the QUIC ALPN and the WebTransport protocol token (WT-Protocol);
    `number` is the version as SETUP would carry it. When `setup_has_versions` is
    false the version is fixed by ALPN, and the codec fills ClientSetup.versions
    with [number] and ServerSetup.version with number. `new_control_decoder(max_size)`
    makes a control-stream decoder refusing messages longer than max_size bytes.

    Data plane: `new_data_decoder(max_object_size, default_priority)` decodes one
    unidirectional stream, `default_priority(track_alias)` giving the priority of
    a subgroup header that leaves it out; `decode_datagram(data, default_priority)`
    likewise. The encoders take `default_priority` (None: always write it).
    Extension blocks are raw bytes in the version's encoding: `parse_extensions`
    and `encode_extensions` convert between them and Key-Value-Pairs.
    """

    name: str
    number: int
    alpn: str
    setup_has_versions: bool
    encode_message: Callable[[Any], bytes]
    new_control_decoder: Callable[[int], ControlDecoder]
    new_data_decoder: Callable[[int, DefaultPriority], DataDecoder]
    decode_datagram: Callable[[Buffer, DefaultPriority], ObjectDatagram]
    encode_datagram: Callable[[ObjectDatagram, int | None], bytes]
    encode_subgroup_header: Callable[[int, int, int, int, bool, bool, int | None], bytes]
    encode_subgroup_object: Callable[[int, bytes | memoryview, bytes | None, int], bytes]
    parse_extensions: Callable[[bytes], list[Param]]
    encode_extensions: Callable[[list[Param]], bytes]


def _data_decoder_14(max_object_size: int, default_priority: DefaultPriority) -> DataDecoder:
    return data.DataStreamDecoder(max_object_size)


def _decode_datagram_14(datagram: Buffer, default_priority: DefaultPriority) -> ObjectDatagram:
    return data.decode_datagram(datagram)


def _encode_datagram_14(datagram: ObjectDatagram, default_priority: int | None) -> bytes:
    return data.encode_datagram(datagram)


def _subgroup_header_14(
    track_alias: int,
    group_id: int,
    subgroup_id: int,
    priority: int,
    extensions: bool,
    end_of_group: bool,
    default_priority: int | None,
) -> bytes:
    return data.encode_subgroup_header(
        track_alias,
        group_id,
        subgroup_id,
        priority,
        extensions=extensions,
        end_of_group=end_of_group,
    )


def _subgroup_object_14(
    delta: int, payload: bytes | memoryview, extensions: bytes | None, status: int
) -> bytes:
    return data.encode_subgroup_object(delta, payload, extensions=extensions, status=status)


def _data_decoder_16(max_object_size: int, default_priority: DefaultPriority) -> DataDecoder:
    return draft16_data.DataStreamDecoder16(max_object_size, default_priority)


def _encode_datagram_16(datagram: ObjectDatagram, default_priority: int | None) -> bytes:
    return draft16_data.encode_datagram(datagram, default_priority=default_priority)


def _subgroup_header_16(
    track_alias: int,
    group_id: int,
    subgroup_id: int,
    priority: int,
    extensions: bool,
    end_of_group: bool,
    default_priority: int | None,
) -> bytes:
    return draft16_data.encode_subgroup_header(
        track_alias,
        group_id,
        subgroup_id,
        priority,
        extensions=extensions,
        end_of_group=end_of_group,
        default_priority=default_priority,
    )


def _subgroup_object_16(
    delta: int, payload: bytes | memoryview, extensions: bytes | None, status: int
) -> bytes:
    return draft16_data.encode_subgroup_object(
        delta, payload, extensions=extensions, status=status
    )


DRAFT_14 = WireVersion(
    name="draft-14",
    number=control.DRAFT_14,
    alpn="moq-00",
    setup_has_versions=True,
    encode_message=control.encode_message,
    new_control_decoder=control.ControlStreamDecoder,
    new_data_decoder=_data_decoder_14,
    decode_datagram=_decode_datagram_14,
    encode_datagram=_encode_datagram_14,
    encode_subgroup_header=_subgroup_header_14,
    encode_subgroup_object=_subgroup_object_14,
    parse_extensions=data.parse_extensions,
    encode_extensions=data.encode_extensions,
)

DRAFT_16 = WireVersion(
    name="draft-16",
    number=draft16.DRAFT_16,
    alpn="moqt-16",
    setup_has_versions=False,
    encode_message=draft16.encode_message,
    new_control_decoder=draft16.ControlStreamDecoder16,
    new_data_decoder=_data_decoder_16,
    decode_datagram=draft16_data.decode_datagram,
    encode_datagram=_encode_datagram_16,
    encode_subgroup_header=_subgroup_header_16,
    encode_subgroup_object=_subgroup_object_16,
    parse_extensions=draft16_data.parse_extensions,
    encode_extensions=draft16_data.encode_extensions,
)

# In the server's order of preference: the newest draft first.
SUPPORTED: tuple[WireVersion, ...] = (DRAFT_16, DRAFT_14)

_BY_ALPN = {version.alpn: version for version in SUPPORTED}


def by_alpn(alpn: str | bytes | None) -> WireVersion | None:
    """The version a negotiated QUIC ALPN selects, or None if it is not one of ours."""
    if alpn is None:
        return None
    if isinstance(alpn, bytes):
        try:
            alpn = alpn.decode("ascii")
        except UnicodeDecodeError:
            return None
    return _BY_ALPN.get(alpn)


def by_wt_protocol(protocol: str | bytes | None) -> WireVersion | None:
    """The version a WebTransport session selects by its WT-Protocol token.

    No token at all is draft-14, which negotiated inside SETUP and sent none.
    """
    if protocol is None:
        return DRAFT_14
    return by_alpn(protocol)
