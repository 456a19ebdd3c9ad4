"""Tests for the operator files in etc/ (systemd unit, example configuration, README):
the example's options parse with the relay's own option parser, and the unit keeps
its sandboxing."""

# mypy: disallow-untyped-calls=False
# (twisted.trial's assertion methods are not annotated.)

from __future__ import annotations

import os
import re
import shlex

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.scripts._twistd_unix import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

from moqrelay import tap
from moqrelay.tls import generate_dev_chain

ETC = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "etc")
UNIT = os.path.join(ETC, "moqrelay.service")
EXAMPLE = os.path.join(ETC, "moqrelay.conf.example")
README = os.path.join(ETC, "README.md")
INSTALLED_CONF = "/etc/moqrelay/moqrelay.conf"
CERT_PATH = "/etc/moqrelay/fullchain.pem"
TOKEN_KEY_PATH = "/etc/moqrelay/token-public.pem"
KEY_PATH = "/etc/moqrelay/key.pem"

_VARIABLE = re.compile(r"\$\{(\w+)\}")


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections of a systemd unit file: each key maps to its values in order."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        if current is None or "=" not in line:
            raise ValueError(f"not a unit file line: {raw!r}")
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def parse_environment_file(text: str) -> dict[str, str]:
    """NAME=value lines, as systemd's EnvironmentFile= reads them (no quoting used)."""
    env: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        name, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_]\w*", name.strip()):
            raise ValueError(f"not an environment line: {raw!r}")
        if value.strip()[:1] in ("'", '"') or "\\" in value:
            raise ValueError(f"keep the example unquoted: {raw!r}")
        env[name.strip()] = value.strip()
    return env


def expand_command(command: str, env: dict[str, str]) -> list[str]:
    """Expand a systemd command line: a word that is exactly ``$NAME`` becomes the value
    split on whitespace (no words if empty); ``${NAME}`` is replaced inside its word."""
    words: list[str] = []
    for word in shlex.split(command):
        if word.startswith("$") and re.fullmatch(r"\$\w+", word):
            words.extend(env[word[1:]].split())
        else:
            words.append(_VARIABLE.sub(lambda m: env[m.group(1)], word))
    return words


class EtcTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.unit = parse_unit(read(UNIT))
        self.service = self.unit["Service"]
        self.env = parse_environment_file(read(EXAMPLE))
        chain = generate_dev_chain()
        self.cert = self.mktemp()
        self.key = self.mktemp()
        with open(self.cert, "wb") as f:
            f.write(chain.cert_pem)
        with open(self.key, "wb") as f:
            f.write(chain.key_pem)
        self.token_key = self.mktemp()
        public = ec.generate_private_key(ec.SECP256R1()).public_key()
        with open(self.token_key, "wb") as f:
            f.write(
                public.public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )

    def one(self, key: str) -> str:
        values = self.service.get(key, [])
        self.assertEqual(len(values), 1, f"{key}= should appear once in the unit")
        return values[0]

    def command(self) -> list[str]:
        """ExecStart expanded with the example configuration, with the development
        certificate in place of the installed paths (which must be the documented ones)."""
        words = expand_command(self.one("ExecStart"), self.env)
        replaced = {
            "--tls-cert": (CERT_PATH, self.cert),
            "--tls-key": (KEY_PATH, self.key),
            "--auth-key": (TOKEN_KEY_PATH, self.token_key),
        }
        for i, word in enumerate(words[:-1]):
            if word in replaced:
                installed, temporary = replaced[word]
                self.assertEqual(words[i + 1], installed)
                words[i + 1] = temporary
        return words

    def relay_arguments(self) -> list[str]:
        words = self.command()
        return words[words.index("moqrelay") + 1 :]

    def test_example_parses_with_the_relay_options(self) -> None:
        options = tap.Options()
        options.parseOptions(self.relay_arguments())
        self.assertEqual(options["bind-address"], ("::", 443))
        self.assertEqual(len(options["chains"]), 1)
        self.assertEqual(options["drain-timeout"], 5.0)
        self.assertFalse(options["dev"])
        self.assertIsNotNone(options["authorizer"])
        self.assertEqual(options["allowed-origins"], ["https://player.example.net"])

    def test_example_limits_are_the_defaults(self) -> None:
        given = tap.Options()
        given.parseOptions(self.relay_arguments())
        defaults = tap.Options()
        defaults.parseOptions(["--tls-cert", self.cert, "--tls-key", self.key])
        limits = self.env["MOQRELAY_LIMITS"].split()[::2]
        self.assertTrue(limits)
        for flag in limits:
            name = flag.removeprefix("--")
            self.assertEqual(given[name], defaults[name], name)

    def test_whole_command_parses_with_twistd(self) -> None:
        words = self.command()
        self.assertEqual(os.path.basename(words[0]), "twistd")
        config = ServerOptions()
        config.parseOptions(words[1:])
        self.assertTrue(config["nodaemon"])
        self.assertEqual(config["pidfile"], "")
        self.assertEqual(config["logfile"], "-")
        self.assertEqual(config.subCommand, "moqrelay")
        self.assertEqual(config.subOptions["bind-address"], ("::", 443))

    def test_every_option_is_in_the_example(self) -> None:
        text = read(EXAMPLE)
        names = {name.rstrip("=") for name in tap.Options().longOpt} - {"help", "version"}
        self.assertIn("bind", names)
        missing = sorted(name for name in names if f"--{name}" not in text)
        self.assertEqual(missing, [], "options missing from etc/moqrelay.conf.example")

    def test_unit_reads_the_example(self) -> None:
        self.assertEqual(self.one("EnvironmentFile"), INSTALLED_CONF)
        self.assertIn(INSTALLED_CONF, read(README))
        used = set(_VARIABLE.findall(self.one("ExecStart")))
        used |= set(re.findall(r"\$(\w+)", self.one("ExecStart")))
        self.assertEqual(used, set(self.env))

    def test_readme_deploys_the_example_paths(self) -> None:
        readme = read(README)
        for path in (CERT_PATH, KEY_PATH):
            self.assertIn(f" {path}\n", readme)

    def test_sandboxing(self) -> None:
        expected = {
            "User": "moqrelay",
            "NoNewPrivileges": "yes",
            "ProtectSystem": "strict",
            "ProtectHome": "yes",
            "PrivateTmp": "yes",
            "PrivateDevices": "yes",
            "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
            "Restart": "on-failure",
            # pyOpenSSL's cffi callbacks need write+execute memory (etc/README.md).
            "MemoryDenyWriteExecute": "no",
        }
        for key, value in expected.items():
            self.assertEqual(self.one(key), value, key)
        self.assertNotIn("DynamicUser", self.service)
        self.assertGreaterEqual(int(self.one("LimitNOFILE")), 65536)
        self.assertIn("@system-service", self.service["SystemCallFilter"])

    def test_capabilities_only_for_a_low_port(self) -> None:
        options = tap.Options()
        options.parseOptions(self.relay_arguments())
        _, port = options["bind-address"]
        capabilities = {self.one("CapabilityBoundingSet"), self.one("AmbientCapabilities")}
        self.assertEqual(capabilities, {"CAP_NET_BIND_SERVICE" if port < 1024 else ""})

    def test_foreground_with_logs_on_stdout(self) -> None:
        self.assertIn(self.one("Type"), ("exec", "simple"))
        words = self.command()
        self.assertIn("--nodaemon", words[: words.index("moqrelay")])
        self.assertIn("--logfile=-", words[: words.index("moqrelay")])

    def test_reload_sends_sighup(self) -> None:
        self.assertEqual(shlex.split(self.one("ExecReload"))[1:], ["-HUP", "$MAINPID"])

    def test_stop_timeout_outlasts_the_drain(self) -> None:
        options = tap.Options()
        options.parseOptions(self.relay_arguments())
        self.assertGreaterEqual(float(self.one("TimeoutStopSec")), options["drain-timeout"] + 10)

    def test_no_logrotate_needed(self) -> None:
        self.assertFalse(os.path.exists(os.path.join(ETC, "logrotate.d")))
        self.assertIn("logrotate", read(README))
        self.assertNotIn("--logfile=/", self.one("ExecStart"))


class HelperTests(SynchronousTestCase):
    def test_expand_command(self) -> None:
        env = {"ONE": "a b", "MANY": "--x 1  --y", "EMPTY": ""}
        self.assertEqual(
            expand_command("/bin/t --o ${ONE} $MANY $EMPTY end", env),
            ["/bin/t", "--o", "a b", "--x", "1", "--y", "end"],
        )

    def test_parsers_refuse_nonsense(self) -> None:
        self.assertRaises(ValueError, parse_unit, "Key=value\n")
        self.assertRaises(ValueError, parse_environment_file, "no equals sign\n")
        self.assertRaises(ValueError, parse_environment_file, 'A="quoted"\n')
        self.assertEqual(parse_environment_file("# c\nA=1\n\nB=\n"), {"A": "1", "B": ""})
