"""Compatibility layer: every use of a third-party library's private parts.

One module per library (``aioquic``, ``qh3``, ``autobahn``, ``twisted``). Each
private attribute or method the relay relies on is reached through one named
function here, never directly from the rest of the code, and
``tests/test_compat_<library>.py`` checks that the installed version still has
it, so that an upgrade that removes it fails loudly in the suite instead of
silently breaking backpressure or teardown in production.
"""
