"""The search space of a sweep: a YAML file mapping recipe keys to ranges.

```yaml
model.init_args.learning_rate: {loguniform: [1.0e-4, 1.0e-2]}
model.init_args.n_epochs: {int: [1, 4]}
model.init_args.hidden_sizes: {choice: [[32, 32], [64, 64]]}
model.init_args.ent_weight: {uniform: [0.0, 0.01]}
data.init_args.n_episodes: [10, 50]          # a plain list is a choice
```

Keys are ``fit`` options as spelt in a recipe: ``model.init_args.X`` (``model.X`` is
accepted), ``data.init_args.X`` and ``trainer.X``. They are checked against the
signatures of the recipe's classes before anything runs. This module imports neither Ray
nor Optuna until a distribution is asked for.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tdimitation.errors import SweepError

#: Distribution kinds a space entry may name.
KINDS = ("uniform", "loguniform", "int", "logint", "choice")
#: The sections of a recipe a space may sample.
SECTIONS = ("model", "data", "trainer")
#: The option each trial's seed is given through (``--seeds K``).
SEED_KEY = "model.init_args.seed"
_EXAMPLE = "model.init_args.learning_rate: {loguniform: [1.0e-4, 1.0e-2]}"


@dataclass(frozen=True)
class Parameter:
    """One sampled recipe key.

    Attributes:
        key: the fit option, e.g. ``model.init_args.learning_rate``.
        kind: one of :data:`KINDS`.
        values: the bounds ``(low, high)`` (inclusive), or the choices.
    """

    key: str
    kind: str
    values: tuple

    @property
    def name(self) -> str:
        """The parameter's name in its class (the key's last part)."""
        return self.key.rsplit(".", 1)[-1]

    def _json_choices(self) -> bool:
        # Optuna's categorical choices are scalars; lists and mappings travel as JSON.
        return self.kind == "choice" and any(
            not isinstance(v, str | int | float | bool) and v is not None for v in self.values
        )

    def distribution(self):
        """This parameter as an Optuna distribution."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind == "choice":
            choices = self.values
            if self._json_choices():
                choices = tuple(json.dumps(v) for v in self.values)
            return CategoricalDistribution(choices)
        low, high = self.values
        if self.kind in ("int", "logint"):
            return IntDistribution(int(low), int(high), log=self.kind == "logint")
        return FloatDistribution(float(low), float(high), log=self.kind == "loguniform")

    def decode(self, sampled: Any) -> Any:
        """The recipe value of a value the searcher sampled."""
        return json.loads(sampled) if self._json_choices() else sampled

    def example(self) -> Any:
        """A value of the space (the low bound, the first choice), to check the recipe with."""
        return self.values[0]


def load_space(path: str | Path) -> list[Parameter]:
    """Read and check a search-space file (see the module docstring).

    Raises:
        SweepError: a missing or unreadable file, invalid YAML, an empty space, an entry
            that is not a range or a choice.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SweepError(
            f"search space {path} does not exist; give a YAML file of keys and ranges, e.g. "
            f"{_EXAMPLE}"
        )
    try:
        mapping = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise SweepError(f"search space {path} is not valid YAML{where}; fix the file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SweepError(f"search space {path} cannot be read ({err}); fix the file") from None
    return parse_space(mapping, str(path))


def parse_space(mapping: Any, source: str = "search space") -> list[Parameter]:
    """Check a search space given as a mapping; returns its parameters in file order."""
    if mapping is None or mapping == {}:
        raise SweepError(f"{source} is empty: give at least one key to search, e.g. {_EXAMPLE}")
    if not isinstance(mapping, dict):
        raise SweepError(
            f"{source} must map recipe keys to ranges (got a {type(mapping).__name__}), e.g. "
            f"{_EXAMPLE}"
        )
    params = []
    for key, spec in mapping.items():
        full = _full_key(str(key), source)
        if full == SEED_KEY:
            raise SweepError(
                f"{source}: the sweep sets {SEED_KEY} itself (--seeds K runs each "
                "configuration on K seeds); remove it from the space"
            )
        kind, values = _parse_entry(full, spec, source)
        params.append(Parameter(full, kind, values))
    keys = [p.key for p in params]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise SweepError(f"{source} names {duplicates[0]} twice (once as model.X); keep one")
    return params


def _full_key(key: str, source: str) -> str:
    section, _, rest = key.partition(".")
    if section not in SECTIONS or not rest:
        raise SweepError(
            f"{source}: key {key!r} is not a recipe key; keys start with model.init_args., "
            "data.init_args. or trainer. (e.g. model.init_args.learning_rate)"
        )
    if section in ("model", "data") and not rest.startswith("init_args."):
        rest = "init_args." + rest
    if rest.count(".") > (1 if section != "trainer" else 0):
        raise SweepError(
            f"{source}: key {key!r} is nested; a space samples whole constructor arguments "
            "(e.g. model.init_args.hidden_sizes: {choice: [[32, 32], [64, 64]]})"
        )
    return f"{section}.{rest}"


def _parse_entry(key: str, spec: Any, source: str) -> tuple[str, tuple]:
    if isinstance(spec, list):
        spec = {"choice": spec}
    if not isinstance(spec, dict) or len(spec) != 1:
        raise SweepError(
            f"{source}: {key} must be one of {{{', '.join(k + ': ...' for k in KINDS)}}} or a "
            f"list of choices (got {spec!r}); a fixed value belongs in the recipe"
        )
    kind, values = next(iter(spec.items()))
    if kind not in KINDS:
        hint = difflib.get_close_matches(str(kind), KINDS, n=1)
        did_you_mean = f"; did you mean {hint[0]}?" if hint else ""
        raise SweepError(
            f"{source}: {key} has unknown distribution {kind!r}; use one of "
            f"{', '.join(KINDS)}{did_you_mean}"
        )
    if kind == "choice":
        if not isinstance(values, list) or not values:
            raise SweepError(f"{source}: {key}'s choice needs a non-empty list of values")
        return kind, tuple(values)
    if not (
        isinstance(values, list)
        and len(values) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        and all(math.isfinite(v) for v in values)
    ):
        raise SweepError(f"{source}: {key}'s {kind} needs two finite numbers [low, high]")
    low, high = values
    if not low < high:
        raise SweepError(
            f"{source}: {key}'s {kind} range [{low}, {high}] is empty; give low < high"
        )
    if kind in ("int", "logint") and not (float(low).is_integer() and float(high).is_integer()):
        raise SweepError(f"{source}: {key}'s {kind} bounds must be integers, got [{low}, {high}]")
    if kind in ("loguniform", "logint") and low <= 0:
        raise SweepError(f"{source}: {key}'s {kind} needs a positive low bound, got {low}")
    if kind in ("int", "logint"):
        return kind, (int(low), int(high))
    return kind, (float(low), float(high))


# ------------------------------------------------------------------ key checks
def check_keys(params: list[Parameter], recipe: dict[str, Any], source: str) -> None:
    """Refuse keys the recipe's model, data module or the Trainer do not take.

    ``recipe`` is the recipe's YAML as a mapping (its ``class_path`` names the classes).

    Raises:
        SweepError: naming the key, the class and the closest name ("did you mean").
    """
    for param in params:
        section = param.key.split(".", 1)[0]
        if section == "trainer":
            import lightning as L

            cls, accepted = L.Trainer, _arguments(L.Trainer)
        else:
            cls = _recipe_class(recipe, section, source, param.key)
            accepted = _arguments(cls)
        if accepted is None or param.name in accepted:
            continue
        # An abbreviation first ("lr": learning_rate), then the closest spelling.
        hint = sorted(a for a in accepted if _initials(a) == param.name.lower())[:1]
        hint = hint or difflib.get_close_matches(param.name, sorted(accepted), n=1, cutoff=0.5)
        did_you_mean = f"; did you mean {hint[0]}?" if hint else ""
        raise SweepError(
            f"{source}: {cls.__name__} has no parameter {param.name!r} ({param.key}){did_you_mean}"
        )


def _initials(name: str) -> str:
    parts = [part for part in name.split("_") if part]
    return "".join(part[0] for part in parts).lower() if len(parts) > 1 else ""


def _recipe_class(recipe: dict[str, Any], section: str, source: str, key: str) -> type:
    entry = recipe.get(section)
    class_path = entry.get("class_path") if isinstance(entry, dict) else None
    if not class_path:
        raise SweepError(
            f"{source}: {key} samples the recipe's {section} section, which the recipe does "
            f"not have (no {section}.class_path)"
        )
    if "." not in class_path:
        from tdimitation.cli import ALGORITHMS

        class_path = ALGORITHMS.get(class_path, class_path)
    module_name, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        raise SweepError(
            f"the recipe's {section}.class_path {class_path} cannot be imported; fix the recipe"
        ) from None


def _arguments(cls: type) -> set[str] | None:
    """The constructor arguments of ``cls`` (through ``**kwargs`` to its bases); None: any."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            parameters = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            return None
        names |= {p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)} - {
            "self"
        }
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            return names
    return names
