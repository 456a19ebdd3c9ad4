"""Session layer helper: the few relay figures that need an event, as Prometheus counters.

`moqrelay.session` counts here where the event already is (a session opened or closed,
a request refused, a PUBLISH_DONE sent), one counter increment each; nothing here runs
per object. `moqrelay.metrics` (the application layer) exports them beside what it
reads from the relay's state at scrape time. Every label is bounded: transport names,
and the names of the draft's error codes (any other code is ``other``).
"""

from __future__ import annotations

from enum import IntEnum

from prometheus_client import Counter

from moqrelay.wire import control as c
from moqrelay.wire.errors import (
    FetchErrorCode,
    NamespaceErrorCode,
    PublishDoneCode,
    PublishErrorCode,
    SessionErrorCode,
    SubscribeErrorCode,
    SubscribeNamespaceErrorCode,
)

# Event counters, process-wide (one relay per process), in no registry until a relay's
# metrics registry takes them (`metrics_registry`).
SESSIONS_OPENED = Counter(
    "moqrelay_sessions_opened",
    "MoQT sessions opened, by transport (the --announce session included).",
    ["transport"],
    registry=None,
)
SESSIONS_CLOSED = Counter(
    "moqrelay_sessions_closed",
    "MoQT sessions closed, by transport and termination code.",
    ["transport", "code"],
    registry=None,
)
REQUESTS_REFUSED = Counter(
    "moqrelay_requests_refused",
    "Requests the relay refused, by error message and code.",
    ["message", "code"],
    registry=None,
)
SUBSCRIPTIONS_ENDED = Counter(
    "moqrelay_subscriptions_ended",
    "PUBLISH_DONE sent, by status (TOO_FAR_BEHIND: a viewer that lagged too far).",
    ["status"],
    registry=None,
)
EVENT_COUNTERS = (SESSIONS_OPENED, SESSIONS_CLOSED, REQUESTS_REFUSED, SUBSCRIPTIONS_ENDED)

# The relay's transports, exported at zero before their first session so that rates and
# sums over them work from the start.
TRANSPORTS = ("quic", "webtransport", "websocket")
for _transport in TRANSPORTS:
    SESSIONS_OPENED.labels(_transport)

_REFUSALS: dict[type, tuple[str, type[IntEnum]]] = {
    c.SubscribeError: ("SUBSCRIBE_ERROR", SubscribeErrorCode),
    c.TrackStatusError: ("TRACK_STATUS_ERROR", SubscribeErrorCode),
    c.FetchError: ("FETCH_ERROR", FetchErrorCode),
    c.PublishError: ("PUBLISH_ERROR", PublishErrorCode),
    c.PublishNamespaceError: ("PUBLISH_NAMESPACE_ERROR", NamespaceErrorCode),
    c.SubscribeNamespaceError: ("SUBSCRIBE_NAMESPACE_ERROR", SubscribeNamespaceErrorCode),
}


def code_name(codes: type[IntEnum], code: int) -> str:
    """The draft's name for ``code``, or ``other``: a label value from a bounded set."""
    try:
        return codes(code).name
    except ValueError:
        return "other"


def session_opened(transport: str) -> None:
    SESSIONS_OPENED.labels(transport).inc()


def session_closed(transport: str, code: int) -> None:
    SESSIONS_CLOSED.labels(transport, code_name(SessionErrorCode, code)).inc()


def final_answer_sent(msg: c.ControlMessage) -> None:
    """A request's final answer went out: count it if it refuses or ends the request."""
    if isinstance(msg, c.PublishDone):
        SUBSCRIPTIONS_ENDED.labels(code_name(PublishDoneCode, msg.status_code)).inc()
        return
    refusal = _REFUSALS.get(type(msg))
    if refusal is not None:
        message, codes = refusal
        code: int = getattr(msg, "error_code", -1)
        REQUESTS_REFUSED.labels(message, code_name(codes, code)).inc()
