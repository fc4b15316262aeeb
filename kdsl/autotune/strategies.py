"""Search strategies: which configs of a tuning space to measure next.

A space maps each parameter name to its choices (the first is the default); a config picks one
choice per parameter. Strategies work on index tuples internally, so choices may be any JSON-able
value (lists included), and they never build the whole product: spaces of 10^12 configs are fine.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Iterator, Mapping, Sequence

from kdsl.schedule.recipe import choice_text

Config = dict[str, object]
Space = Mapping[str, Sequence[object]]
Index = tuple[int, ...]

# Auto picks exhaustive search up to this many configs.
AUTO_EXHAUSTIVE_LIMIT = 64


def space_size(space: Space) -> int:
    """The number of configs: the product of the choice counts (1 for an empty space)."""
    return math.prod(len(choices) for choices in space.values())


def default_config(space: Space) -> Config:
    return {name: choices[0] for name, choices in space.items()}


def config_key(config: Mapping[str, object]) -> tuple[tuple[str, str], ...]:
    """A hashable key for a config, independent of its key order and of list identity (a
    choice by its JSON text: a tuple as the list a saved config holds)."""
    return tuple(sorted((name, choice_text(value)) for name, value in config.items()))


class _LazyPermutation:
    """Uniform draws without replacement from range(n), code 0 first, in O(draws) memory.

    A Fisher-Yates shuffle that stores only the swapped slots, so n may be astronomically large.
    """

    def __init__(self, n: int, rng: random.Random) -> None:
        self._n = n
        self._rng = rng
        self._swaps: dict[int, int] = {}
        self._next = 0

    def draw(self) -> int | None:
        i = self._next
        if i >= self._n:
            return None
        self._next += 1
        if i == 0:
            return 0  # the default config leads
        j = self._rng.randrange(i, self._n)
        value = self._swaps.get(j, j)
        self._swaps[j] = self._swaps.pop(i, i)
        return value


class Strategy:
    """Proposes configs never proposed before and learns from their measured times."""

    name = "strategy"

    def __init__(self, space: Space, *, seed: int = 0) -> None:
        self.names = list(space)
        self.choices = [tuple(space[name]) for name in self.names]
        self._lookup: list[dict[str, int]] = []
        for name, choices in zip(self.names, self.choices):
            keys = {choice_text(c): i for i, c in enumerate(choices)}
            if not choices or len(keys) != len(choices):
                raise ValueError(f"parameter {name!r} needs at least one choice and no repeats")
            self._lookup.append(keys)
        self.size = space_size(space)
        self.rng = random.Random(seed)

    def propose(self, n: int) -> list[Config]:
        """Up to n configs never proposed before; [] when there is nothing more to try."""
        raise NotImplementedError

    def observe(self, config: Config, time_s: float | None) -> None:
        """The measured median time of a config; None marks an invalid or failing one."""

    def _config(self, index: Index) -> Config:
        return {name: self.choices[p][i] for p, (name, i) in enumerate(zip(self.names, index))}

    def _index(self, config: Mapping[str, object]) -> Index:
        try:
            return tuple(
                self._lookup[p][choice_text(config[name])] for p, name in enumerate(self.names)
            )
        except KeyError:
            raise ValueError(f"config {config!r} is not in the search space") from None

    def _decode(self, code: int) -> Index:
        # Mixed radix, last parameter fastest: the same order as itertools.product.
        index = []
        for choices in reversed(self.choices):
            code, digit = divmod(code, len(choices))
            index.append(digit)
        return tuple(reversed(index))


class Exhaustive(Strategy):
    """Every config in product order, which starts with the default."""

    name = "exhaustive"

    def __init__(self, space: Space, *, seed: int = 0) -> None:
        super().__init__(space, seed=seed)
        self._order: Iterator[Index] = itertools.product(*(range(len(c)) for c in self.choices))

    def propose(self, n: int) -> list[Config]:
        return [self._config(index) for index in itertools.islice(self._order, max(n, 0))]


class RandomSearch(Strategy):
    """Uniform samples without replacement, the default config first."""

    name = "random"

    def __init__(self, space: Space, *, seed: int = 0) -> None:
        super().__init__(space, seed=seed)
        self._order = _LazyPermutation(self.size, self.rng)

    def propose(self, n: int) -> list[Config]:
        out: list[Config] = []
        while len(out) < n and (code := self._order.draw()) is not None:
            out.append(self._config(self._decode(code)))
        return out


def _value_order(choices: Sequence[object]) -> list[int] | None:
    """Choice indices from smallest to largest value; None for a non-numeric parameter."""
    numbers = [c for c in choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
    if len(numbers) != len(choices):
        return None
    return sorted(range(len(numbers)), key=numbers.__getitem__)


class Evolutionary(Strategy):
    """A random first population, then mutants and crossovers of the best measured configs.

    Mutation changes one or two parameters; a numeric parameter usually moves to the next
    larger or smaller choice, since nearby tile sizes tend to time alike. When no unseen child
    turns up, the next config is a random unexplored one, so the whole space is eventually covered.
    """

    name = "evolutionary"

    def __init__(
        self,
        space: Space,
        *,
        seed: int = 0,
        population: int = 16,
        tournament: int = 3,
        crossover_rate: float = 0.5,
        neighbour_rate: float = 0.8,
        child_tries: int = 64,
    ) -> None:
        super().__init__(space, seed=seed)
        self.population = population
        self.tournament = tournament
        self.crossover_rate = crossover_rate
        self.neighbour_rate = neighbour_rate
        self.child_tries = child_tries
        self._random = _LazyPermutation(self.size, self.rng)
        self._seen: set[Index] = set()
        self._ranked: list[tuple[float, int, Index]] = []  # valid results, fastest first
        self._mutable = [p for p, choices in enumerate(self.choices) if len(choices) > 1]
        self._value_order = [_value_order(choices) for choices in self.choices]

    def propose(self, n: int) -> list[Config]:
        out: list[Config] = []
        while len(out) < n:
            child = None
            if len(self._seen) >= self.population and self._ranked:
                child = self._child()
            index = child if child is not None else self._unexplored()
            if index is None:
                break
            self._seen.add(index)
            out.append(self._config(index))
        return out

    def observe(self, config: Config, time_s: float | None) -> None:
        index = self._index(config)
        self._seen.add(index)
        if time_s is not None and math.isfinite(time_s):
            bisect.insort(self._ranked, (time_s, len(self._ranked), index))

    def _unexplored(self) -> Index | None:
        while (code := self._random.draw()) is not None:
            index = self._decode(code)
            if index not in self._seen:
                return index
        return None

    def _child(self) -> Index | None:
        for _ in range(self.child_tries):
            parent = self._select()
            if len(self._ranked) > 1 and self.rng.random() < self.crossover_rate:
                other = self._select()
                child = tuple(self.rng.choice(pair) for pair in zip(parent, other))
                if child in (parent, other) or self.rng.random() < 0.5:
                    child = self._mutate(child)
            else:
                child = self._mutate(parent)
            if child not in self._seen:
                return child
        return None

    def _select(self) -> Index:
        # Tournament among the best `population` results: strong but not total elitism.
        pool = self._ranked[: self.population]
        return min(self.rng.sample(pool, min(self.tournament, len(pool))))[2]

    def _mutate(self, index: Index) -> Index:
        if not self._mutable:
            return index
        count = min(len(self._mutable), 1 if self.rng.random() < 0.7 else 2)
        child = list(index)
        for p in self.rng.sample(self._mutable, count):
            child[p] = self._mutate_one(p, child[p])
        return tuple(child)

    def _mutate_one(self, p: int, current: int) -> int:
        order = self._value_order[p]
        if order is not None and self.rng.random() < self.neighbour_rate:
            pos = order.index(current)
            steps = [s for s in (pos - 1, pos + 1) if 0 <= s < len(order)]
            return order[self.rng.choice(steps)]
        other = self.rng.randrange(len(self.choices[p]) - 1)
        return other if other < current else other + 1


STRATEGIES: dict[str, type[Strategy]] = {
    s.name: s for s in (Exhaustive, RandomSearch, Evolutionary)
}


def make_strategy(name: str, space: Space, *, seed: int = 0) -> Strategy:
    """The named strategy; "auto" searches small spaces exhaustively and large ones by evolution."""
    if name == "auto":
        name = "exhaustive" if space_size(space) <= AUTO_EXHAUSTIVE_LIMIT else "evolutionary"
    if name not in STRATEGIES:
        valid = ", ".join([*STRATEGIES, "auto"])
        raise ValueError(f"unknown search strategy {name!r}; valid names: {valid}")
    return STRATEGIES[name](space, seed=seed)
