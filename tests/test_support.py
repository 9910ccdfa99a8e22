"""The shared test helpers do what the suite relies on (`support.py`)."""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import pytest
import support
from support import (
    ROOT,
    Timed,
    provoke,
    provoke_overlapping,
    run_python_code,
    stable_id,
    timed,
    unavailable,
    unstable_ids,
)


class _Thing:
    pass


def test_stable_ids_hold_no_memory_address() -> None:
    assert [stable_id(value) for value in (ctypes.c_uint8, ctypes.c_uint16(7), 4, None, b"\0",
                                           "x", _Thing())] == \
        ["c_ubyte", "c_ushort(7)", "4", "None", "b'\\x00'", "'x'", "_Thing instance"]
    assert unstable_ids([stable_id(_Thing())]) == []


def test_an_id_with_a_memory_address_is_caught() -> None:
    """The control of the collection check in conftest.py: a default repr is refused."""
    unstable = f"tests/test_x.py::test_y[{_Thing()!r}]"
    assert unstable_ids([unstable, "tests/test_x.py::test_y[4]"]) == [unstable]


def test_provoke_retries_until_the_control_shows_it() -> None:
    results = iter([0, 0, 3])
    assert provoke(lambda: next(results), lambda lost: lost > 0, attempts=3,
                   what="a lost update") == 3


def test_provoke_fails_when_no_attempt_shows_it() -> None:
    calls: list[int] = []

    def attempt() -> int:
        calls.append(0)
        return 0

    with pytest.raises(pytest.fail.Exception, match="never showed a lost update in 2 "
                                                    r"attempts: \[0, 0\]"):
        provoke(attempt, lambda lost: lost > 0, attempts=2, what="a lost update")
    assert len(calls) == 2


def test_provoke_overlapping_counts_only_attempts_with_the_racers_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Attempts whose racers took turns on one core do not count toward `attempts`: the
    control keeps trying until that many ran at once, then fails naming both counts; a
    result that shows it ends the search, overlapped or not."""
    parallelism = iter([0.9, 1.0, 1.8, 0.5, 1.9])

    def fake_timed(attempt: Callable[[], int]) -> Timed[int]:
        return Timed(attempt(), next(parallelism))

    monkeypatch.setattr(support, "timed", fake_timed)
    calls: list[int] = []

    def attempt() -> int:
        calls.append(0)
        return 0

    with pytest.raises(pytest.fail.Exception,
                       match="never showed a lost update in 5 attempts \\(2 with the racers "
                             "at once\\)"):
        provoke_overlapping(attempt, lambda lost: lost > 0, attempts=2, what="a lost update")
    assert len(calls) == 5
    results = iter([0, 0, 7])
    parallelism = iter([0.2, 0.3, 0.4])
    assert provoke_overlapping(lambda: next(results), lambda lost: lost > 0, attempts=1,
                               what="a lost update") == 7


def test_timed_is_the_cpu_time_over_the_wall_time() -> None:
    """A sleeping attempt keeps no core busy; one thread can keep at most one (so taking
    turns on a core never counts as the racers running at once)."""
    import time as clock

    assert timed(lambda: clock.sleep(0.05)).parallelism < 0.5
    busy = timed(lambda: sum(range(3_000_000)))
    assert busy.result == sum(range(3_000_000))
    assert busy.parallelism <= 1.1 and not busy.overlapped, busy.parallelism


@pytest.mark.parametrize("on_ci", [False, True], ids=["off CI", "on CI"])
def test_unavailable_skips_off_ci_and_fails_on_ci(monkeypatch: pytest.MonkeyPatch,
                                                  on_ci: bool) -> None:
    monkeypatch.setattr(support, "ON_CI", on_ci)
    expected = pytest.fail.Exception if on_ci else pytest.skip.Exception
    with pytest.raises(expected, match="no such thing"):
        unavailable("no such thing")


def test_children_import_this_checkout() -> None:
    result = run_python_code("import vm_memory; print(vm_memory.__file__)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(ROOT / "vm_memory" / "__init__.py")
