"""Twisted's private parts that the relay relies on, each behind one name.

`moqrelay.reactor.PacedEPollReactor` paces TCP connection losses by overriding
the reactor's private ``_disconnectSelectable`` hook: every poll-based Twisted
reactor (``PosixReactorBase._doReadOrWrite``) calls it when a descriptor's read
or write found the end of its connection. If an upgrade renamed it, the
override would silently never run and losses would no longer be paced;
``tests/test_compat_twisted.py`` fails instead.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.posixbase import PosixReactorBase

DISCONNECT_SELECTABLE = "_disconnectSelectable"
"""The reactor method the poll loop calls with ``(selectable, why, isRead)`` on a loss.

A subclass overrides it under this name (``PacedEPollReactor`` does).
"""


def stock_disconnect_selectable(
    reactor: PosixReactorBase, selectable: Any, why: BaseException, is_read: bool, *args: Any
) -> None:
    """Handle a lost selectable as the stock reactor does (half-close aware).

    For an override of `DISCONNECT_SELECTABLE` that passes some losses on; ``args`` are
    whatever else the reactor gave the override.
    """
    base = getattr(PosixReactorBase, DISCONNECT_SELECTABLE)
    base(reactor, selectable, why, is_read, *args)
