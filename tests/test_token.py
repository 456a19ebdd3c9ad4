"""Tests for moqrelay.client.token (client layer): the moqrelay-token command and
make_token, checked by round trips through moqrelay.auth.Authorizer.verify."""

# mypy: disallow-untyped-calls=False
# (twisted.trial's assertion methods are not annotated.)

from __future__ import annotations

import configparser
import contextlib
import functools
import importlib
import io
import os
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.trial.unittest import SynchronousTestCase

from moqrelay.auth import AuthError, Authorizer, Grant
from moqrelay.client import token
from moqrelay.wire.errors import SessionErrorCode

NOW = 1_800_000_000.0
SECRET = "0123456789abcdef0123456789abcdef"


@functools.cache
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@functools.cache
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_pem(key: Any, password: bytes | None = None) -> bytes:
    encryption: Any = (
        serialization.NoEncryption()
        if password is None
        else serialization.BestAvailableEncryption(password)
    )
    data: bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    return data


def public_pem(key: Any) -> bytes:
    data: bytes = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


class MakeTokenTests(SynchronousTestCase):
    def test_hs256_round_trip(self) -> None:
        signed = token.make_token(
            SECRET,
            now=NOW,
            publish=["live/a", "/b/"],
            subscribe=[""],
            ttl=60,
            subject="cam-1",
        )
        grant = Authorizer(SECRET).verify(signed, NOW + 59)
        self.assertEqual(
            grant,
            Grant(
                publish=((b"live", b"a"), (b"b",)),
                subscribe=((),),
                expires=NOW + 60,
                subject="cam-1",
            ),
        )
        e = self.assertRaises(AuthError, Authorizer(SECRET).verify, signed, NOW + 60)
        self.assertEqual(e.code, SessionErrorCode.EXPIRED_AUTH_TOKEN)

    def test_claims(self) -> None:
        signed = token.make_token(SECRET, now=NOW + 0.7, publish=["/x/y/"], ttl=0.5)
        claims = jwt.decode(
            signed,
            SECRET,
            algorithms=["HS256"],
            options={"verify_exp": False, "verify_iat": False},
        )
        self.assertEqual(
            claims, {"iat": int(NOW), "exp": int(NOW) + 1, "moq_pub": ["x/y"], "moq_sub": []}
        )
        self.assertEqual(jwt.get_unverified_header(signed)["alg"], "HS256")

    def test_es256_round_trip(self) -> None:
        signed = token.make_token(private_pem(ec_key()), now=NOW, subscribe=["live"])
        self.assertEqual(jwt.get_unverified_header(signed)["alg"], "ES256")
        grant = Authorizer(public_pem(ec_key())).verify(signed, NOW)
        self.assertEqual(grant.subscribe, ((b"live",),))
        self.assertEqual(grant.expires, NOW + token.DEFAULT_TTL)

    def test_rs256_round_trip(self) -> None:
        signed = token.make_token(private_pem(rsa_key()), now=NOW, publish=["a"])
        self.assertEqual(jwt.get_unverified_header(signed)["alg"], "RS256")
        self.assertEqual(Authorizer(public_pem(rsa_key())).verify(signed, NOW).publish, ((b"a",),))

    def test_audience_and_issuer(self) -> None:
        signed = token.make_token(SECRET, now=NOW, publish=["a"], audience="r1", issuer="me")
        grant = Authorizer(SECRET, audience="r1", issuer="me").verify(signed, NOW)
        self.assertEqual(grant.publish, ((b"a",),))
        self.assertRaises(AuthError, Authorizer(SECRET, audience="r2").verify, signed, NOW)

    def test_bad_input(self) -> None:
        self.assertRaises(ValueError, token.make_token, "short", now=NOW)
        self.assertRaises(ValueError, token.make_token, SECRET, now=NOW, ttl=0)
        self.assertRaises(ValueError, token.make_token, SECRET, now=NOW, ttl=float("inf"))
        too_deep = "/".join("x" * 33)
        self.assertRaises(ValueError, token.make_token, SECRET, now=NOW, publish=[too_deep])

    def test_unusable_signing_keys(self) -> None:
        for key in (
            public_pem(ec_key()),
            private_pem(ec_key(), password=b"secret"),
            private_pem(ec.generate_private_key(ec.SECP384R1())),
            private_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
            b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n",
        ):
            self.assertRaises(ValueError, token.load_signing_key, key)


class CommandTests(SynchronousTestCase):
    def run_command(self, *argv: str) -> str:
        out = io.StringIO()
        token.main(list(argv), out=out, now=NOW)
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 1)
        return lines[0]

    def fails(self, *argv: str) -> str:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            e = self.assertRaises(SystemExit, token.main, list(argv), out=io.StringIO(), now=NOW)
        self.assertEqual(e.code, 2)
        return err.getvalue()

    def write(self, data: bytes) -> str:
        path: str = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_key_round_trip(self) -> None:
        printed = self.run_command(
            "--key", SECRET, "--publish", "live/a", "live/b", "--subscribe", "x", "--ttl", "90"
        )
        grant = Authorizer(SECRET).verify(printed, NOW)
        self.assertEqual(grant.publish, ((b"live", b"a"), (b"live", b"b")))
        self.assertEqual(grant.subscribe, ((b"x",),))
        self.assertEqual(grant.expires, NOW + 90)
        self.assertEqual(grant.subject, "")

    def test_repeated_options_and_subject(self) -> None:
        printed = self.run_command(
            "--key", SECRET, "--publish", "a", "--publish", "b", "--subject", "alice"
        )
        grant = Authorizer(SECRET).verify(printed, NOW)
        self.assertEqual(grant.publish, ((b"a",), (b"b",)))
        self.assertEqual(grant.subscribe, ())
        self.assertEqual(grant.subject, "alice")

    def test_secret_key_file(self) -> None:
        path = self.write(SECRET.encode() + b"\n")
        printed = self.run_command("--key-file", path, "--subscribe", "")
        self.assertTrue(Authorizer.from_file(path).verify(printed, NOW).may_subscribe((b"z",)))

    def test_pem_key_file(self) -> None:
        path = self.write(private_pem(ec_key()))
        printed = self.run_command("--key-file", path, "--publish", "live")
        grant = Authorizer(public_pem(ec_key())).verify(printed, NOW)
        self.assertTrue(grant.may_publish((b"live", b"cam")))
        self.assertFalse(grant.may_subscribe((b"live", b"cam")))

    def test_audience_and_issuer(self) -> None:
        printed = self.run_command(
            "--key", SECRET, "--subscribe", "a", "--audience", "r1", "--issuer", "me"
        )
        grant = Authorizer(SECRET, audience="r1", issuer="me").verify(printed, NOW)
        self.assertEqual(grant.subscribe, ((b"a",),))

    def test_errors(self) -> None:
        self.assertIn("grant something", self.fails("--key", SECRET))
        self.assertIn("required", self.fails("--publish", "a"))
        self.assertIn("not allowed", self.fails("--key", SECRET, "--key-file", "x"))
        self.assertIn("32 bytes", self.fails("--key", "short", "--publish", "a"))
        self.assertIn("ttl", self.fails("--key", SECRET, "--publish", "a", "--ttl", "0"))
        self.assertIn("seconds", self.fails("--key", SECRET, "--publish", "a", "--ttl", "x"))
        self.assertIn("cannot read", self.fails("--key-file", self.mktemp(), "--publish", "a"))
        public = self.write(public_pem(ec_key()))
        self.assertIn("private key", self.fails("--key-file", public, "--publish", "a"))
        deep = "/".join("x" * 33)
        self.assertIn("33 fields", self.fails("--key", SECRET, "--publish", deep))

    def test_console_script(self) -> None:
        setup = configparser.ConfigParser()
        setup.read(os.path.join(os.path.dirname(__file__), os.pardir, "setup.cfg"))
        scripts = setup["options.entry_points"]["console_scripts"]
        entries: dict[str, str] = {}
        for line in scripts.strip().splitlines():
            name, _, target = line.partition("=")
            entries[name.strip()] = target.strip()
        module, _, name = entries["moqrelay-token"].partition(":")
        self.assertIs(getattr(importlib.import_module(module), name), token.main)
        requires = setup["options"]["install_requires"]
        self.assertIn("PyJWT[crypto]", requires)
