"""Successive halving for several objectives (the rule of MOASHA, Schmucker et al. 2021), as pure functions.

Optuna refuses ``trial.report`` in multi-objective studies and Ray's schedulers read one metric, so an accuracy x
params/MACs search would train every trial to the end. Here the cost of a candidate (params, MACs) is known
before training, so at a rung (an epoch count) a trial's point is (accuracy so far, cost), and it can be compared
with every other trial that reached the same rung: the trials at a rung are ordered by non-dominated rank
(NSGA-II's fronts), ties inside a front broken by crowding distance (extremes and isolated points first, so the
kept set spreads along the front), and a trial continues only if it is among the best ``max(1, n // eta)`` of the
``n`` trials seen at that rung, itself included (asynchronous successive halving: decided when the trial
arrives, never revised). With one objective this is exactly ASHA's rule.

Every objective here is *minimised*: pass ``-accuracy``. Engines keep the rung points; this module only decides.
"""

from __future__ import annotations

import math
from typing import Sequence

Point = Sequence[float]


def dominates(a: Point, b: Point) -> bool:
    """a is no worse than b in every objective and better in one (all minimised)."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def nondominated_ranks(points: Sequence[Point]) -> list[int]:
    """Front index of each point: 0 for the Pareto front, 1 for the front once that is removed, and so on."""
    n = len(points)
    beaten_by = [0] * n  # how many points dominate i
    beats: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if dominates(points[i], points[j]):
                beats[i].append(j)
                beaten_by[j] += 1
            elif dominates(points[j], points[i]):
                beats[j].append(i)
                beaten_by[i] += 1
    ranks = [0] * n
    front = [i for i in range(n) if beaten_by[i] == 0]
    level = 0
    while front:
        nxt = []
        for i in front:
            ranks[i] = level
            for j in beats[i]:
                beaten_by[j] -= 1
                if beaten_by[j] == 0:
                    nxt.append(j)
        front, level = nxt, level + 1
    return ranks


def crowding_distances(points: Sequence[Point]) -> list[float]:
    """NSGA-II crowding distance of each point within its own set (the extremes of each objective: infinite)."""
    n = len(points)
    if n <= 2:
        return [math.inf] * n
    distance = [0.0] * n
    for m in range(len(points[0])):
        order = sorted(range(n), key=lambda i: points[i][m])
        low, high = points[order[0]][m], points[order[-1]][m]
        distance[order[0]] = distance[order[-1]] = math.inf
        if high == low:
            continue
        for before, i, after in zip(order, order[1:-1], order[2:]):
            distance[i] += (points[after][m] - points[before][m]) / (high - low)
    return distance


def order(points: Sequence[Point]) -> list[int]:
    """Indices from best to worst: by front, then by crowding distance within the front (larger first), then by
    position (earlier first), so the order is deterministic."""
    ranks = nondominated_ranks(points)
    crowd = [0.0] * len(points)
    for level in set(ranks):
        members = [i for i, r in enumerate(ranks) if r == level]
        for i, d in zip(members, crowding_distances([points[i] for i in members])):
            crowd[i] = d
    return sorted(range(len(points)), key=lambda i: (ranks[i], -crowd[i], i))


def keep_count(n: int, eta: int) -> int:
    """How many of ``n`` trials at a rung continue (at least one)."""
    return max(1, n // eta)


def should_stop(point: Point, others: Sequence[Point], eta: int = 3) -> bool:
    """Stop a trial at a rung: ``point`` is its (minimised) objectives there, ``others`` those of every other trial
    that reached the same rung before it. It continues only within the best ``max(1, n // eta)``."""
    if eta < 2:
        raise ValueError(f"reduction factor eta={eta} must be at least 2")
    points = list(others) + [point]
    return order(points).index(len(points) - 1) >= keep_count(len(points), eta)


def rungs(min_epochs: int, max_epochs: int, eta: int = 3) -> list[int]:
    """Epochs at which trials are compared: min_epochs * eta^k below max_epochs (the last epoch is no rung: a
    trial that got there is complete, stopping it would save nothing)."""
    out, e = [], max(1, min_epochs)
    while e < max_epochs:
        out.append(e)
        e *= eta
    return out
