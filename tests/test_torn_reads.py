"""Cross-process torn reads: `read_atomic` never sees half of a `write_atomic`.

A writer process (attached to the test's memfd guest memory through its descriptors)
flips an 8-byte value between 0 and all-ones; this process reads it and classifies
every value. The atomic path must see only the two patterns. The same harness on
non-atomic paths must see tears, or the zero above would prove nothing:

- "straddle": the value straddles the boundary between two regions, so
  `write_obj_unaligned`/`read_obj_unaligned` split it into two copies;
- "bytewise": the writer still uses `write_atomic`, but the reader assembles the value
  from 8 separate one-byte `read_obj` calls.

Each run also requires the reads to overlap the writer (the values seen must have
changed many times): the reader and the writer are pinned to different CPUs, and on a
loaded host the run goes on until enough changes (and, for the controls, a tear) were
seen, within a time budget.
"""

from __future__ import annotations

import pytest
from concurrency_harness import ONES, TornReadResult, run_torn_reads
from host_assumptions import needs_8_byte_atomics

pytestmark = needs_8_byte_atomics  # the torn-read harness races 8-byte values


def describe(result: TornReadResult) -> str:
    """One line with the numbers, printed (see `pytest -s`) and used in failure messages."""
    examples = ", ".join(f"{value:#018x}" for value in result.torn_examples)
    return (f"{result.mode}: {result.reads:,} reads in {result.seconds:.2f} s, "
            f"zeros {result.zeros:,}, ones {result.ones:,}, flips {result.flips:,}, "
            f"torn {result.torn:,} [{examples}], writer stores meanwhile "
            f"{result.writer_stores:,}")


def check_atomic_run(result: TornReadResult, min_flips: int) -> None:
    print(describe(result))
    assert result.torn == 0, f"read_atomic saw torn values: {describe(result)}"
    assert result.zeros + result.ones == result.reads
    assert result.flips >= min_flips, (
        f"the reads did not overlap the writer enough to mean anything: {describe(result)}")
    assert min(result.zeros, result.ones) >= min_flips // 2, describe(result)


def test_read_atomic_never_tears() -> None:
    """~200 k reads against a write_atomic writer in another process: zero torn values."""
    min_flips = 1_000
    result = run_torn_reads("atomic", 200_000, min_flips=min_flips)
    check_atomic_run(result, min_flips)


@pytest.mark.long
def test_read_atomic_never_tears_long() -> None:
    """The long run: at least 10 M reads, zero torn values."""
    min_flips = 100_000
    result = run_torn_reads("atomic", 10_000_000, min_flips=min_flips, max_seconds=1200)
    assert result.reads >= 10_000_000
    check_atomic_run(result, min_flips)


@pytest.mark.parametrize("mode", ["straddle", "bytewise"])
def test_non_atomic_paths_tear_in_the_same_harness(mode: str) -> None:
    """The control: the harness catches tears where the access is not one instruction."""
    min_flips = 100
    result = run_torn_reads(mode, 20_000, min_flips=min_flips, min_torn=1)
    print(describe(result))
    assert result.flips >= min_flips, describe(result)
    assert result.torn > 0, f"the control path never tore: {describe(result)}"
    for value in result.torn_examples:
        assert value not in (0, ONES)
        # A tear mixes the two patterns: each byte is still 0x00 or 0xff.
        assert set(value.to_bytes(8, "little")) <= {0x00, 0xFF}, f"{value:#x}"
