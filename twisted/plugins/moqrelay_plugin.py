"""twistd plugin: one lazy ServiceMaker, so `twistd --help` never imports aioquic."""

from twisted.application.service import ServiceMaker

moqrelay = ServiceMaker(
    "MoQ relay",
    "moqrelay.tap",
    "A Media over QUIC relay (MoQT draft-14) over QUIC, WebTransport and WebSocket.",
    "moqrelay",
)
