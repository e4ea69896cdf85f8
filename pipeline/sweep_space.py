"""A sweep's search space: SPACE.yaml read into dimensions, every value checked, the trials drawn up front.

    train.lr: {loguniform: [1e-4, 1e-2]}     model.d_model: {choice: [64, 128]}     seed: {grid: [1, 2]}
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import ConfigError, PipelineConfig, config_from_dict

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "grid")


@dataclass(frozen=True)
class Dimension:
    """One swept key: `train.lr: {loguniform: [1e-4, 1e-2]}` -> Dimension("train.lr", "loguniform", (1e-4, 1e-2))."""

    key: str
    kind: str
    values: tuple[Any, ...]  # the choices / grid points, or (low, high)
    integer: bool = False  # the key holds an int: uniform draws are rounded

    def draw(self, rng: random.Random) -> Any:
        if self.kind == "choice":
            return rng.choice(self.values)
        low, high = self.values
        if self.kind == "uniform":
            x = rng.uniform(low, high)
        else:
            x = math.exp(rng.uniform(math.log(low), math.log(high)))
        return round(x) if self.integer else x


def load_space(path: str | Path, base: PipelineConfig) -> list[Dimension]:
    """Read SPACE.yaml and check every value a trial can take against the config's own checks.

    Keys are dotted (`train.lr:`) or nested (`train: {lr: ...}`). A wrong key, an unknown
    distribution or an out-of-range value is a ConfigError naming the space file and the key path.
    """
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"search space {p} does not exist")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{p}: expected a mapping of config keys to distributions, e.g. 'train.lr: {{loguniform: [1e-4, 1e-2]}}'")
    defaults = base.to_dict()
    dims = [_dimension(p, key, spec, defaults) for key, spec in _flatten(raw, defaults)]
    for d in dims:
        for value in d.values:  # every choice and grid point; a range's two ends
            _check_value(p, base, d.key, value)
    return dims


def _flatten(raw: dict[str, Any], sections: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """{'train': {'lr': SPEC}} -> [('train.lr', SPEC)]: a mapping under a config section is read as
    more keys, any other mapping as a distribution."""
    out = []
    for k, v in raw.items():
        key, node = f"{prefix}{k}", sections.get(k) if isinstance(sections, dict) else None
        is_spec = isinstance(v, dict) and len(v) == 1 and next(iter(v)) in DISTRIBUTIONS
        if isinstance(v, dict) and isinstance(node, dict) and not is_spec:
            out += _flatten(v, node, key + ".")
        else:
            out.append((key, v))
    return out


def _dimension(path: Path, key: str, spec: Any, defaults: dict[str, Any]) -> Dimension:
    where = f"{path} {key}"
    node: Any = defaults
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            allowed = ", ".join(node) if isinstance(node, dict) else "none (it is a value)"
            raise ConfigError(f"{where}: unknown config key '{key}'; allowed at '{part}': {allowed}")
        node = node[part]
    if isinstance(node, dict):
        raise ConfigError(f"{where}: '{key}' is a section, not a value; sweep one of its keys")
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: expected one of {{{', '.join(DISTRIBUTIONS)}}}: [...], got {spec!r}")
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: {kind} takes a non-empty list, got {values!r}")
    integer = isinstance(node, int) and not isinstance(node, bool)
    if kind in ("uniform", "loguniform"):
        if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ConfigError(f"{where}: {kind} takes [low, high] numbers, got {values!r}")
        low, high = values
        if not low < high:
            raise ConfigError(f"{where}: {kind} needs low < high, got [{low}, {high}]")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"{where}: loguniform needs low > 0, got {low}")
        if not integer:
            values = [float(low), float(high)]
    return Dimension(key, kind, tuple(values), integer)


def _check_value(path: Path, base: PipelineConfig, key: str, value: Any) -> None:
    try:
        with_value(base, {key: value})
    except ConfigError as e:
        raise ConfigError(f"{path} {key}: {e}") from None


def with_value(base: PipelineConfig, values: dict[str, Any]) -> PipelineConfig:
    """`base` with dotted keys set, through the same checks as a config file."""
    raw = base.to_dict()
    for key, value in values.items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return config_from_dict(raw)


def draw_trials(dims: list[Dimension], n: int, seed: int) -> list[dict[str, Any]]:
    """`n` draws per grid point (as Tune's num_samples), in a fixed order; duplicates skipped.

    >>> dims = [Dimension("train.lr", "choice", (0.1, 0.2)), Dimension("seed", "grid", (1, 2))]
    >>> len(draw_trials(dims, 2, seed=0))
    4
    """
    rng = random.Random(seed)
    grid = [d for d in dims if d.kind == "grid"]
    drawn = [d for d in dims if d.kind != "grid"]
    trials: list[dict[str, Any]] = []
    for point in itertools.product(*(d.values for d in grid)) if grid else [()]:
        fixed = {d.key: v for d, v in zip(grid, point)}
        seen: list[dict[str, Any]] = []
        for _ in range(n * 20):  # a small discrete space runs out: fewer trials, never repeated ones
            if len(seen) == n:
                break
            t = fixed | {d.key: d.draw(rng) for d in drawn}
            if t not in seen:
                seen.append(t)
        trials += seen
    return trials
