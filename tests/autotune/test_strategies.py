"""Search strategies: coverage without repeats, determinism, and evolution beating random search."""

from __future__ import annotations

import itertools
import statistics
import time
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kdsl.autotune.strategies import (
    Evolutionary,
    Exhaustive,
    RandomSearch,
    Strategy,
    config_key,
    default_config,
    make_strategy,
    space_size,
)

CHOICE = st.one_of(
    st.integers(-4, 300),
    st.sampled_from(["a", "b", "c"]),
    st.booleans(),
    st.lists(st.integers(0, 3), max_size=2),
)
SMALL_SPACES = st.dictionaries(
    st.sampled_from(["tile_i", "tile_j", "unroll", "order", "vec"]),
    st.lists(CHOICE, min_size=1, max_size=4, unique_by=repr).map(tuple),
    max_size=4,
)
KINDS = [Exhaustive, RandomSearch, Evolutionary]

# 6 params x 8 choices; the time grows with the squared distance from a hidden optimum.
BIG = {f"p{i}": tuple(range(8)) for i in range(6)}
OPTIMUM = (5, 2, 7, 3, 1, 6)
HUGE = {f"p{i}": tuple(range(10)) for i in range(12)}  # 10^12 configs


def objective(config: dict[str, object]) -> float:
    return 1.0 + sum((config[f"p{i}"] - best) ** 2 for i, best in enumerate(OPTIMUM))


def top_percent_threshold(fraction: float) -> float:
    """The time that the best `fraction` of BIG reaches, by convolving the per-param costs."""
    totals: Counter[int] = Counter({0: 1})
    for best in OPTIMUM:
        step = Counter((i - best) ** 2 for i in range(8))
        grown: Counter[int] = Counter()
        for (a, n), (b, m) in itertools.product(totals.items(), step.items()):
            grown[a + b] += n * m
        totals = grown
    wanted, seen = fraction * space_size(BIG), 0
    for total in sorted(totals):
        seen += totals[total]
        if seen >= wanted:
            return 1.0 + total
    raise AssertionError("unreachable")


def drain(strategy: Strategy, evaluate=None, batch: int = 7, budget: int = 10**6) -> list[dict]:
    """Propose, measure and observe until the strategy runs dry or the budget is spent."""
    proposed: list[dict] = []
    while len(proposed) < budget:
        configs = strategy.propose(min(batch, budget - len(proposed)))
        if not configs:
            break
        for config in configs:
            strategy.observe(config, evaluate(config) if evaluate else None)
        proposed += configs
    return proposed


def best_time(strategy: Strategy, budget: int = 300) -> float:
    return min(objective(c) for c in drain(strategy, objective, batch=8, budget=budget))


def all_keys(space) -> set:
    return {config_key(dict(zip(space, combo))) for combo in itertools.product(*space.values())}


def test_space_basics():
    space = {"tile": (32, 16, 64), "order": ("ij", "ji"), "perm": ([0, 1], [1, 0])}
    assert space_size(space) == 12
    assert space_size({}) == 1
    assert default_config(space) == {"tile": 32, "order": "ij", "perm": [0, 1]}
    assert default_config({}) == {}
    assert config_key({"a": 1, "b": [2]}) == config_key({"b": [2], "a": 1})
    assert config_key({"a": 1}) != config_key({"a": True})
    hash(config_key({"perm": [0, 1]}))


@pytest.mark.parametrize("kind", KINDS)
@given(space=SMALL_SPACES)
def test_covers_the_space_once_default_first(kind, space):
    strategy = kind(space, seed=3)
    proposed = drain(strategy, evaluate=lambda c: float(len(repr(c))))
    keys = [config_key(c) for c in proposed]
    assert proposed[0] == default_config(space)
    assert len(keys) == len(set(keys)) == space_size(space)
    assert set(keys) == all_keys(space)
    assert strategy.propose(5) == []


def test_exhaustive_is_product_order():
    space = {"a": (1, 2), "b": ("x", "y", "z")}
    expected = [dict(zip(space, combo)) for combo in itertools.product(*space.values())]
    strategy = Exhaustive(space)
    assert strategy.propose(4) + strategy.propose(100) == expected
    assert strategy.propose(1) == []


@pytest.mark.parametrize("kind", [RandomSearch, Evolutionary])
def test_deterministic_per_seed(kind):
    def run(seed: int) -> list[dict]:
        return drain(kind(BIG, seed=seed), objective, budget=120)

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_random_search_is_spread_out():
    counts = Counter(c["p0"] for c in RandomSearch(BIG, seed=0).propose(800))
    assert set(counts) == set(range(8))
    assert max(counts.values()) < 3 * min(counts.values())


def test_evolutionary_beats_random_search():
    seeds = range(5)
    evolved = [best_time(Evolutionary(BIG, seed=s)) for s in seeds]
    sampled = [best_time(RandomSearch(BIG, seed=s)) for s in seeds]
    assert max(evolved) <= top_percent_threshold(0.01)
    assert statistics.mean(evolved) < statistics.mean(sampled)
    assert max(evolved) < statistics.median(sampled)


def test_evolutionary_survives_invalid_configs():
    def sometimes_invalid(config):
        return None if config["p0"] % 2 else objective(config)

    proposed = drain(Evolutionary(BIG, seed=0), sometimes_invalid, budget=300)
    keys = {config_key(c) for c in proposed}
    assert len(keys) == len(proposed) == 300
    assert min(objective(c) for c in proposed if c["p0"] % 2 == 0) <= top_percent_threshold(0.01)


@given(space=SMALL_SPACES)
def test_evolutionary_with_every_config_invalid_still_exhausts(space):
    strategy = Evolutionary(space, seed=0, population=2)
    assert len(drain(strategy)) == space_size(space)
    assert strategy.propose(3) == []


def test_observe_rejects_foreign_configs():
    strategy = Evolutionary({"a": (1, 2)})
    with pytest.raises(ValueError, match="not in the search space"):
        strategy.observe({"a": 3}, 1.0)
    with pytest.raises(ValueError, match="no repeats"):
        Exhaustive({"a": (1, 1)})


def test_make_strategy():
    small = {"a": tuple(range(8)), "b": tuple(range(8))}
    large = {**small, "c": (0, 1)}
    assert isinstance(make_strategy("auto", small), Exhaustive)
    assert isinstance(make_strategy("auto", large), Evolutionary)
    assert isinstance(make_strategy("random", small, seed=4), RandomSearch)
    assert make_strategy("evolutionary", small).name == "evolutionary"
    with pytest.raises(ValueError, match="exhaustive, random, evolutionary, auto"):
        make_strategy("annealing", small)


@pytest.mark.parametrize("kind", KINDS)
def test_huge_space_is_never_materialized(kind):
    start = time.perf_counter()
    strategy = kind(HUGE, seed=0)
    proposed = drain(strategy, lambda c: float(sum(c.values())), batch=50, budget=500)
    assert space_size(HUGE) == 10**12
    assert len({config_key(c) for c in proposed}) == 500
    assert time.perf_counter() - start < 1.0
