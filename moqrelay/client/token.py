"""Client layer: the moqrelay-token command, which signs authorization tokens (JWT).

``moqrelay-token --key-file KEY --publish live/a --subscribe live --ttl 3600``
prints a token for `moqrelay.auth.Authorizer` (claims and algorithms are described
there). The key is a shared secret (HS256: ``--key`` or a file holding it) or a PEM
private key (ES256 on P-256, RS256 with RSA); the relay gets the matching public key.
Clients pass the token in the URL (``?jwt=TOKEN``) or in an AUTHORIZATION_TOKEN
parameter.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from moqrelay.auth import (
    CLAIM_PUBLISH,
    CLAIM_SUBSCRIBE,
    MIN_RSA_BITS,
    MIN_SECRET_BYTES,
    format_prefix,
    is_pem,
    parse_prefix,
    read_key_file,
)

__all__ = ["DEFAULT_TTL", "load_signing_key", "main", "make_token", "token_parser"]

DEFAULT_TTL = 3600.0


def load_signing_key(key: bytes | str) -> tuple[str, Any]:
    """``(algorithm, key object)`` for a shared secret or a PEM private key.

    ValueError for a short secret, a public or encrypted key, or an unsupported key.
    """
    data = key.encode() if isinstance(key, str) else bytes(key)
    if not is_pem(data):
        if len(data) < MIN_SECRET_BYTES:
            raise ValueError(
                f"an HS256 secret needs at least {MIN_SECRET_BYTES} bytes, not {len(data)}"
            )
        return "HS256", data
    if b"PRIVATE KEY" not in data:
        raise ValueError("signing needs the private key, not a public key or certificate")
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError("encrypted private keys are not supported") from None
    except ValueError as e:
        raise ValueError(f"not a PEM private key: {e}") from None
    if isinstance(private, ec.EllipticCurvePrivateKey):
        if not isinstance(private.curve, ec.SECP256R1):
            raise ValueError(f"ES256 needs a P-256 key, not {private.curve.name}")
        return "ES256", private
    if isinstance(private, rsa.RSAPrivateKey):
        if private.key_size < MIN_RSA_BITS:
            raise ValueError(f"RS256 needs at least {MIN_RSA_BITS} bits, not {private.key_size}")
        return "RS256", private
    raise ValueError(f"unsupported private key type {type(private).__name__}")


def make_token(
    key: bytes | str,
    *,
    now: float,
    publish: Sequence[str] = (),
    subscribe: Sequence[str] = (),
    ttl: float = DEFAULT_TTL,
    subject: str | None = None,
    audience: str | None = None,
    issuer: str | None = None,
) -> str:
    """Sign a token granting the `publish` and `subscribe` prefixes (``"a/b"``, ``""`` for
    everything) from `now` for `ttl` seconds. ValueError for a bad key, prefix or ttl."""
    if not ttl > 0 or not math.isfinite(ttl):
        raise ValueError("the ttl must be a positive number of seconds")
    algorithm, signing_key = load_signing_key(key)
    issued = math.floor(now)
    claims: dict[str, Any] = {
        "iat": issued,
        "exp": issued + math.ceil(ttl),
        CLAIM_PUBLISH: [format_prefix(parse_prefix(text)) for text in publish],
        CLAIM_SUBSCRIBE: [format_prefix(parse_prefix(text)) for text in subscribe],
    }
    if subject is not None:
        claims["sub"] = subject
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    return jwt.encode(claims, signing_key, algorithm=algorithm)


def _ttl(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError("the ttl must be positive")
    return value


def token_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moqrelay-token",
        description="Sign an authorization token (JWT) for a moqrelay relay and print it.",
        epilog="A prefix is a namespace written a/b/c; it covers every namespace that starts "
        'with those fields. "" (or /) covers everything.',
    )
    keys = parser.add_mutually_exclusive_group(required=True)
    keys.add_argument(
        "--key",
        help="HS256 shared secret, at least 32 bytes (visible to other local users in "
        "the process list: prefer --key-file)",
    )
    keys.add_argument(
        "--key-file",
        metavar="PATH",
        help="PEM private key (P-256 -> ES256, RSA -> RS256) or a file holding the HS256 secret",
    )
    parser.add_argument(
        "--publish",
        action="extend",
        nargs="+",
        default=[],
        metavar="PREFIX",
        help="namespace prefix the bearer may publish (repeatable)",
    )
    parser.add_argument(
        "--subscribe",
        action="extend",
        nargs="+",
        default=[],
        metavar="PREFIX",
        help="namespace prefix the bearer may subscribe to (repeatable)",
    )
    parser.add_argument(
        "--ttl",
        type=_ttl,
        default=DEFAULT_TTL,
        metavar="SECONDS",
        help=f"lifetime of the token (default {DEFAULT_TTL:g})",
    )
    parser.add_argument("--subject", metavar="NAME", help="who the token is for (in logs)")
    parser.add_argument("--audience", help="aud claim (the relay must be given the same)")
    parser.add_argument("--issuer", help="iss claim (the relay must be given the same)")
    return parser


def main(
    argv: Sequence[str] | None = None, *, out: TextIO | None = None, now: float | None = None
) -> None:
    """Entry point of ``moqrelay-token``: print one signed token (exit 2 on bad input)."""
    parser = token_parser()
    args = parser.parse_args(argv)
    if not args.publish and not args.subscribe:
        parser.error("grant something: give --publish and/or --subscribe")
    if args.key is not None:
        key: bytes = args.key.encode()
    else:
        try:
            key = read_key_file(args.key_file)
        except OSError as e:
            parser.error(f"cannot read {args.key_file}: {e.strerror}")
    try:
        token = make_token(
            key,
            now=time.time() if now is None else now,
            publish=args.publish,
            subscribe=args.subscribe,
            ttl=args.ttl,
            subject=args.subject,
            audience=args.audience,
            issuer=args.issuer,
        )
    except ValueError as e:
        parser.error(str(e))
    print(token, file=sys.stdout if out is None else out)
