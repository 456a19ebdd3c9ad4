"""Benchmark harness (outside the relay layers): throughput of the sans-IO codec, moqrelay/wire.

Run from the repository root:

    PYTHONPATH=. python bench/codec_bench.py

Every figure is the median of 5 timed runs (time.perf_counter). Each row has a
baseline measured in the same run on the same data, the cheapest Python that
does the unavoidable part of the job (copying the bytes, or slicing payloads
out of a buffer whose layout is known in advance); "ratio" is codec time over
baseline time, which stays meaningful on a noisy or slow machine. The output
is a Markdown section for bench/RESULTS.md.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from moqrelay.wire.control import (
    FILTER_LARGEST_OBJECT,
    GROUP_ORDER_DESCENDING,
    PARAM_DELIVERY_TIMEOUT,
    ControlStreamDecoder,
    Subscribe,
    encode_message,
)
from moqrelay.wire.data import DataStreamDecoder, encode_subgroup_header, encode_subgroup_object

RUNS = 5
COMMAND = "PYTHONPATH=. python bench/codec_bench.py"


@dataclass
class Row:
    case: str
    items: int
    payload_bytes: int
    seconds: float
    baseline: str
    baseline_seconds: float

    def markdown(self) -> str:
        per_second = self.items / self.seconds
        mb_per_second = self.payload_bytes / self.seconds / 1e6 if self.payload_bytes else None
        mb = f"{mb_per_second:,.0f}" if mb_per_second is not None else "-"
        ratio = self.seconds / self.baseline_seconds
        return (
            f"| {self.case} | {self.items:,} | {per_second:,.0f} | {mb} "
            f"| {self.baseline} | {ratio:.1f}x |"
        )


def median_seconds(work: Callable[[], object]) -> float:
    """Median wall time of RUNS calls of `work`."""
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def subscribe_rows(count: int) -> list[Row]:
    message = Subscribe(
        7,
        (b"live", b"demo"),
        b"video",
        128,
        GROUP_ORDER_DESCENDING,
        True,
        FILTER_LARGEST_OBJECT,
        params=[(PARAM_DELIVERY_TIMEOUT, 2000)],
    )
    encoded = encode_message(message)
    stream = encoded * count

    def encode() -> None:
        for _ in range(count):
            encode_message(message)

    def copy_baseline() -> None:
        for _ in range(count):
            bytes(bytearray(encoded))

    def decode() -> None:
        messages = ControlStreamDecoder().feed(stream)
        assert len(messages) == count

    def slice_baseline() -> None:
        # Type (1 byte), 16-bit length, payload: the framing only, no fields.
        pos, end = 0, len(stream)
        while pos < end:
            length = int.from_bytes(stream[pos + 1 : pos + 3], "big")
            stream[pos + 3 : pos + 3 + length]
            pos += 3 + length

    return [
        Row(
            "SUBSCRIBE encode_message",
            count,
            0,
            median_seconds(encode),
            "copy of the encoded bytes",
            median_seconds(copy_baseline),
        ),
        Row(
            "SUBSCRIBE ControlStreamDecoder, one buffer",
            count,
            0,
            median_seconds(decode),
            "framing-only len+slice loop",
            median_seconds(slice_baseline),
        ),
    ]


def object_rows(payload_size: int, count: int, byte_feed_count: int) -> list[Row]:
    payload = bytes(range(256)) * (payload_size // 256)
    label = f"{payload_size // 1024} KiB"
    header = encode_subgroup_header(1, 2, 0, 128, extensions=False)
    one_object = encode_subgroup_object(0, payload, extensions=None)
    stream = header + one_object * count
    small_stream = header + one_object * byte_feed_count
    object_header = len(one_object) - payload_size

    def encode() -> None:
        for _ in range(count):
            encode_subgroup_object(0, payload, extensions=None)

    def copy_baseline() -> None:
        for _ in range(count):
            bytes(bytearray(payload))

    def decode() -> None:
        decoder = DataStreamDecoder()
        events = decoder.feed(stream)
        decoder.end_of_stream()
        assert len(events) == count + 1

    def slice_baseline() -> None:
        pos, end = len(header), len(stream)
        while pos < end:
            stream[pos + object_header : pos + object_header + payload_size]
            pos += object_header + payload_size

    def decode_bytewise() -> None:
        decoder = DataStreamDecoder()
        events = []
        for i in range(len(small_stream)):
            events += decoder.feed(small_stream[i : i + 1])
        decoder.end_of_stream()
        assert len(events) == byte_feed_count + 1

    def bytewise_baseline() -> None:
        chunks = []
        for i in range(len(small_stream)):
            chunks.append(small_stream[i : i + 1])
        assert b"".join(chunks) == small_stream

    return [
        Row(
            f"{label} encode_subgroup_object",
            count,
            count * payload_size,
            median_seconds(encode),
            "bytes() copy of the payload",
            median_seconds(copy_baseline),
        ),
        Row(
            f"{label} DataStreamDecoder, one buffer",
            count,
            count * payload_size,
            median_seconds(decode),
            "fixed-layout len+slice loop",
            median_seconds(slice_baseline),
        ),
        Row(
            f"{label} DataStreamDecoder, 1-byte feeds",
            byte_feed_count,
            byte_feed_count * payload_size,
            median_seconds(decode_bytewise),
            "slicing the 1-byte feeds and joining them",
            median_seconds(bytewise_baseline),
        ),
    ]


def main() -> None:
    started = time.perf_counter()
    rows = subscribe_rows(20_000)
    rows += object_rows(1024, 20_000, 40)
    rows += object_rows(16 * 1024, 2_000, 3)
    uname = platform.uname()
    cpus = len(os.sched_getaffinity(0))
    lines = [
        "## Codec (moqrelay/wire)",
        "",
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: `{uname.system} {uname.release} {uname.machine}`, nproc {cpus}, "
        f"Python {platform.python_version()}",
        f"- Command: `{COMMAND}`",
        f"- Median of {RUNS} runs each; ratio = codec time / baseline time on the same data.",
        "",
        "| case | items | items/s | payload MB/s | baseline | ratio |",
        "|---|---|---|---|---|---|",
        *(row.markdown() for row in rows),
        "",
        f"Total benchmark time: {time.perf_counter() - started:.1f} s.",
    ]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
