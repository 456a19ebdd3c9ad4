"""Tests for moqrelay.auth (session layer helper, sans-IO): Token structs, paths,
grants, JWT verification and the denial log."""

# mypy: disallow-untyped-calls=False
# (twisted.trial's assertion methods are not annotated.)

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.trial.unittest import SynchronousTestCase

from moqrelay import auth
from moqrelay.auth import AuthError, Authorizer, DenialLog, Grant, redact
from moqrelay.wire.errors import ProtocolViolation, SessionErrorCode, SubscribeErrorCode

NOW = 1_800_000_000.0
SECRET = b"0123456789abcdef0123456789abcdef"

UNAUTHORIZED = SessionErrorCode.UNAUTHORIZED
EXPIRED = SessionErrorCode.EXPIRED_AUTH_TOKEN
MALFORMED = SessionErrorCode.MALFORMED_AUTH_TOKEN


@functools.cache
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@functools.cache
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: Any) -> bytes:
    data: bytes = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


def private_pem(key: Any) -> bytes:
    data: bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return data


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], payload: bytes, secret: bytes | None) -> str:
    """A JWT built by hand: HS256-signed with `secret`, or unsigned when it is None."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(payload)}"
    if secret is None:
        return signing_input + "."
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def hs256(claims: dict[str, Any], secret: bytes = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


class TokenStructTests(SynchronousTestCase):
    def assertMalformed(self, value: bytes) -> None:
        e = self.assertRaises(ProtocolViolation, auth.parse_token_struct, value)
        self.assertEqual(e.code, SessionErrorCode.MALFORMED_AUTH_TOKEN)

    def test_encode_is_use_value_type_0(self) -> None:
        self.assertEqual(auth.encode_token_struct(b"abc"), b"\x03\x00abc")

    def test_round_trip(self) -> None:
        for token in (b"", b"x", b"eyJ.a.b", bytes(range(256)) * 40):
            self.assertEqual(auth.parse_token_struct(auth.encode_token_struct(token)), token)

    def test_use_value_of_any_token_type(self) -> None:
        # Type 0x40 takes a two-byte varint; the value is everything after it.
        self.assertEqual(auth.parse_token_struct(b"\x03\x40\x40tok"), b"tok")
        decoded = auth.decode_token_struct(b"\x03\x40\x40tok")
        self.assertEqual(decoded, auth.TokenStruct(3, None, 0x40, b"tok"))

    def test_aliases_are_not_supported(self) -> None:
        self.assertIsNone(auth.parse_token_struct(b"\x00\x05"))  # DELETE alias 5
        self.assertIsNone(auth.parse_token_struct(b"\x02\x05"))  # USE_ALIAS alias 5
        self.assertIsNone(auth.parse_token_struct(b"\x01\x05\x00tok"))  # REGISTER
        self.assertEqual(
            auth.decode_token_struct(b"\x01\x05\x00tok"), auth.TokenStruct(1, 5, 0, b"tok")
        )
        self.assertEqual(auth.decode_token_struct(b"\x02\x07"), auth.TokenStruct(2, 7, None, None))

    def test_register_in_setup_is_use_value(self) -> None:
        self.assertEqual(auth.parse_token_struct(b"\x01\x05\x00tok", in_setup=True), b"tok")
        self.assertIsNone(auth.parse_token_struct(b"\x02\x05", in_setup=True))

    def test_malformed(self) -> None:
        for value in (
            b"",  # no alias type
            b"\x04\x00tok",  # unknown alias type
            b"\x40",  # truncated alias type varint
            b"\x03",  # USE_VALUE without a token type
            b"\x03\x80\x00",  # truncated token type varint
            b"\x01\x05",  # REGISTER without a token type
            b"\x00",  # DELETE without an alias
            b"\x00\x05x",  # DELETE with trailing bytes
            b"\x02\x05\x00",  # USE_ALIAS with trailing bytes
        ):
            self.assertMalformed(value)


class PathTests(SynchronousTestCase):
    def test_jwt_parameter(self) -> None:
        self.assertEqual(auth.token_from_path("/moq?jwt=a.b.c"), "a.b.c")
        self.assertEqual(auth.token_from_path("/moq?x=1&jwt=a.b.c&y=2"), "a.b.c")
        self.assertEqual(auth.token_from_path("/?jwt=a%2Eb.c"), "a.b.c")
        self.assertEqual(auth.token_from_path("https://relay:4443/moq?jwt=t#frag"), "t")

    def test_absent_empty_or_repeated(self) -> None:
        for path in ("/moq", "/", "", "/moq?", "/moq?jwt=", "/moq?jwt", "/moq?token=t",
                     "/jwt=t", "/moq?jwt=a&jwt=b"):  # fmt: skip
            self.assertIsNone(auth.token_from_path(path), path)


class PrefixTests(SynchronousTestCase):
    def test_parse(self) -> None:
        self.assertEqual(auth.parse_prefix("live/a"), (b"live", b"a"))
        self.assertEqual(auth.parse_prefix("/live//a/"), (b"live", b"a"))
        self.assertEqual(auth.parse_prefix("caf\u00e9"), ("caf\u00e9".encode(),))
        self.assertEqual(auth.parse_prefix(""), ())
        self.assertEqual(auth.parse_prefix("/"), ())

    def test_field_limit(self) -> None:
        self.assertEqual(len(auth.parse_prefix("/".join("x" * 32))), 32)
        self.assertRaises(ValueError, auth.parse_prefix, "/".join("x" * 33))

    def test_format_inverts_parse(self) -> None:
        for text in ("", "live", "live/a/b"):
            self.assertEqual(auth.format_prefix(auth.parse_prefix(text)), text)


class GrantTests(SynchronousTestCase):
    def grant(self, *prefixes: str, expires: float | None = None) -> Grant:
        parsed = tuple(auth.parse_prefix(p) for p in prefixes)
        return Grant(publish=parsed, subscribe=(), expires=expires, subject="s")

    def test_exact(self) -> None:
        self.assertTrue(self.grant("live/a").may_publish((b"live", b"a")))

    def test_prefix(self) -> None:
        grant = self.grant("live")
        self.assertTrue(grant.may_publish((b"live", b"a")))
        self.assertTrue(grant.may_publish((b"live", b"a", b"b")))

    def test_not_a_prefix(self) -> None:
        grant = self.grant("live/a")
        self.assertFalse(grant.may_publish((b"live",)))  # shorter than the prefix
        self.assertFalse(grant.may_publish((b"live", b"ab")))  # fields, not characters
        self.assertFalse(grant.may_publish((b"other", b"a")))
        self.assertFalse(self.grant("live").may_publish((b"lively",)))

    def test_everything(self) -> None:
        grant = self.grant("")
        self.assertTrue(grant.may_publish((b"anything",)))
        self.assertTrue(grant.may_publish((b"a", b"b", b"c")))

    def test_nothing_granted(self) -> None:
        grant = self.grant()
        self.assertFalse(grant.may_publish((b"live",)))
        self.assertFalse(grant.may_subscribe((b"live",)))

    def test_publish_and_subscribe_are_separate(self) -> None:
        grant = Grant(publish=((b"up",),), subscribe=((b"down",),), expires=None, subject="")
        self.assertTrue(grant.may_publish((b"up",)))
        self.assertFalse(grant.may_subscribe((b"up",)))
        self.assertTrue(grant.may_subscribe((b"down",)))
        self.assertFalse(grant.may_publish((b"down",)))

    def test_several_prefixes(self) -> None:
        grant = self.grant("a", "b/c")
        self.assertTrue(grant.may_publish((b"a", b"x")))
        self.assertTrue(grant.may_publish((b"b", b"c")))
        self.assertFalse(grant.may_publish((b"b", b"d")))

    def test_expired(self) -> None:
        self.assertFalse(self.grant(expires=None).expired(NOW + 10**9))
        grant = self.grant(expires=NOW)
        self.assertFalse(grant.expired(NOW - 0.001))
        self.assertTrue(grant.expired(NOW))
        self.assertTrue(grant.expired(NOW + 1))


class AuthorizerTests(SynchronousTestCase):
    def assertRefused(self, authorizer: Authorizer, token: str, code: SessionErrorCode) -> None:
        e = self.assertRaises(AuthError, authorizer.verify, token, NOW)
        self.assertEqual(e.code, code, e.reason)

    def test_valid_hs256(self) -> None:
        token = hs256(
            {
                "moq_pub": ["live/a", ""],
                "moq_sub": ["live"],
                "exp": NOW + 60,
                "nbf": NOW - 1,
                "iat": NOW - 1,
                "sub": "alice",
            }
        )
        authorizer = Authorizer(SECRET)
        self.assertEqual(authorizer.algorithm, "HS256")
        grant = authorizer.verify(token, NOW)
        self.assertEqual(grant.publish, ((b"live", b"a"), ()))
        self.assertEqual(grant.subscribe, ((b"live",),))
        self.assertEqual(grant.expires, NOW + 60)
        self.assertEqual(grant.subject, "alice")

    def test_str_secret(self) -> None:
        grant = Authorizer(SECRET.decode()).verify(hs256({"moq_sub": ["x"]}), NOW)
        self.assertEqual(grant.subscribe, ((b"x",),))

    def test_minimal_claims(self) -> None:
        grant = Authorizer(SECRET).verify(hs256({}), NOW)
        self.assertEqual(grant, Grant(publish=(), subscribe=(), expires=None, subject=""))

    def test_valid_es256(self) -> None:
        token = jwt.encode({"moq_pub": ["a"], "exp": NOW + 5}, ec_key(), algorithm="ES256")
        authorizer = Authorizer(public_pem(ec_key()))
        self.assertEqual(authorizer.algorithm, "ES256")
        self.assertEqual(authorizer.verify(token, NOW).publish, ((b"a",),))

    def test_valid_rs256(self) -> None:
        token = jwt.encode({"moq_sub": ["a"]}, rsa_key(), algorithm="RS256")
        authorizer = Authorizer(public_pem(rsa_key()).decode())
        self.assertEqual(authorizer.algorithm, "RS256")
        self.assertEqual(authorizer.verify(token, NOW).subscribe, ((b"a",),))

    def test_expired(self) -> None:
        authorizer = Authorizer(SECRET)
        self.assertRefused(authorizer, hs256({"exp": NOW - 1}), EXPIRED)
        self.assertRefused(authorizer, hs256({"exp": NOW}), EXPIRED)
        self.assertEqual(authorizer.verify(hs256({"exp": NOW + 1}), NOW).expires, NOW + 1)

    def test_not_yet_valid(self) -> None:
        authorizer = Authorizer(SECRET)
        self.assertRefused(authorizer, hs256({"nbf": NOW + 1}), UNAUTHORIZED)
        self.assertEqual(authorizer.verify(hs256({"nbf": NOW}), NOW).expires, None)

    def test_future_iat_is_accepted(self) -> None:
        self.assertEqual(Authorizer(SECRET).verify(hs256({"iat": NOW + 60}), NOW).subject, "")

    def test_leeway(self) -> None:
        authorizer = Authorizer(SECRET, leeway=10)
        grant = authorizer.verify(hs256({"exp": NOW - 5, "nbf": NOW + 5}), NOW)
        self.assertEqual(grant.expires, NOW + 5)
        self.assertFalse(grant.expired(NOW))
        self.assertRefused(authorizer, hs256({"exp": NOW - 10}), EXPIRED)
        self.assertRefused(authorizer, hs256({"nbf": NOW + 11}), UNAUTHORIZED)
        self.assertRaises(ValueError, Authorizer, SECRET, leeway=-1)

    def test_wrong_key(self) -> None:
        token = hs256({"moq_pub": ["a"]}, secret=b"x" * 32)
        self.assertRefused(Authorizer(SECRET), token, UNAUTHORIZED)
        other = ec.generate_private_key(ec.SECP256R1())
        es_token = jwt.encode({"moq_pub": ["a"]}, other, algorithm="ES256")
        self.assertRefused(Authorizer(public_pem(ec_key())), es_token, UNAUTHORIZED)

    def test_tampered_claims(self) -> None:
        header, _, signature = hs256({"moq_pub": ["a"]}).split(".")
        forged = f"{header}.{b64(json.dumps({'moq_pub': ['']}).encode())}.{signature}"
        self.assertRefused(Authorizer(SECRET), forged, UNAUTHORIZED)

    def test_alg_none_is_refused(self) -> None:
        claims = json.dumps({"moq_pub": [""]}).encode()
        for alg in ("none", "None", "NONE"):
            token = hand_made({"alg": alg, "typ": "JWT"}, claims, None)
            self.assertRefused(Authorizer(SECRET), token, UNAUTHORIZED)
            self.assertRefused(Authorizer(public_pem(ec_key())), token, UNAUTHORIZED)

    def test_wrong_algorithm(self) -> None:
        es_token = jwt.encode({"moq_pub": [""]}, ec_key(), algorithm="ES256")
        self.assertRefused(Authorizer(SECRET), es_token, UNAUTHORIZED)
        self.assertRefused(Authorizer(public_pem(rsa_key())), es_token, UNAUTHORIZED)
        hs384 = jwt.encode({"moq_pub": [""]}, SECRET * 2, algorithm="HS384")
        self.assertRefused(Authorizer(SECRET), hs384, UNAUTHORIZED)

    def test_public_key_used_as_hmac_secret_is_refused(self) -> None:
        # The classic key confusion: an HS256 token signed with the public key's PEM.
        pem = public_pem(ec_key())
        claims = json.dumps({"moq_pub": [""]}).encode()
        token = hand_made({"alg": "HS256", "typ": "JWT"}, claims, pem)
        self.assertRefused(Authorizer(pem), token, UNAUTHORIZED)

    def test_malformed_tokens(self) -> None:
        authorizer = Authorizer(SECRET)
        for token in ("", "garbage", "a.b.c", "a.b", "\u00e9.\u00e9.\u00e9", "x" * 9000):
            self.assertRefused(authorizer, token, MALFORMED)

    def test_signed_garbage_payloads(self) -> None:
        header = {"alg": "HS256", "typ": "JWT"}
        for payload in (b"not json", b"[1, 2]", b'"claims"'):
            self.assertRefused(Authorizer(SECRET), hand_made(header, payload, SECRET), MALFORMED)

    def test_malformed_claims(self) -> None:
        authorizer = Authorizer(SECRET)
        for claims in (
            {"moq_pub": "live"},
            {"moq_pub": ["live", 3]},
            {"moq_sub": {"live": True}},
            {"moq_sub": ["/".join("x" * 33)]},
            {"moq_sub": ["a"] * (auth.MAX_PREFIXES + 1)},
            {"exp": "tomorrow"},
            {"exp": True},
            {"nbf": [1]},
            {"iat": "now"},
            {"sub": 42},
        ):
            self.assertRefused(authorizer, hs256(claims), MALFORMED)

    def test_non_finite_time(self) -> None:
        payload = b'{"exp": NaN}'
        token = hand_made({"alg": "HS256", "typ": "JWT"}, payload, SECRET)
        self.assertRefused(Authorizer(SECRET), token, MALFORMED)

    def test_audience_and_issuer(self) -> None:
        token = hs256({"aud": "relay-1", "iss": "issuer", "moq_sub": ["a"]})
        checked = Authorizer(SECRET, audience="relay-1", issuer="issuer")
        self.assertEqual(checked.verify(token, NOW).subscribe, ((b"a",),))
        self.assertRefused(Authorizer(SECRET, audience="relay-2"), token, UNAUTHORIZED)
        self.assertRefused(Authorizer(SECRET, issuer="other"), token, UNAUTHORIZED)
        # An audience-bound token is not accepted by a relay that has no audience.
        self.assertRefused(Authorizer(SECRET), token, UNAUTHORIZED)
        self.assertRefused(checked, hs256({"moq_sub": ["a"]}), UNAUTHORIZED)
        self.assertRefused(checked, hs256({"aud": "relay-1"}), UNAUTHORIZED)

    def test_unusable_keys(self) -> None:
        self.assertRaises(ValueError, Authorizer, b"short")
        self.assertRaises(ValueError, Authorizer, SECRET[:31])
        self.assertRaises(ValueError, Authorizer, private_pem(ec_key()))
        self.assertRaises(ValueError, Authorizer, b"-----BEGIN PUBLIC KEY-----\nnope\n")
        p384 = ec.generate_private_key(ec.SECP384R1())
        self.assertRaises(ValueError, Authorizer, public_pem(p384))
        small_rsa = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        self.assertRaises(ValueError, Authorizer, public_pem(small_rsa))

    def test_from_file(self) -> None:
        secret_path = self.mktemp()
        with open(secret_path, "wb") as f:
            f.write(SECRET + b"\n")
        authorizer = Authorizer.from_file(secret_path)
        self.assertEqual(authorizer.verify(hs256({"sub": "a"}), NOW).subject, "a")
        pem_path = self.mktemp()
        with open(pem_path, "wb") as f:
            f.write(public_pem(ec_key()))
        self.assertEqual(Authorizer.from_file(pem_path).algorithm, "ES256")
        self.assertRaises(OSError, Authorizer.from_file, self.mktemp())

    def test_error_codes(self) -> None:
        e = AuthError(EXPIRED, "token expired")
        self.assertEqual(str(e), "token expired (EXPIRED_AUTH_TOKEN)")
        self.assertNotIsInstance(e, ProtocolViolation)
        self.assertEqual(AuthError(UNAUTHORIZED, "").request_code, SubscribeErrorCode.UNAUTHORIZED)
        self.assertEqual(
            AuthError(EXPIRED, "").request_code, SubscribeErrorCode.EXPIRED_AUTH_TOKEN
        )
        self.assertEqual(
            AuthError(MALFORMED, "").request_code, SubscribeErrorCode.MALFORMED_AUTH_TOKEN
        )


class DenialLogTests(SynchronousTestCase):
    def test_one_line_per_key_per_interval(self) -> None:
        log = DenialLog(interval=60)
        self.assertTrue(log.should_log("a", NOW))
        self.assertFalse(log.should_log("a", NOW + 1))
        self.assertFalse(log.should_log("a", NOW + 59.9))
        self.assertTrue(log.should_log("a", NOW + 60))
        self.assertFalse(log.should_log("a", NOW + 61))

    def test_default_interval(self) -> None:
        log = DenialLog()
        self.assertTrue(log.should_log("a", NOW))
        self.assertFalse(log.should_log("a", NOW + 59))
        self.assertTrue(log.should_log("a", NOW + 60))

    def test_keys_are_independent(self) -> None:
        log = DenialLog()
        self.assertTrue(log.should_log("a", NOW))
        self.assertTrue(log.should_log("b", NOW))
        self.assertFalse(log.should_log("a", NOW))
        self.assertFalse(log.should_log("b", NOW))

    def test_memory_bound(self) -> None:
        log = DenialLog(max_keys=3)
        for i, key in enumerate("abcd"):
            self.assertTrue(log.should_log(key, NOW + i))
        self.assertEqual(len(log), 3)
        # "a" was forgotten, so it logs again; "d" is still remembered.
        self.assertFalse(log.should_log("d", NOW + 4))
        self.assertTrue(log.should_log("a", NOW + 4))
        self.assertEqual(len(log), 3)
        # Logging "a" again made "b" the oldest.
        self.assertTrue(log.should_log("b", NOW + 4))

    def test_default_memory_bound(self) -> None:
        log = DenialLog()
        for i in range(5000):
            log.should_log(f"peer-{i}", NOW)
        self.assertEqual(len(log), 1000)
        self.assertFalse(log.should_log("peer-4999", NOW))
        self.assertTrue(log.should_log("peer-0", NOW))

    def test_clock_stepping_back(self) -> None:
        log = DenialLog()
        self.assertTrue(log.should_log("a", NOW))
        self.assertTrue(log.should_log("a", NOW - 3600))
        self.assertFalse(log.should_log("a", NOW - 3599))

    def test_bad_arguments(self) -> None:
        self.assertRaises(ValueError, DenialLog, interval=0)
        self.assertRaises(ValueError, DenialLog, max_keys=0)


class RedactTests(SynchronousTestCase):
    def test_every_jwt_value_is_hidden_and_the_rest_kept(self) -> None:
        self.assertEqual(redact("/moq?a=1&jwt=eyJ.x.y&b=2"), "/moq?a=1&jwt=[redacted]&b=2")
        self.assertEqual(
            redact('GET /f?JWT=abc HTTP/1.1" wss://h/?jwt=def'),
            'GET /f?JWT=[redacted] HTTP/1.1" wss://h/?jwt=[redacted]',
        )
        self.assertEqual(redact("/moq?notjwt=1"), "/moq?notjwt=1")
