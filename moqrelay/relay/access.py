"""Relay layer: what one peer's token lets it do.

A `PeerAccess` belongs to one peer. It verifies the token the session brought
(the URL's ``?jwt=`` or CLIENT_SETUP's AUTHORIZATION_TOKEN), closes the session
when it is bad and again when it expires, and decides each request: publish or
subscribe, for a namespace, with the token the session brought or the one the
request carries. Denials are logged at most once a minute per peer and kind
(`moqrelay.auth.DenialLog`, shared across the relay). Without an authorizer the
relay is open and every request passes. `RequestPeer` is what a request's
handler (`fetch`, `status`) asks of the peer that sent it, the token check included.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from moqrelay.auth import (
    AuthError,
    Authorizer,
    DenialLog,
    Grant,
    parse_token_struct,
    token_from_path,
)
from moqrelay.relay.namespaces import Namespace, format_namespace
from moqrelay.relay.tracks import Track, TrackKey
from moqrelay.session import MoqtSession
from moqrelay.wire import control as c
from moqrelay.wire.errors import SessionErrorCode

_log = Logger()


class RequestPeer(Protocol):
    """What a request's handler (FETCH, TRACK_STATUS) asks of the peer that sent it."""

    @property
    def session(self) -> MoqtSession: ...

    def check(
        self, what: str, publish: bool, namespace: Namespace, params: list[c.Param]
    ) -> AuthError | None:
        """Why the peer's token refuses the request (the denial logged), or None."""

    def live_track(self, key: TrackKey) -> Track | None:
        """The relay's live track of that name, if any."""


class PeerAccess:
    """One session's grant, its expiry, and the check of each request."""

    def __init__(
        self, authorizer: Authorizer | None, denials: DenialLog, reactor: IReactorTime
    ) -> None:
        self.authorizer = authorizer
        self.denials = denials
        self.reactor = reactor
        self.grant: Grant | None = None
        self._expiry: IDelayedCall | None = None

    def authenticate(self, session: MoqtSession, name: str) -> None:
        """Verify the session's own token, if it brought one: a bad one ends the session."""
        authorizer = self.authorizer
        if authorizer is None:
            return
        token = token_from_path(session.path)
        if token is None:
            for key, value in session.peer_params:
                if key == c.SETUP_AUTHORIZATION_TOKEN and isinstance(value, bytes):
                    raw = parse_token_struct(value, in_setup=True)
                    token = raw.decode("utf-8", "replace") if raw is not None else None
                    break
        if token is None:
            return
        now = self.reactor.seconds()
        try:
            self.grant = authorizer.verify(token, now)
        except AuthError as e:
            self.log_denial(name, "session", e)
            session.close(e.code, e.reason)
            return
        if self.grant.expires is not None:
            self._expiry = self.reactor.callLater(
                max(0.0, self.grant.expires - now), self._expired, session, name
            )

    def _expired(self, session: MoqtSession, name: str) -> None:
        self._expiry = None
        _log.info("token of {peer} expired; closing its session", peer=name)
        session.close(SessionErrorCode.EXPIRED_AUTH_TOKEN, "authorization token expired")

    def denied(
        self, publish: bool, namespace: Namespace, params: list[c.Param]
    ) -> AuthError | None:
        """Why this request may not go on, or None when the relay is open or it may."""
        authorizer = self.authorizer
        if authorizer is None:
            return None
        now = self.reactor.seconds()
        grant = self.grant
        token = c.get_param(params, c.PARAM_AUTHORIZATION_TOKEN)
        if isinstance(token, bytes):
            raw = parse_token_struct(token)
            if raw is None:
                return AuthError(SessionErrorCode.UNAUTHORIZED, "token aliases are not supported")
            try:
                grant = authorizer.verify(raw.decode("utf-8", "replace"), now)
            except AuthError as e:
                return e
        if grant is None:
            return AuthError(SessionErrorCode.UNAUTHORIZED, "an authorization token is required")
        if grant.expired(now):
            return AuthError(SessionErrorCode.EXPIRED_AUTH_TOKEN, "authorization token expired")
        if publish and not grant.may_publish(namespace):
            return AuthError(
                SessionErrorCode.UNAUTHORIZED, f"may not publish {format_namespace(namespace)}"
            )
        if not publish and not grant.may_subscribe(namespace):
            return AuthError(
                SessionErrorCode.UNAUTHORIZED,
                f"may not subscribe to {format_namespace(namespace)}",
            )
        return None

    def check(
        self, name: str, what: str, publish: bool, namespace: Namespace, params: list[c.Param]
    ) -> AuthError | None:
        """`denied`, with the denial logged (rate-limited) under ``what``."""
        error = self.denied(publish, namespace, params)
        if error is not None:
            self.log_denial(name, what, error)
        return error

    def log_denial(self, name: str, what: str, error: AuthError) -> None:
        if self.denials.should_log(f"{name} {what}", self.reactor.seconds()):
            _log.info(
                "denied {what} to {peer}: {reason} (more denials of it are not logged for a "
                "while)",
                what=what,
                peer=name,
                reason=error.reason,
            )

    def close(self) -> None:
        """The session is gone: no expiry to wait for."""
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
