"""Tests for the operator files in etc/ (systemd unit, example configuration, README):
the example (TOML) parses with the relay's own option parser, and the unit keeps
its sandboxing."""

# mypy: disallow-untyped-calls=False
# (twisted.trial's assertion methods are not annotated.)

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred
from twisted.scripts._twistd_unix import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

from moqrelay import tap
from moqrelay.configfile import file_arguments
from moqrelay.metrics import metrics_registry
from moqrelay.relay.upstream import UpstreamLink
from moqrelay.tls import generate_dev_chain
from moqrelay.transport.interfaces import HandlerFactory, ITransportSession
from tests.helpers import MemoryRelay
from tests.test_metrics import Served

ETC = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "etc")
UNIT = os.path.join(ETC, "moqrelay.service")
EXAMPLE = os.path.join(ETC, "moqrelay.conf.example")
README = os.path.join(ETC, "README.md")
DASHBOARD = os.path.join(ETC, "grafana-dashboard.json")
INSTALLED_CONF = "/etc/moqrelay/moqrelay.conf"
CERT_PATH = "/etc/moqrelay/fullchain.pem"
TOKEN_KEY_PATH = "/etc/moqrelay/token-public.pem"
KEY_PATH = "/etc/moqrelay/key.pem"


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


class EtcTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.unit = parse_unit(read(UNIT))
        self.service = self.unit["Service"]
        self.example = read(EXAMPLE)
        self.table = tomllib.loads(self.example)
        chain = generate_dev_chain()
        self.cert = self.write(chain.cert_pem)
        self.key = self.write(chain.key_pem)
        public = ec.generate_private_key(ec.SECP256R1()).public_key()
        self.token_key = self.write(
            public.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def write(self, data: bytes) -> str:
        path = str(self.mktemp())
        with open(path, "wb") as f:
            f.write(data)
        return path

    def one(self, key: str) -> str:
        values = self.service.get(key, [])
        self.assertEqual(len(values), 1, f"{key}= should appear once in the unit")
        return values[0]

    def installed_conf(self) -> str:
        """The example with the development certificate and a token key in place of the
        installed paths (which must be the documented ones)."""
        text = self.example
        for installed, temporary in (
            (CERT_PATH, self.cert),
            (KEY_PATH, self.key),
            (TOKEN_KEY_PATH, self.token_key),
        ):
            self.assertIn(json.dumps(installed), text)
            text = text.replace(json.dumps(installed), json.dumps(temporary))
        return self.write(text.encode())

    def command(self) -> list[str]:
        """ExecStart, with the example (its paths replaced) as the installed configuration."""
        words = shlex.split(self.one("ExecStart"))
        at = words.index("--config") + 1
        self.assertEqual(words[at], INSTALLED_CONF)
        words[at] = self.installed_conf()
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
        self.assertEqual(options["metrics"], "tcp:9464:interface=127.0.0.1")

    def test_example_limits_are_the_defaults(self) -> None:
        defaults = tap.Options().defaults
        limits = [
            key
            for key, value in self.table.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        ]
        self.assertGreaterEqual(len(limits), 10)
        for key in limits:
            self.assertEqual(self.table[key], defaults[key], key)

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
        names = {name.rstrip("=") for name in tap.Options().longOpt}
        names -= {"help", "version", "config"}
        self.assertIn("bind", names)
        missing = sorted(
            name
            for name in names
            if not re.search(rf"^(# )?{re.escape(name)} = ", self.example, re.MULTILINE)
        )
        self.assertEqual(missing, [], "options missing from etc/moqrelay.conf.example")

    def test_commented_examples_parse(self) -> None:
        """The commented-out settings are valid TOML of the right types, once uncommented."""
        lines = re.findall(r"^# ([a-z-]+ = .*)$", self.example, re.MULTILINE)
        self.assertTrue(lines)
        table = tomllib.loads("\n".join(lines))
        self.assertEqual(set(table) & set(self.table), set())
        file_arguments(tap.Options(), EXAMPLE, table)

    def test_unit_reads_the_example(self) -> None:
        self.assertNotIn("EnvironmentFile", self.service)
        self.assertIn(INSTALLED_CONF, read(README))
        self.assertIn(f"--config {INSTALLED_CONF}", self.one("ExecStart"))
        self.assertNotIn("$", self.one("ExecStart"))

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
    def test_parse_unit_refuses_nonsense(self) -> None:
        self.assertRaises(ValueError, parse_unit, "Key=value\n")
        self.assertEqual(parse_unit("[A]\n# c\nK=1\nK=2\n"), {"A": {"K": ["1", "2"]}})


def _never_connect(url: str, factory: HandlerFactory) -> Deferred[ITransportSession]:
    raise AssertionError("the dashboard test never connects")


class DashboardTests(SynchronousTestCase):
    """etc/grafana-dashboard.json: every expression names a metric the relay exports."""

    def exported(self) -> set[str]:
        world = MemoryRelay()
        # Never started: only its figures are read.
        link = UpstreamLink(world.clock, world.relay, "wss://127.0.0.1:1/", _never_connect)
        served = Served(world.relay, upstream=link)
        text = generate_latest(metrics_registry(served)).decode()
        names: set[str] = set()
        for family in text_string_to_metric_families(text):
            names.add(family.name)
            if family.type == "counter":
                names.add(family.name + "_total")
            names.update(sample.name for sample in family.samples)
        return names

    def test_every_expression_names_an_exported_metric(self) -> None:
        with open(DASHBOARD) as f:
            dashboard = json.load(f)
        exported = self.exported()
        expressions = [
            target["expr"] for panel in dashboard["panels"] for target in panel["targets"]
        ]
        self.assertGreater(len(expressions), 10)
        used = set()
        for expr in expressions:
            for name in re.findall(r"\b(?:moqrelay|process)_[a-z_]+\b", expr):
                used.add(name)
                self.assertIn(name, exported, expr)
        self.assertIn("moqrelay_sessions_opened_total", used)
