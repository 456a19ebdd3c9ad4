"""The relay proper: transport-agnostic tracks, namespaces, subscriptions and teardown."""
