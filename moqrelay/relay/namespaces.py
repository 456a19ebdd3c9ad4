"""Relay layer: announced namespaces (who publishes what) and prefix lookup."""

from __future__ import annotations

from typing import Generic, TypeVar

Namespace = tuple[bytes, ...]
Owner = TypeVar("Owner")


def format_namespace(namespace: Namespace) -> str:
    """A printable form for logs and reason phrases: fields joined by '/'."""
    return "/".join(field.decode("utf-8", "backslashreplace") for field in namespace)


class NamespaceRegistry(Generic[Owner]):
    """Exact namespaces to their announcing owner, looked up by longest prefix."""

    def __init__(self) -> None:
        self._owners: dict[Namespace, Owner] = {}

    def __len__(self) -> int:
        return len(self._owners)

    def __contains__(self, namespace: Namespace) -> bool:
        return namespace in self._owners

    def items(self) -> list[tuple[Namespace, Owner]]:
        return list(self._owners.items())

    def owner(self, namespace: Namespace) -> Owner | None:
        return self._owners.get(namespace)

    def add(self, namespace: Namespace, owner: Owner) -> bool:
        """Register ``namespace``; False if someone already announced it."""
        if namespace in self._owners:
            return False
        self._owners[namespace] = owner
        return True

    def remove(self, namespace: Namespace, owner: Owner) -> bool:
        """Withdraw ``namespace`` if ``owner`` holds it."""
        if self._owners.get(namespace) is not owner:
            return False
        del self._owners[namespace]
        return True

    def under(self, prefix: Namespace) -> list[Namespace]:
        """Announced namespaces that ``prefix`` is a prefix of (or equal to)."""
        size = len(prefix)
        return [ns for ns in self._owners if ns[:size] == prefix]

    def lookup(self, track_namespace: Namespace) -> Owner | None:
        """The owner of the longest announced prefix of ``track_namespace``."""
        owners = self._owners
        for end in range(len(track_namespace), 0, -1):
            owner = owners.get(track_namespace[:end])
            if owner is not None:
                return owner
        return None
