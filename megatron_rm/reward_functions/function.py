"""A reward function named in a config, found and called with TRL's calling convention.

`reward.functions` names each function as a built-in (`gsm8k`, `math`, `exact_match`), a file
(`FILE.py:NAME`) or an importable module (`package.module:NAME`). Every function is called as
TRL calls its reward functions, `fn(prompts=..., completions=..., **columns)`, where each other
field of the prompt rows arrives as a list with one value per completion, so a function written
for TRL works unchanged. What it returns is checked: one number or None per completion.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

from megatron_rm.errors import ConfigError, DataError
from megatron_rm.reward_functions.builtin import BUILTINS, REFERENCE_COLUMNS

# What TRL passes besides the prompt rows' columns; a function may name them without a column.
_CALL_ARGUMENTS = ("prompts", "completions", "completion_ids")


@dataclass(frozen=True)
class RewardFunction:
    name: str
    """As the config names it: the name of its metrics and of its errors."""
    fn: Callable

    @classmethod
    def load(cls, spec: str, key: str = "reward.functions") -> RewardFunction:
        """The function `spec` names; a ConfigError naming `key` and what is wrong otherwise."""
        if spec in BUILTINS:
            return cls(spec, BUILTINS[spec])
        where, _, name = spec.rpartition(":")
        if not where or not name.isidentifier():
            raise ConfigError(f"{key}: {spec!r} must be a built-in ({', '.join(BUILTINS)}), FILE.py:NAME or "
                              "package.module:NAME")
        module = _module_from_file(where, key) if where.endswith(".py") else _module(where, key)
        fn = getattr(module, name, None)
        if not callable(fn):
            raise ConfigError(f"{key}: {where} has no function {name!r}"
                              + ("" if fn is None else f" ({name} is a {type(fn).__name__})"))
        return cls(spec, fn)

    def column_problem(self, rows: Sequence[Mapping], locations: Sequence[str]) -> str | None:
        """Why the prompt rows cannot feed this function, naming the first row (`file:line`)
        without a column it needs, or None. A built-in needs a reference answer column in some
        row (a row without one gets no reward); a function of its own needs every parameter it
        names without a default in every row."""
        if self.name in BUILTINS:
            if any(column in row for row in rows for column in REFERENCE_COLUMNS):
                return None
            return (f"{locations[0]}: reward function {self.name} needs a reference answer, and no prompt row has "
                    f"any of the columns {', '.join(REFERENCE_COLUMNS)}")
        try:
            parameters = inspect.signature(self.fn).parameters.values()
        except (TypeError, ValueError):  # a callable without a signature Python can read
            return None
        needed = [p.name for p in parameters if p.default is p.empty and p.name not in _CALL_ARGUMENTS
                  and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        for row, location in zip(rows, locations):
            missing = [name for name in needed if name not in row]
            if missing:
                return (f"{location}: the prompt row has no {', '.join(missing)} column, which reward function "
                        f"{self.name} needs")
        return None

    def __call__(self, prompts: Sequence, completions: Sequence[str], columns: dict[str, list],
                 locations: Sequence[str]) -> list[float | None]:
        """One reward (a float, or None: no reward) per completion; `columns` holds the prompt rows'
        other fields, one value per completion, and `locations` each completion's prompt row
        (`file:line`) for messages."""
        try:
            rewards = self.fn(prompts=list(prompts), completions=list(completions), **columns)
        except Exception as error:  # the user's code: any failure stops the run, named
            raise DataError(f"reward function {self.name} raised {type(error).__name__}: {error} (on the rows "
                            f"from {locations[0]})") from error
        listed = isinstance(rewards, Sequence) and not isinstance(rewards, (str, bytes))
        if not listed or len(rewards) != len(completions):
            got = f"{len(rewards)} values" if listed else f"a {type(rewards).__name__}"
            raise DataError(f"reward function {self.name} returned {got} for {len(completions)} completions "
                            f"(the rows from {locations[0]}): it must return one number or None per completion")
        return [self._checked(reward, location) for reward, location in zip(rewards, locations)]

    def _checked(self, reward, location: str) -> float | None:
        if reward is None:
            return None
        if isinstance(reward, bool) or not isinstance(reward, Real) or not math.isfinite(reward):
            raise DataError(f"reward function {self.name} returned {reward!r} for the row at {location}: "
                            "a reward is a finite number, or None for no reward")
        return float(reward)


def _module_from_file(path: str, key: str):
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{key}: the reward function file {file} does not exist")
    module_name = "megatron_rm_reward_" + hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look their module up here
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise ConfigError(f"{key}: {file} does not import: {type(error).__name__}: {error}") from error
    return module


def _module(name: str, key: str):
    try:
        return importlib.import_module(name)
    except Exception as error:
        raise ConfigError(f"{key}: module {name} does not import: {type(error).__name__}: {error}") from error
