"""Monthly traffic from byte counters (pure): resets and restarts never double-count or lose whole periods."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.traffic import GIB, counter_total, month_bounds, overage_bytes

increments = st.lists(st.integers(min_value=0, max_value=10**9), max_size=40)


def as_counter(incs: list[int], resets: set[int], start: int = 0) -> list[int]:
    """Samples of a counter that grows by `incs`, restarting from zero before each index in `resets` where
    that shows as a drop (a restart that ends above the last value is indistinguishable from growth)."""
    value, out = start, [start]
    for i, inc in enumerate(incs):
        value = inc if i in resets and inc < value else value + inc
        out.append(value)
    return out


@given(increments, st.integers(min_value=0, max_value=10**12))
def test_without_resets_the_total_is_last_minus_first(incs: list[int], start: int) -> None:
    """A counter that never restarts: the total is what it grew by, whatever it started at."""
    samples = as_counter(incs, set(), start)
    assert counter_total(samples) == samples[-1] - samples[0]


@given(increments, st.sets(st.integers(min_value=0, max_value=39)))
def test_resets_lose_nothing_sampled_and_count_nothing_twice(incs: list[int], resets: set[int]) -> None:
    """With restarts the total is the sum of what was counted between samples (restarts where the value drops)."""
    samples = as_counter(incs, resets, start=10**13)
    expected = sum(incs)
    assert counter_total(samples) == expected


@given(st.lists(st.integers(min_value=0, max_value=10**12), max_size=30))
def test_never_negative_and_split_additive(samples: list[int]) -> None:
    """The total is never negative, and counting two halves that share a sample equals counting the whole."""
    assert counter_total(samples) >= 0
    for cut in range(1, len(samples)):
        assert counter_total(samples[:cut + 1]) + counter_total(samples[cut:]) == counter_total(samples)


def test_month_bounds_and_overage() -> None:
    """Months are UTC calendar months capped at now; a future month is refused; overage is beyond the plan."""
    now = datetime(2026, 12, 2, 17, 0, tzinfo=UTC)
    assert month_bounds(None, now) == (datetime(2026, 12, 1, tzinfo=UTC), now, "2026-12")
    assert month_bounds("2026-11", now)[1] == datetime(2026, 12, 1, tzinfo=UTC)
    with pytest.raises(ValueError):
        month_bounds("2027-01", now)
    with pytest.raises(ValueError):
        month_bounds("2026-13", now)
    assert overage_bytes(5 * GIB, None) == 0 and overage_bytes(5 * GIB, 4) == GIB and overage_bytes(GIB, 4) == 0
