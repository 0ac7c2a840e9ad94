"""Sweeps in one program: config.sweep's values on the axis that holds the seeds.

`config.sweep = "beta=0.25,0.5,1;learning_rate=1e-3,3e-4"` trains every combination of
the values, each with config.num_seeds seeds: members = the product of the value counts
x num_seeds, vmapped in one compiled program on one leading axis of the train state (the
seeds axis of a run without a sweep). Member m is combination m // num_seeds (the first
field's values vary slowest) with seed config.seed + m % num_seeds, and ends with the
parameters that a separate run of those values and that seed would have.

Only fields that change no shape and no code path can be swept (SWEEPABLE), and fields
that a loss of one's own reads from its config (any field the default config lacks):
the loss receives them in its `hparams` argument.
"""

import itertools
import math
from typing import Any

import ml_collections
import numpy as np

#: The built-in fields a sweep may vary: each only enters arithmetic of the step.
SWEEPABLE = (
  "beta",
  "learning_rate",
  "free_bits",
  "kl_warmup_epochs",
  "adam_b1",
  "adam_b2",
  "adam_eps",
  "gaussian_logvar",  # with likelihood="gaussian" (a fixed variance)
)


def parse(spec: str | dict) -> dict[str, tuple[float, ...]]:
  """config.sweep as {field: values}: "a=1,2;b=3" or a dict of lists."""
  if isinstance(spec, dict):
    items = spec.items()
  else:
    items = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
      if "=" not in part:
        raise ValueError(
          f"Bad config: sweep part {part!r} is not FIELD=V1,V2,...; e.g. "
          "sweep='beta=0.5,1;learning_rate=1e-3,3e-4'."
        )
      name, values = part.split("=", 1)
      items.append((name.strip(), [v for v in values.split(",") if v.strip()]))
  sweep = {}
  for name, values in items:
    try:
      sweep[name] = tuple(float(v) for v in values)
    except (TypeError, ValueError):
      raise ValueError(
        f"Bad config: sweep values of {name!r} must be numbers, got {values!r}."
      ) from None
    if not sweep[name]:
      raise ValueError(f"Bad config: sweep field {name!r} has no values.")
  return sweep


def format_spec(sweep: dict) -> str:
  """The config.sweep string of {field: values}."""
  return ";".join(
    f"{name}={','.join(repr(float(v)) for v in values)}" for name, values in sweep.items()
  )


def check(config: ml_collections.ConfigDict, default_fields) -> None:
  """Raises a ValueError naming a swept field that changes shapes or code, before any work."""
  sweep = parse(config.sweep)
  if "free_bits" in sweep and not config.analytic_kl:
    raise ValueError("Bad config: a sweep over free_bits needs analytic_kl=True.")
  unread = [name for name in ("beta", "free_bits", "kl_warmup_epochs") if name in sweep]
  if unread and config.objective == "iwae":
    raise ValueError(
      f"Bad config: a sweep over {unread[0]!r} with objective='iwae': the IWAE bound has no "
      "KL term to weigh, so every member would train alike; sweep it with objective='elbo'."
    )
  if "gaussian_logvar" in sweep and config.likelihood != "gaussian":
    raise ValueError(
      "Bad config: a sweep over gaussian_logvar needs likelihood='gaussian' (a fixed "
      f"variance); with {config.likelihood!r} it changes nothing or is a learned "
      "parameter's initial value."
    )
  for name in sweep:
    if name in SWEEPABLE:
      continue
    if name in default_fields:
      raise ValueError(
        f"Bad config: sweep over {name!r}, which changes the program's shapes or code; "
        f"sweep one of {SWEEPABLE} (or a field of your own loss), and run separate "
        f"programs for {name!r}."
      )
    if name not in config:
      raise ValueError(
        f"Bad config: sweep over {name!r}, a field this config lacks: declare it in your "
        "config (config.NAME = default) for your loss to read from hparams."
      )


def num_combinations(config) -> int:
  """The number of value combinations of config.sweep (1 without a sweep)."""
  return math.prod(len(values) for values in parse(config.sweep).values())


def num_members(config) -> int:
  """Combinations x seeds: the length of the train state's leading axis."""
  return num_combinations(config) * config.num_seeds


def combinations(config) -> list[dict[str, float]]:
  """Each combination of the swept values, in order (the first field varies slowest)."""
  sweep = parse(config.sweep)
  return [dict(zip(sweep, values)) for values in itertools.product(*sweep.values())]


def member_settings(config) -> list[dict[str, Any]]:
  """Each member's swept values and seed, in the order of the leading axis."""
  return [
    {**values, "seed": config.seed + s}
    for values in combinations(config)
    for s in range(config.num_seeds)
  ]


def member_index(config, member: int | dict) -> int:
  """A member's place on the leading axis: an index, or its values and seed as a dict
  ({"beta": 0.5, "seed": 1}; the seed defaults to config.seed)."""
  settings = member_settings(config)
  if isinstance(member, dict):
    wanted = {"seed": config.seed, **member}
    for index, setting in enumerate(settings):
      if setting.keys() == wanted.keys() and all(
        np.isclose(setting[k], wanted[k]) for k in setting
      ):
        return index
    raise ValueError(f"No member {member} in this run; its members are {settings}.")
  if not 0 <= member < len(settings):
    raise ValueError(f"member={member}: this run has members 0 to {len(settings) - 1}.")
  return member


def member_values(config) -> dict[str, np.ndarray]:
  """{swept field: its value for each member, [members]} (float32)."""
  settings = member_settings(config)
  return {name: np.array([m[name] for m in settings], np.float32) for name in parse(config.sweep)}


def hparams(config, swept: dict | None = None) -> dict[str, Any]:
  """A member's hyperparameters: every SWEEPABLE field and every swept field, the swept
  ones from `swept` (traced per-member values), the others the config's constants."""
  values = {name: config[name] for name in SWEEPABLE}
  values.update({name: config[name] for name in parse(config.sweep) if name in config})
  values.update(swept or {})
  return values


def member_names(config) -> list[str] | None:
  """Each member's name, "beta=0.5,learning_rate=0.001,seed=5", for TensorBoard and the
  report; None without a sweep."""
  if not config.sweep:
    return None
  return [",".join(f"{k}={v:g}" for k, v in m.items()) for m in member_settings(config)]
