"""Exact percentiles by nearest rank over histograms (the KPIs' ``pdd_ms_p50`` / ``p95``).

A histogram is either a mapping value -> count, or, as the collector's roll-ups read it, values
in ascending order (a value may repeat) with their counts (each > 0), or both: a bucket's
sorted histograms and the few values of a range's ragged edges.  Every form gives the same
ranks: the smallest value with at least that % of the n values at or below it.
"""

from __future__ import annotations

import bisect
import itertools
import math
from typing import Mapping, Sequence

Sorted = tuple[Sequence[int], Sequence[int]]  # (values ascending, their counts)


def rank_positions(n: int, percents: Sequence[int]) -> list[int]:
    return [max(1, math.ceil(n * percent / 100)) for percent in percents]


def nearest_ranks(histogram: Mapping[int, int], n: int, percents: Sequence[int]) -> list[int]:
    """For each of ``percents`` (ascending), the smallest value with at least
    that % of the n values at or below it (nearest rank), in one walk."""
    ranks = rank_positions(n, percents)
    found: list[int] = []
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        while seen >= ranks[len(found)]:
            found.append(value)
            if len(found) == len(ranks):
                return found
    raise ValueError("histogram holds fewer than %d values" % n)


def sorted_ranks(values: Sequence[int], counts: Sequence[int], percents: Sequence[int]) -> tuple[int, list[int]]:
    """(how many values, ``nearest_ranks``) of a sorted histogram, by bisection
    of the running counts, not a walk in Python."""
    running = list(itertools.accumulate(counts))
    n = running[-1] if running else 0
    if not n:
        return 0, []
    return n, [values[bisect.bisect_left(running, rank)] for rank in rank_positions(n, percents)]


def ranks(histogram: Mapping[int, int], ranked: Sequence[Sorted], percents: Sequence[int]) -> tuple[int, list[int]]:
    """(how many values, their nearest ranks) of ``histogram`` and the sorted
    histograms ``ranked`` together: one sorted histogram with the few
    ``histogram`` values put in place; several, or none, as one mapping."""
    if len(ranked) == 1:
        values, counts = ranked[0]
        if histogram:
            values, counts = list(values), list(counts)
            for value, n in histogram.items():
                at = bisect.bisect_right(values, value)
                values.insert(at, value)
                counts.insert(at, n)
        return sorted_ranks(values, counts, percents)
    every = dict(histogram) if ranked else histogram
    for values, counts in ranked:
        for value, n in zip(values, counts):
            every[value] = every.get(value, 0) + n
    n = sum(every.values())
    return n, nearest_ranks(every, n, percents) if n else []
