"""Monthly traffic per VPS from the agent's byte counters: robust to counter resets. Pure.

A counter (`hostplane_vps_network_*_bytes_total`) is cumulative since its QEMU process started:
a guest restart, a move to another node or a rebuild starts it again at zero. `counter_total`
adds every increase between consecutive samples and, where the value went down, the new value
(what was counted since the reset). Agent restarts do not reset it (the counters are libvirt's).
Bytes between the last sample before a reset and the reset itself are lost (at most one scrape
interval's worth); nothing is ever counted twice.

Billing hook: `overage_bytes(used, included_gib)` is what a plan's `trafficGiB` does not cover;
nothing charges for it yet (a charge would go through controllers/charging.py like hourly use).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

GIB = 1024**3


def counter_total(values: Iterable[float]) -> int:
    """What a monotonic counter counted over a run of samples (oldest first), resets included."""
    total = 0.0
    previous: float | None = None
    for v in values:
        if previous is not None:
            total += v - previous if v >= previous else v
        previous = v
    return round(total)


def series_total(series: Sequence[Sequence[float]]) -> int:
    """The sum of `counter_total` over several series (one per node a VPS ran on), each [value, ...]."""
    return sum(counter_total(s) for s in series)


def month_bounds(month: str | None, now: datetime) -> tuple[datetime, datetime, str]:
    """(start, end, "YYYY-MM") of the calendar month `month` (UTC; default: the current one), end capped at now.

    ValueError for a malformed month or one in the future."""
    if month is None:
        start = datetime(now.year, now.month, 1, tzinfo=UTC)
    else:
        start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    following = datetime(start.year + (start.month == 12), start.month % 12 + 1, 1, tzinfo=UTC)
    if start > now:
        raise ValueError(f"month {start:%Y-%m} has not begun")
    return start, min(following, now), f"{start:%Y-%m}"


def overage_bytes(used: int, included_gib: int | None) -> int:
    """Bytes beyond what the plan includes (0 without a limit): the hook for a future overage charge."""
    if included_gib is None:
        return 0
    return max(0, used - included_gib * GIB)
