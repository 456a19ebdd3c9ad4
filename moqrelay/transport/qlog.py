"""Transport layer: qlog files for QUIC connections (``--qlog-dir``), with a bound.

Each QUIC connection the endpoint serves gets a qlog trace from the stack's own
logger (aioquic's and qh3's ``QuicFileLogger``), written when the connection ends
as ``<original destination connection id, hex>.qlog`` in the directory. At most
``max_files`` of the files this process wrote are kept: each new one removes the
oldest. Tracing costs CPU for every packet and the file is written on the
reactor thread when its connection ends, so it is for diagnosing, not on by default.
"""

from __future__ import annotations

import os
from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

if TYPE_CHECKING:
    from moqrelay.transport.quicstack import QuicStack

_log = Logger()


class QlogDirectory:
    """Where qlog files go, and how many are kept."""

    def __init__(self, directory: str, max_files: int) -> None:
        if not os.path.isdir(directory):
            raise ValueError(f"qlog directory {directory!r} does not exist")
        if max_files < 1:
            raise ValueError("at least one qlog file must be kept")
        self.directory = directory
        self.max_files = max_files
        self._written: deque[str] = deque()

    def logger(self, stack: QuicStack) -> Any:
        """A quic_logger for ``stack``'s configuration that reports each file it writes."""
        kept = self

        class BoundedFileLogger(stack.qlog_file_logger()):  # type: ignore[misc]
            def end_trace(self, trace: Any) -> None:
                name = stack.trace_odcid(trace).hex() + ".qlog"
                super().end_trace(trace)
                kept.written(os.path.join(kept.directory, name))

        return BoundedFileLogger(self.directory)

    def written(self, path: str) -> None:
        """``path`` was just written: drop the oldest files past the bound."""
        self._written.append(path)
        while len(self._written) > self.max_files:
            oldest = self._written.popleft()
            try:
                os.remove(oldest)
            except FileNotFoundError:
                pass
            except OSError as e:
                _log.warn("cannot remove old qlog file {path}: {error}", path=oldest, error=e)
