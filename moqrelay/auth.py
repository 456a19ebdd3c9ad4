"""Session layer helper (sans-IO): authorization tokens (JWT) and what they grant.

A relay that requires authorization takes a JSON Web Token from the request path
(``/moq?jwt=...``, `token_from_path`) or from an AUTHORIZATION_TOKEN parameter
(`parse_token_struct`), checks it with an `Authorizer`, and gets a `Grant`: the
namespace prefixes the bearer may publish and subscribe to, and when that ends.
Nothing here does I/O or reads a clock except `Authorizer.from_file`, which reads
a key file once at start-up; every time check takes ``now`` (seconds since the epoch).

Tokens
------
Signed JWTs (RFC 7519) with these claims:

- ``moq_pub``: list of namespace prefixes the bearer may publish (PUBLISH_NAMESPACE,
  PUBLISH), each written ``"a/b/c"`` and mapped to ``(b"a", b"b", b"c")`` as the
  clients map namespaces; ``""`` (or ``"/"``) is the empty prefix, i.e. everything.
- ``moq_sub``: the same for subscribing (SUBSCRIBE, SUBSCRIBE_NAMESPACE, FETCH,
  TRACK_STATUS).
- ``exp``, ``nbf``, ``iat``: the standard times (``exp`` and ``nbf`` are enforced,
  with `Authorizer`'s leeway; ``iat`` is only type-checked).
- ``sub``: the subject, for logs only.
- ``aud`` and ``iss`` are checked when the `Authorizer` is given an audience or
  issuer; a token with an ``aud`` claim is refused by an `Authorizer` without one.

Keys and algorithms
-------------------
Each key verifies exactly one algorithm, chosen by the kind of key, so a token can
never pick its own (``"none"`` and every other algorithm are refused):

- a shared secret of at least 32 bytes -> HS256;
- a PEM public key on P-256 -> ES256;
- a PEM RSA public key of at least 2048 bits -> RS256.

A private key is refused on the relay: it only ever needs the public half.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from moqrelay.wire.control import MAX_NAMESPACE_FIELDS, Namespace
from moqrelay.wire.errors import ProtocolViolation, SessionErrorCode
from moqrelay.wire.varint import NeedMoreData, Reader, encode_varint

__all__ = [
    "ALIAS_DELETE",
    "ALIAS_REGISTER",
    "ALIAS_USE_ALIAS",
    "ALIAS_USE_VALUE",
    "CLAIM_PUBLISH",
    "CLAIM_SUBSCRIBE",
    "MAX_PREFIXES",
    "MAX_TOKEN_BYTES",
    "MIN_RSA_BITS",
    "MIN_SECRET_BYTES",
    "REDACTED",
    "AuthError",
    "Authorizer",
    "DenialLog",
    "Grant",
    "TokenStruct",
    "decode_token_struct",
    "encode_token_struct",
    "format_prefix",
    "is_pem",
    "parse_prefix",
    "parse_token_struct",
    "read_key_file",
    "redact",
    "token_from_path",
]

# Alias Types of the Token struct (draft-14 "AUTHORIZATION TOKEN"; reference §6.2).
ALIAS_DELETE = 0x0
ALIAS_REGISTER = 0x1
ALIAS_USE_ALIAS = 0x2
ALIAS_USE_VALUE = 0x3

CLAIM_PUBLISH = "moq_pub"
CLAIM_SUBSCRIBE = "moq_sub"

MAX_TOKEN_BYTES = 8192
MAX_PREFIXES = 256
MIN_SECRET_BYTES = 32
MIN_RSA_BITS = 2048

_REQUEST_CODES = {
    SessionErrorCode.UNAUTHORIZED: 0x1,
    SessionErrorCode.MALFORMED_AUTH_TOKEN: 0x10,
    SessionErrorCode.EXPIRED_AUTH_TOKEN: 0x12,
}


# Token struct -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenStruct:
    """One decoded Token struct: `alias` is None for USE_VALUE, `token_type` and
    `value` are None for DELETE and USE_ALIAS."""

    alias_type: int
    alias: int | None
    token_type: int | None
    value: bytes | None


def decode_token_struct(value: bytes) -> TokenStruct:
    """Decode the value of an AUTHORIZATION_TOKEN parameter (every alias type).

    Raises ``ProtocolViolation(..., MALFORMED_AUTH_TOKEN)`` for an unknown alias type,
    a truncated struct or bytes after an alias-only struct: the code the draft's error
    table gives for a bad Token serialization (its parameter text says
    KEY_VALUE_FORMATTING_ERROR instead).
    """
    r = Reader(value)
    try:
        alias_type = r.varint()
        if alias_type in (ALIAS_DELETE, ALIAS_USE_ALIAS):
            alias = r.varint()
            if not r.at_end():
                raise ProtocolViolation(
                    f"{r.remaining()} bytes after the alias of an auth token",
                    SessionErrorCode.MALFORMED_AUTH_TOKEN,
                )
            return TokenStruct(alias_type, alias, None, None)
        if alias_type == ALIAS_REGISTER:
            alias = r.varint()
            return TokenStruct(alias_type, alias, r.varint(), r.rest())
        if alias_type == ALIAS_USE_VALUE:
            return TokenStruct(alias_type, None, r.varint(), r.rest())
    except NeedMoreData:
        raise ProtocolViolation(
            "truncated auth token", SessionErrorCode.MALFORMED_AUTH_TOKEN
        ) from None
    raise ProtocolViolation(
        f"unknown auth token alias type {alias_type}", SessionErrorCode.MALFORMED_AUTH_TOKEN
    )


def parse_token_struct(value: bytes, *, in_setup: bool = False) -> bytes | None:
    """The Token Value carried by an AUTHORIZATION_TOKEN parameter, or None.

    Only USE_VALUE (alias type 3) carries a usable value: token aliases are not
    supported, as the relay never offers MAX_AUTH_TOKEN_CACHE_SIZE (so its peers'
    cache size is the default 0). For DELETE, USE_ALIAS and REGISTER this returns
    None; the caller answers them (draft-14: REGISTER beyond the cache size is
    AUTH_TOKEN_CACHE_OVERFLOW, USE_ALIAS of an unknown alias UNKNOWN_AUTH_TOKEN_ALIAS).
    In CLIENT_SETUP (``in_setup=True``) the draft says a REGISTER that exceeds the
    cache must be treated as USE_VALUE, so its value is returned.

    The Token Type is not checked (0, "negotiated out of band", is what clients send);
    the `Authorizer` refuses a value that is not a JWT. A malformed struct raises
    ``ProtocolViolation(..., MALFORMED_AUTH_TOKEN)``.
    """
    token = decode_token_struct(value)
    if token.alias_type == ALIAS_USE_VALUE or (in_setup and token.alias_type == ALIAS_REGISTER):
        return token.value
    return None


def encode_token_struct(token: bytes) -> bytes:
    """A USE_VALUE Token struct of Token Type 0 carrying `token`."""
    return encode_varint(ALIAS_USE_VALUE) + encode_varint(0) + token


def token_from_path(path: str) -> str | None:
    """The ``jwt`` query parameter of a request path such as ``/moq?jwt=...``.

    None when it is absent or empty, and when it is repeated: a repeated parameter is
    ambiguous (a proxy and the relay could each read a different one), so it is ignored.
    """
    values = parse_qs(urlsplit(path).query, keep_blank_values=True).get("jwt", [])
    if len(values) != 1 or not values[0]:
        return None
    return values[0]


_JWT_VALUE = re.compile(r"(?i)([?&;]jwt=)[^&#;\s\"']*")
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """``text`` (a path, a URL, a log line) with every ``jwt=`` query value hidden.

    Anyone who reads a log could replay a token found in it; every path or URL the
    relay logs goes through here first.
    """
    return _JWT_VALUE.sub(lambda m: m.group(1) + REDACTED, text)


# Grants -------------------------------------------------------------------------------


def parse_prefix(text: str) -> Namespace:
    """``"a/b/c"`` -> ``(b"a", b"b", b"c")``; ``""`` and ``"/"`` -> ``()`` (everything).

    Empty fields are skipped, like the clients' namespace arguments. ValueError when
    the prefix has more fields than a namespace may have.
    """
    fields = tuple(part.encode() for part in text.strip("/").split("/") if part)
    if len(fields) > MAX_NAMESPACE_FIELDS:
        raise ValueError(f"namespace prefix {text!r} has {len(fields)} fields")
    return fields


def format_prefix(prefix: Namespace) -> str:
    """The claim form of a prefix: the inverse of `parse_prefix` (``()`` -> ``""``)."""
    return "/".join(part.decode() for part in prefix)


def _covered(prefixes: tuple[Namespace, ...], namespace: Namespace) -> bool:
    return any(namespace[: len(prefix)] == prefix for prefix in prefixes)


@dataclass(frozen=True)
class Grant:
    """What one verified token allows.

    A namespace is allowed when one of the granted prefixes is a prefix of it (field
    by field: ``("live",)`` covers ``("live", "a")`` but not ``("lively",)``); the empty
    prefix ``()`` covers everything. `expires` is the instant (seconds since the epoch,
    leeway included) from which the grant no longer holds, None if it never expires.
    """

    publish: tuple[Namespace, ...]
    subscribe: tuple[Namespace, ...]
    expires: float | None
    subject: str

    def may_publish(self, namespace: Namespace) -> bool:
        """May the bearer announce or publish in `namespace`?"""
        return _covered(self.publish, namespace)

    def may_subscribe(self, namespace: Namespace) -> bool:
        """May the bearer subscribe to, fetch from or ask the status of `namespace`?"""
        return _covered(self.subscribe, namespace)

    def expired(self, now: float) -> bool:
        """Has the grant ended at `now`?"""
        return self.expires is not None and now >= self.expires


# Verification -------------------------------------------------------------------------


class AuthError(Exception):
    """A token was refused: `code` is the session error code the draft names
    (UNAUTHORIZED, EXPIRED_AUTH_TOKEN or MALFORMED_AUTH_TOKEN), `reason` a short phrase.

    Not a `ProtocolViolation`: refusing a token in a request rejects that request only.
    """

    code: SessionErrorCode
    reason: str

    def __init__(self, code: SessionErrorCode, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    @property
    def request_code(self) -> int:
        """The same refusal as a request error code (SUBSCRIBE_ERROR, FETCH_ERROR,
        PUBLISH_NAMESPACE_ERROR, SUBSCRIBE_NAMESPACE_ERROR, TRACK_STATUS_ERROR): 0x1,
        0x12 or 0x10. PUBLISH_ERROR has only UNAUTHORIZED (0x1)."""
        return _REQUEST_CODES[self.code]

    def __str__(self) -> str:
        return f"{self.reason} ({self.code.name})"


def _malformed(reason: str) -> AuthError:
    return AuthError(SessionErrorCode.MALFORMED_AUTH_TOKEN, reason)


def _unauthorized(reason: str) -> AuthError:
    return AuthError(SessionErrorCode.UNAUTHORIZED, reason)


def is_pem(data: bytes) -> bool:
    """Does `data` look like a PEM block (a key) rather than a shared secret?"""
    return data.lstrip().startswith(b"-----BEGIN ")


def read_key_file(path: str) -> bytes:
    """The bytes of a key file: PEM as it is, a shared secret without its trailing
    newline. OSError if it cannot be read."""
    with open(path, "rb") as f:
        data = f.read()
    return data if is_pem(data) else data.rstrip(b"\r\n")


def _time_claim(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _malformed(f"claim {name!r} is not a number")
    if not math.isfinite(value):
        raise _malformed(f"claim {name!r} is not finite")
    return float(value)


def _prefix_claim(claims: Mapping[str, Any], name: str) -> tuple[Namespace, ...]:
    value = claims.get(name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _malformed(f"claim {name!r} is not a list of strings")
    if len(value) > MAX_PREFIXES:
        raise _malformed(f"claim {name!r} has {len(value)} prefixes")
    try:
        return tuple(parse_prefix(item) for item in value)
    except ValueError as e:
        raise _malformed(f"claim {name!r}: {e}") from None


class Authorizer:
    """Verifies tokens with one key (see the module docstring for keys and claims).

    `key` is a shared secret (``str`` is UTF-8 encoded) or a PEM public key. `leeway`
    (seconds) tolerates clock skew on ``exp`` and ``nbf``. `audience` and `issuer`,
    when given, must match the ``aud`` and ``iss`` claims. ValueError for an unusable
    key (too short, a private key, an unsupported curve or key type).
    """

    algorithm: str

    def __init__(
        self,
        key: bytes | str,
        *,
        leeway: float = 0.0,
        audience: str | None = None,
        issuer: str | None = None,
    ) -> None:
        data = key.encode() if isinstance(key, str) else bytes(key)
        if leeway < 0:
            raise ValueError("leeway must not be negative")
        self._leeway = leeway
        self._audience = audience
        self._issuer = issuer
        self._key: Any
        if not is_pem(data):
            if len(data) < MIN_SECRET_BYTES:
                raise ValueError(
                    f"an HS256 secret needs at least {MIN_SECRET_BYTES} bytes, not {len(data)}"
                )
            self.algorithm, self._key = "HS256", data
            return
        if b"PRIVATE KEY" in data:
            raise ValueError(
                "this is a private key: give the relay only the public key "
                "(openssl pkey -in KEY -pubout)"
            )
        try:
            public = serialization.load_pem_public_key(data)
        except ValueError as e:
            raise ValueError(f"not a PEM public key: {e}") from None
        if isinstance(public, ec.EllipticCurvePublicKey):
            if not isinstance(public.curve, ec.SECP256R1):
                raise ValueError(f"ES256 needs a P-256 key, not {public.curve.name}")
            self.algorithm = "ES256"
        elif isinstance(public, rsa.RSAPublicKey):
            if public.key_size < MIN_RSA_BITS:
                raise ValueError(
                    f"RS256 needs at least {MIN_RSA_BITS} bits, not {public.key_size}"
                )
            self.algorithm = "RS256"
        else:
            raise ValueError(f"unsupported public key type {type(public).__name__}")
        self._key = public

    @classmethod
    def from_file(
        cls,
        path: str,
        *,
        leeway: float = 0.0,
        audience: str | None = None,
        issuer: str | None = None,
    ) -> Authorizer:
        """Read the key from `path`: a PEM public key, or else a shared secret (its
        trailing newline is not part of the secret). OSError if it cannot be read."""
        return cls(read_key_file(path), leeway=leeway, audience=audience, issuer=issuer)

    def verify(self, token: str, now: float) -> Grant:
        """Check `token` at `now` and return what it grants, or raise `AuthError`.

        EXPIRED_AUTH_TOKEN when ``exp`` has passed; UNAUTHORIZED for a bad signature, a
        refused algorithm, a token not valid yet (``nbf``) or a missing or wrong audience
        or issuer;
        MALFORMED_AUTH_TOKEN when it is not a well-formed JWT or a claim has the wrong type.
        """
        if len(token) > MAX_TOKEN_BYTES:
            raise _malformed(f"token is {len(token)} bytes long")
        claims = self._decode(token)
        expires = _time_claim(claims, "exp")
        not_before = _time_claim(claims, "nbf")
        _time_claim(claims, "iat")
        if expires is not None and now >= expires + self._leeway:
            raise AuthError(SessionErrorCode.EXPIRED_AUTH_TOKEN, "token expired")
        if not_before is not None and now < not_before - self._leeway:
            raise _unauthorized("token not valid yet")
        subject = claims.get("sub", "")
        if not isinstance(subject, str):
            raise _malformed("claim 'sub' is not a string")
        return Grant(
            publish=_prefix_claim(claims, CLAIM_PUBLISH),
            subscribe=_prefix_claim(claims, CLAIM_SUBSCRIBE),
            expires=None if expires is None else expires + self._leeway,
            subject=subject,
        )

    def _decode(self, token: str) -> dict[str, Any]:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self.algorithm],
                audience=self._audience,
                issuer=self._issuer,
                # The times are checked against the injected `now` in verify().
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.InvalidAlgorithmError:
            raise _unauthorized("token algorithm not allowed") from None
        except jwt.InvalidSignatureError:
            raise _unauthorized("token signature does not verify") from None
        except (
            jwt.InvalidAudienceError,
            jwt.InvalidIssuerError,
            jwt.MissingRequiredClaimError,
        ) as e:
            # A missing or wrong aud or iss: a token for another relay or from another issuer.
            raise _unauthorized(f"token refused: {e}") from None
        except jwt.InvalidTokenError as e:
            raise _malformed(f"token malformed: {e}") from None
        return claims


# Denial logging -----------------------------------------------------------------------


class DenialLog:
    """Rate limit for denial log lines: one line per key per `interval` seconds.

    Remembers at most `max_keys` keys; when full, the key logged longest ago is
    forgotten (so it may log again at once). A clock that steps back lets a key log.
    """

    def __init__(self, interval: float = 60.0, max_keys: int = 1000) -> None:
        if interval <= 0 or max_keys <= 0:
            raise ValueError("interval and max_keys must be positive")
        self._interval = interval
        self._max_keys = max_keys
        self._last: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._last)

    def should_log(self, key: str, now: float) -> bool:
        """True when a denial for `key` may be logged at `now` (and remember that it was)."""
        last = self._last.get(key)
        if last is not None and 0 <= now - last < self._interval:
            return False
        self._last[key] = now
        self._last.move_to_end(key)
        while len(self._last) > self._max_keys:
            self._last.popitem(last=False)
        return True
