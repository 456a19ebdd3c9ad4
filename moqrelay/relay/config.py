"""Relay layer: the relay-wide bounds and policies, one field per command-line option.

Every relay module that needs a bound gets this object injected; nothing reads
it through another object's attributes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RelayConfig:
    """Relay-wide bounds and policies; each is a command-line option."""

    cache_groups: int = 4
    cache_bytes: int = 64 << 20
    max_queued_bytes: int = 1 << 20
    max_lag_groups: int = 1
    max_skipped_groups: int = 8
    drain_timeout: float = 5.0
    max_subscriptions: int = 1000
    max_namespaces: int = 100
    max_publishers: int = 8
    join_at_group_start: bool = True
