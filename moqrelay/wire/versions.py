"""Wire layer: one object per MoQT draft, so the session and relay stay draft-blind.

A `WireVersion` gives everything that differs between drafts at the wire: the
ALPN / WebTransport protocol token that selects it, whether SETUP carries a
version list, and its codec (control-message encoder and control-stream decoder
factory). The session picks one at negotiation (`by_alpn`, `by_wt_protocol`)
and calls through it; nothing outside `moqrelay.wire` needs a draft number.

`DRAFT_14` delegates to `moqrelay.wire.control` unchanged. `DRAFT_16` uses
`moqrelay.wire.draft16`, which decodes into the same dataclasses wherever a
message means the same thing. (`control.DRAFT_14` and `draft16.DRAFT_16` are the
version numbers; the objects here carry them as `number`.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from moqrelay.wire import control, draft16

__all__ = [
    "DRAFT_14",
    "DRAFT_16",
    "SUPPORTED",
    "ControlDecoder",
    "WireVersion",
    "by_alpn",
    "by_wt_protocol",
]


class ControlDecoder(Protocol):
    """What a control-stream decoder offers: feed bytes, get the completed messages."""

    def feed(self, data: bytes | bytearray | memoryview) -> Sequence[Any]:
        """Add stream bytes; return the messages they complete (ProtocolViolation if bad)."""
        ...


@dataclass(frozen=True, slots=True)
class WireVersion:
    """One MoQT draft as seen from the wire.

    `alpn` is both the QUIC ALPN and the WebTransport protocol token (WT-Protocol);
    `number` is the version as SETUP would carry it. When `setup_has_versions` is
    false the version is fixed by ALPN, and the codec fills ClientSetup.versions
    with [number] and ServerSetup.version with number. `new_control_decoder(max_size)`
    makes a control-stream decoder refusing messages longer than max_size bytes.
    """

    name: str
    number: int
    alpn: str
    setup_has_versions: bool
    encode_message: Callable[[Any], bytes]
    new_control_decoder: Callable[[int], ControlDecoder]


DRAFT_14 = WireVersion(
    name="draft-14",
    number=control.DRAFT_14,
    alpn="moq-00",
    setup_has_versions=True,
    encode_message=control.encode_message,
    new_control_decoder=control.ControlStreamDecoder,
)

DRAFT_16 = WireVersion(
    name="draft-16",
    number=draft16.DRAFT_16,
    alpn="moqt-16",
    setup_has_versions=False,
    encode_message=draft16.encode_message,
    new_control_decoder=draft16.ControlStreamDecoder16,
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
