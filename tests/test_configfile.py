"""Tests for moqrelay.configfile: --config FILE, the command-line options in TOML."""

from __future__ import annotations

import os
from typing import Any, cast

from twisted.internet import reactor
from twisted.internet.interfaces import IReactorCore
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from moqrelay import tap
from moqrelay.configfile import command_line, file_arguments
from moqrelay.service import RelayService
from moqrelay.tls import generate_dev_chain


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


class ConfigFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.certs: list[str] = []
        self.keys: list[str] = []
        for _ in range(2):
            chain = generate_dev_chain()
            self.certs.append(self.write(chain.cert_pem))
            self.keys.append(self.write(chain.key_pem))
        self.secret = self.write(b"s" * 32)
        self.qlog_dir = self.mktemp()
        os.makedirs(self.qlog_dir)

    def write(self, data: bytes) -> str:
        path = str(self.mktemp())
        with open(path, "wb") as f:
            f.write(data)
        return path

    def config(self, table: dict[str, Any]) -> str:
        lines = [f"{key} = {toml_value(value)}\n" for key, value in table.items()]
        return self.write("".join(lines).encode())

    def parse(self, argv: list[str]) -> tap.Options:
        options = tap.Options()
        options.parseOptions(argv)
        return options

    def every_option(self) -> dict[str, Any]:
        """A value other than the default for every option of the command line."""
        options = tap.Options()
        table: dict[str, Any] = {
            "bind": "127.0.0.1:4444",
            "announce": "moqt://upstream.example:4443/",
            "announce-fingerprint": "ab" * 32,
            "auth-key": self.secret,
            "metrics": "tcp:0:interface=127.0.0.1",
            "qlog-dir": self.qlog_dir,
            "tls-cert": self.certs,
            "tls-key": self.keys,
            "allowed-origin": ["https://a.example", "https://b.example"],
            "listen": ["tcp:0:interface=127.0.0.1", "tcp:0:interface=::1"],
        }
        for name in options.longOpt:
            key = name.removesuffix("=")
            if key in table or key in ("help", "version", "config"):
                continue
            default = options.defaults.get(key)
            if not name.endswith("="):
                table[key] = True
            elif isinstance(default, int):
                table[key] = default - 1 if default > 1 else default + 1
            elif isinstance(default, float):
                table[key] = default + 0.5
            elif isinstance(default, str):
                table[key] = default
        every = {n.removesuffix("=") for n in options.longOpt} - {"help", "version", "config"}
        self.assertEqual(set(table), every, "give the new option a value here")
        return table

    def as_arguments(self, table: dict[str, Any]) -> list[str]:
        argv: list[str] = []
        for key, value in table.items():
            if value is True:
                argv.append(f"--{key}")
                continue
            for item in value if isinstance(value, list) else [value]:
                argv += [f"--{key}", str(item)]
        return argv

    def assertSameOptions(self, got: tap.Options, expected: tap.Options) -> None:
        for key in set(got) | set(expected):
            if key == "config":
                continue
            if key == "chains":
                self.assertEqual(
                    [c.fingerprint() for c in got[key]],
                    [c.fingerprint() for c in expected[key]],
                )
            elif key == "authorizer":
                self.assertEqual(type(got[key]), type(expected[key]))
            else:
                self.assertEqual(got[key], expected[key], key)

    def test_every_option_as_on_the_command_line(self) -> None:
        table = self.every_option()
        from_file = self.parse(["--config", self.config(table)])
        from_argv = self.parse(self.as_arguments(table))
        self.assertSameOptions(from_file, from_argv)
        self.assertEqual(from_file["max-queued-bytes"], (1 << 20) - 1)
        self.assertEqual(from_file["listen"], table["listen"])
        self.assertTrue(from_file["dev"])
        self.assertIsNotNone(from_file["authorizer"])
        self.assertEqual(len(from_file["chains"]), 2)

    def test_command_line_wins(self) -> None:
        path = self.config(
            {
                "max-queued-bytes": 1000,
                "drain-timeout": 2,
                "listen": ["tcp:1", "tcp:2"],
                "tls-cert": self.certs[0],
                "tls-key": self.keys[0],
            }
        )
        options = self.parse(
            ["--max-queued-bytes", "5000", "--config", path, "--listen", "tcp:3", "-b", ":9"]
        )
        self.assertEqual(options["max-queued-bytes"], 5000)
        self.assertEqual(options["drain-timeout"], 2.0)
        self.assertEqual(options["listen"], ["tcp:3"])
        self.assertEqual(options["bind-address"], ("::", 9))
        self.assertEqual(len(options["chains"]), 1)

    def test_without_config_nothing_changes(self) -> None:
        self.assertSameOptions(self.parse(["--dev"]), self.parse(["--dev"]))
        self.assertIsNone(self.parse(["--dev"])["config"])

    def assertUsageError(self, table: dict[str, Any], *fragments: str) -> None:
        path = self.config(table)
        e = self.assertRaises(usage.UsageError, self.parse, ["--dev", "--config", path])
        for fragment in fragments:
            self.assertIn(fragment, str(e))

    def test_unknown_key_named(self) -> None:
        self.assertUsageError({"max-queue-bytes": 1}, "max-queue-bytes", "no such option")

    def test_options_that_mean_nothing_in_a_file(self) -> None:
        for key in ("config", "help", "version"):
            self.assertUsageError({key: "x"}, f": {key}:", "no such option")

    def test_wrong_types_named(self) -> None:
        cases: list[tuple[str, Any, str]] = [
            ("max-queued-bytes", "1048576", "an integer"),
            ("max-queued-bytes", True, "an integer"),
            ("max-queued-bytes", 1.5, "an integer"),
            ("drain-timeout", "5", "a number"),
            ("drain-timeout", False, "a number"),
            ("dev", 1, "true or false"),
            ("bind", 443, "a string"),
            ("listen", [1, 2], "a string or a list of strings"),
        ]
        for key, value, kind in cases:
            self.assertUsageError({key: value}, f": {key} must be {kind}")

    def test_a_table_is_no_option(self) -> None:
        path = self.write(b"[limits]\nmax-queued-bytes = 1\n")
        e = self.assertRaises(usage.UsageError, self.parse, ["--dev", "--config", path])
        self.assertIn("limits", str(e))

    def test_values_are_checked_as_on_the_command_line(self) -> None:
        self.assertUsageError({"max-queued-bytes": -1}, "--max-queued-bytes must be positive")
        self.assertUsageError({"bind": "nowhere"}, "--bind")
        for endpoint in ("9464", "tcp:port", "nonsense:1"):
            self.assertUsageError({"metrics": endpoint}, "--metrics", "not a server endpoint")

    def test_unreadable_or_invalid_file(self) -> None:
        missing = self.mktemp()
        e = self.assertRaises(usage.UsageError, self.parse, ["--config", missing])
        self.assertIn(f"cannot read {missing}", str(e))
        broken = self.write(b"max-queued-bytes = \n")
        e = self.assertRaises(usage.UsageError, self.parse, ["--config", broken])
        self.assertIn("not valid TOML", str(e))

    def test_file_options_reach_the_service(self) -> None:
        path = self.config({"dev": True, "metrics": "tcp:0", "max-queued-bytes": 4096})
        service = tap.makeService(self.parse(["--config", path]), cast(IReactorCore, reactor))
        assert isinstance(service, RelayService)
        self.assertIsNotNone(service.metrics_service)
        self.assertEqual(service.relay.config.max_queued_bytes, 4096)

    def test_flag_false_is_the_default(self) -> None:
        options = self.parse(["--config", self.config({"dev": True, "quic-retry": False})])
        self.assertFalse(options["quic-retry"])
        self.assertTrue(options["dev"])


class HelperTests(SynchronousTestCase):
    def test_command_line_names_long_and_short_options(self) -> None:
        path, given = command_line(
            tap.Options(), ["-b", ":1", "--dev", "--config=a.toml", "--tls-cert", "x"]
        )
        self.assertEqual(path, "a.toml")
        self.assertEqual(given, {"bind", "dev", "config", "tls-cert"})

    def test_malformed_command_line_left_to_the_parser(self) -> None:
        self.assertEqual(command_line(tap.Options(), ["--no-such-option"]), (None, set()))

    def test_skipped_keys_are_still_checked(self) -> None:
        options = tap.Options()
        self.assertEqual(file_arguments(options, "f", {"dev": True}, {"dev"}), [])
        self.assertRaises(usage.UsageError, file_arguments, options, "f", {"dev": 1}, {"dev"})
