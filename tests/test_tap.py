"""Tests for moqrelay.tap and the twistd plugin: options, validation, the service tree."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import cast

from twisted.application.service import IServiceMaker
from twisted.internet.interfaces import IReactorCore
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from moqrelay import tap
from moqrelay.tls import generate_dev_chain

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PluginTests(SynchronousTestCase):
    def test_twistd_finds_the_plugin(self) -> None:
        import twisted.plugins

        makers = {p.tapname: p for p in getPlugins(IServiceMaker, twisted.plugins)}
        self.assertIn("moqrelay", makers)
        self.assertEqual(makers["moqrelay"].options, tap.Options)

    def test_makeservice_installs_the_paced_reactor_unless_one_was_chosen(self) -> None:
        """In a fresh interpreter, as under twistd: no reactor yet, or one chosen by --reactor;
        either way the startup objects are frozen once the reactor runs."""
        script = (
            "import sys\n"
            "from moqrelay import tap\n"
            "if sys.argv[1] == 'poll':\n"
            "    from twisted.internet import pollreactor; pollreactor.install()\n"
            "options = tap.Options(); options.parseOptions(['--dev', '--bind', '127.0.0.1:0'])\n"
            "tap.makeService(options)\n"
            "from twisted.internet import reactor\n"
            "import gc\n"
            "reactor.callWhenRunning(reactor.stop)\n"
            "reactor.run()\n"
            "print(type(reactor).__name__, gc.get_freeze_count() > 10_000)\n"
        )
        found = {}
        for chosen in ("none", "poll"):
            done = subprocess.run(
                [sys.executable, "-c", script, chosen],
                capture_output=True,
                text=True,
                timeout=60,
                env=dict(os.environ, PYTHONPATH=REPO),
                check=True,
            )
            found[chosen] = done.stdout.strip()
        self.assertEqual(found, {"none": "PacedEPollReactor True", "poll": "PollReactor True"})


class ParseBindTests(SynchronousTestCase):
    def test_forms(self) -> None:
        self.assertEqual(tap.parse_bind("[::]:4443"), ("::", 4443))
        self.assertEqual(tap.parse_bind("127.0.0.1:0"), ("127.0.0.1", 0))
        self.assertEqual(tap.parse_bind(":443"), ("::", 443))
        self.assertEqual(tap.parse_bind("[::1]:1"), ("::1", 1))

    def test_nonsense(self) -> None:
        for bad in ("4443", "host:port", "1.2.3.4:70000", "[1.2.3.4]:1", "example.com:1", "::1:"):
            self.assertRaises(ValueError, tap.parse_bind, bad)


class OptionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        chain = generate_dev_chain()
        self.cert = self.mktemp()
        self.key = self.mktemp()
        with open(self.cert, "wb") as f:
            f.write(chain.cert_pem)
        with open(self.key, "wb") as f:
            f.write(chain.key_pem)

    def parse(self, *argv: str) -> tap.Options:
        options = tap.Options()
        options.parseOptions(list(argv))
        return options

    def test_dev_defaults_to_loopback(self) -> None:
        options = self.parse("--dev")
        self.assertEqual(options["bind-address"], ("127.0.0.1", 4443))
        self.assertEqual(options["chains"], [])

    def test_default_bind_is_all_interfaces(self) -> None:
        options = self.parse("--tls-cert", self.cert, "--tls-key", self.key)
        self.assertEqual(options["bind-address"], ("::", 4443))
        self.assertEqual(len(options["chains"]), 1)
        self.assertIn("localhost", options["chains"][0].names)

    def test_repeatable_pairs_and_listen(self) -> None:
        options = self.parse(
            "--tls-cert", self.cert, "--tls-key", self.key,
            "--tls-cert", self.cert, "--tls-key", self.key,
            "--listen", "tcp:8080", "--listen", "unix:/tmp/x.sock",
        )  # fmt: skip
        self.assertEqual(len(options["chains"]), 2)
        self.assertEqual(options["listen"], ["tcp:8080", "unix:/tmp/x.sock"])

    def test_announce_options_reach_the_service(self) -> None:
        from twisted.internet.task import Clock

        from moqrelay.service import RelayService

        options = self.parse(
            "--dev", "--announce", "wss://origin:4443/", "--announce-fingerprint", "ab" * 32
        )
        service = tap.makeService(options, cast(IReactorCore, Clock()))
        assert isinstance(service, RelayService)
        assert service.upstream is not None
        self.assertEqual(service.upstream.url, "wss://origin:4443/")

    def test_limits_are_numbers(self) -> None:
        options = self.parse("--dev", "--cache-groups", "7", "--drain-timeout", "1.5")
        self.assertEqual(options["cache-groups"], 7)
        self.assertEqual(options["drain-timeout"], 1.5)

    def assertUsageError(self, fragment: str, *argv: str) -> None:
        e = self.assertRaises(usage.UsageError, self.parse, *argv)
        self.assertIn(fragment, str(e))

    def test_rejections(self) -> None:
        self.assertUsageError("--dev", "--bind", "127.0.0.1:1")
        self.assertUsageError("pairs", "--tls-cert", self.cert)
        missing = "/nonexistent.pem"
        self.assertUsageError("cannot read", "--tls-cert", missing, "--tls-key", self.key)
        self.assertUsageError("--bind", "--dev", "--bind", "nowhere")
        self.assertUsageError("--announce", "--dev", "--announce", "ftp://x/")
        self.assertUsageError("endpoint", "--dev", "--listen", "8080")
        self.assertUsageError("positive", "--dev", "--cache-groups", "0")
        self.assertUsageError("number", "--dev", "--cache-groups", "many")
        self.assertUsageError("65535", "--dev", "--max-control-message", "70000")

    def test_key_that_does_not_match(self) -> None:
        other = generate_dev_chain()
        key = self.mktemp()
        with open(key, "wb") as f:
            f.write(other.key_pem)
        self.assertUsageError("does not match", "--tls-cert", self.cert, "--tls-key", key)

    def test_unreadable_key_file(self) -> None:
        if os.geteuid() == 0:
            garbage = self.mktemp()
            with open(garbage, "wb") as f:
                f.write(b"not a key")
            self.assertUsageError("private key", "--tls-cert", self.cert, "--tls-key", garbage)
        else:
            os.chmod(self.key, 0)
            self.assertUsageError("cannot read", "--tls-cert", self.cert, "--tls-key", self.key)

    def test_help_documents_every_option(self) -> None:
        text = str(tap.Options())
        for name in (
            "bind", "tls-cert", "tls-key", "announce", "dev", "listen", "quic-retry",
            "setup-timeout", "idle-timeout", "request-window", "max-subscriptions",
            "max-namespaces", "max-streams", "cache-groups", "cache-bytes", "max-queued-bytes",
            "max-lag-groups", "max-skipped-groups", "drain-timeout", "max-message-size",
            "strict-filters", "announce-insecure", "announce-fingerprint", "handshake-timeout",
            "max-control-message", "udp-buffer",
        ):  # fmt: skip
            self.assertIn(f"--{name}", text)
