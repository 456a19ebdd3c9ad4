"""Benchmark harness (outside the relay layers): the viewers that vanish, in their own process.

relay_bench.py's teardown workload starts this so that the leavers' own teardown does not
run in the process that measures the staying viewers' latency:

    PYTHONPATH=. python bench/leavers.py URL COUNT NAME

It opens COUNT sessions to URL, subscribes each to track NAME of the bench namespace,
prints one JSON line ``{"ready": COUNT}`` and waits. A line ``vanish`` on standard input
makes every session vanish at once (see `relay_bench.vanish`); the process exits half a
second later, or when standard input closes.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.stdio import StandardIO
from twisted.internet.task import react
from twisted.python.failure import Failure

from bench.relay_bench import Viewer, open_clients, sleep, subscribe_all, vanish
from moqrelay.client.api import MoqtClient


class _Commands(Protocol):
    """Fires ``vanished`` once the sessions are gone (or standard input closed)."""

    def __init__(self, clients: list[MoqtClient]) -> None:
        self.clients = clients
        self.vanished: Deferred[None] = Deferred()
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"vanish\n" in self.buffer and not self.vanished.called:
            for client in self.clients:
                vanish(client)
            self.vanished.callback(None)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.vanished.called:
            self.vanished.callback(None)


async def main(reactor: Any, url: str, count: int, name: bytes) -> None:
    clients = await open_clients(reactor, url, count)
    await subscribe_all(clients, [Viewer() for _ in clients], name)
    commands = _Commands(clients)
    StandardIO(commands, reactor=reactor)
    sys.stdout.write(json.dumps({"ready": len(clients)}) + "\n")
    sys.stdout.flush()
    await commands.vanished
    await sleep(reactor, 0.5)


if __name__ == "__main__":
    react(
        lambda reactor: Deferred.fromCoroutine(
            main(reactor, sys.argv[1], int(sys.argv[2]), sys.argv[3].encode())
        )
    )
