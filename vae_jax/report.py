"""The evaluation report of a trained model: numbers, summary.json, eval.md, pictures,
index.html and the summary a person reads at the end of a run.

Both the trainer (at the end of a run) and experiments/evaluate.py (on a
workdir) report through these functions.
"""

import html
import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import data, evaluation, metrics, parallel, plots, posteriors, sweeps
from vae_jax.experiment import Experiment
from vae_jax.progress import Progress, format_duration


def full_evaluation(experiment: Experiment, params, swept, x, labels) -> list[dict[str, Any]]:
  """ELBO, IWAE bounds, IS log-likelihood (each with its standard error over examples),
  active units and KL per dimension: one summary per member (seed, or sweep member).

  x and labels come from eval_inputs; swept is Experiment.swept(state). The set goes
  through in about ten blocks, so that a progress bar can follow; the results do not
  depend on the blocks.
  """
  config, n = experiment.config, x.shape[0]
  unit = config.eval_batch_size * experiment.mesh.devices.size
  block_size = unit * max(1, -(-n // (10 * unit)))
  per_member = []
  with Progress(experiment.num_members * n, "evaluation", unit="images") as progress:
    for member in range(experiment.num_members):
      member_params, member_swept = experiment.take_member((params, swept), member)
      blocks = []
      for start in range(0, n, block_size):
        out = experiment.evaluate_examples(
          member_params, member_swept, x, labels, start, block_size=block_size
        )
        count = min(block_size, n - start)
        out = jax.device_get(out)
        blocks.append({k: None if v is None else np.asarray(v)[:count] for k, v in out.items()})
        progress.update(count)
      examples = {
        name: None if blocks[0][name] is None else np.concatenate([b[name] for b in blocks])
        for name in blocks[0]
      }
      per_member.append(
        evaluation.summarize(
          examples,
          num_pixels=math.prod(experiment.dataset.image_shape),
          bits_per_dim=experiment.integer_data,
        )
      )
  return per_member


def compare_combinations(config, per_member: list[dict], diverged_at) -> dict[str, Any]:
  """A sweep compared: each combination of values with its numbers averaged over its seeds
  (with NAME_seed_std, the spread across seeds, and each seed's step of divergence, None
  where it did not diverge), and the best combination: the highest IS log-likelihood among
  those whose seeds all trained to the end. Its numbers are the report's headline ones."""
  num_seeds = config.num_seeds
  combinations = []
  for c, values in enumerate(sweeps.combinations(config)):
    group = per_member[c * num_seeds : (c + 1) * num_seeds]
    entry = {"values": values, **combine_seeds(group)}
    if num_seeds > 1:
      for name in group[0]:
        if name.endswith("_stderr") or name == "num_examples" or isinstance(group[0][name], list):
          continue
        entry[f"{name}_seed_std"] = float(np.std([g[name] for g in group], ddof=1))
    steps = diverged_at[c * num_seeds : (c + 1) * num_seeds]
    entry["diverged_at_step"] = [int(s) if s >= 0 else None for s in steps]
    combinations.append(entry)
  finished = [c for c, entry in enumerate(combinations) if not any(entry["diverged_at_step"])]
  best = max(finished or range(len(combinations)), key=lambda c: combinations[c]["log_likelihood"])
  about = ("values", "diverged_at_step")
  headline = {k: v for k, v in combinations[best].items() if k not in about}
  return {**headline, "combinations": combinations, "best_combination": best}


def mean_over_seeds(values: dict[str, Any], *, sweep: bool = False) -> dict[str, Any]:
  """Scalars as floats (the mean over the members that are not NaN, i.e. not diverged),
  plus NAME_per_seed lists when there is more than one seed (NAME_per_member in a sweep)."""
  out = {}
  for name, per_member in values.items():
    per_member = np.asarray(per_member, np.float64)
    finite = per_member[~np.isnan(per_member)]
    out[name] = float(finite.mean()) if finite.size else float("nan")
    if per_member.size > 1:
      out[f"{name}_per_{'member' if sweep else 'seed'}"] = per_member.tolist()
  return out


def combine_seeds(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
  """Scalars averaged over seeds (plus NAME_per_seed lists); lists kept per seed."""
  if len(per_seed) == 1:
    return per_seed[0]
  columns = {name: [summary[name] for summary in per_seed] for name in per_seed[0]}
  scalars = {name: v for name, v in columns.items() if not isinstance(v[0], list)}
  lists = {f"{name}_per_seed": v for name, v in columns.items() if isinstance(v[0], list)}
  return {**mean_over_seeds(scalars), **lists}


def evaluation_report(
  experiment: Experiment, state, x, labels, *, split: str, step: int, command: str | None
) -> dict[str, Any]:
  """The full evaluation of a split of a train state's final parameters (the best epoch's
  with early stopping), with what it was measured on: summary.json and eval.json. A
  sweep's report compares its combinations of values under "sweep" (compare_combinations)."""
  config = experiment.config
  start = time.perf_counter()
  params = experiment.final_params(state)
  per_member = full_evaluation(experiment, params, experiment.swept(state), x, labels)
  if config.sweep:
    diverged_at = np.asarray(jax.device_get(experiment.diverged_at(state)))
    results = compare_combinations(config, per_member, diverged_at)
    combinations = results.pop("combinations")
    sweep = {
      "sweep": {
        "fields": sweeps.parse(config.sweep),
        "seeds": [config.seed + s for s in range(config.num_seeds)],
        "best_combination": results.pop("best_combination"),
        "combinations": [
          {
            "values": m.pop("values"),
            "diverged_at_step": m.pop("diverged_at_step"),
            **{f"{split}_{name}": value for name, value in m.items()},
          }
          for m in combinations
        ],
      }
    }
  else:
    results, sweep = combine_seeds(per_member), {}
  return {
    **{f"{split}_{name}": value for name, value in results.items()},
    **sweep,
    "iwae_samples": list(config.eval_iwae_samples),
    "log_likelihood_num_samples": config.eval_num_samples,
    "binarization": config.binarization,
    "binarization_seed": data.TEST_BINARIZATION_SEED if config.binarization == "dynamic" else None,
    "dataset": config.dataset,
    "split": split,
    "num_train": int(experiment.num_train),
    "num_validation": len(experiment.dataset.validation_images),
    "num_test": len(experiment.dataset.test_images),
    "num_seeds": config.num_seeds,
    "steps": step,
    "epochs": step / experiment.steps_per_epoch,
    "evaluation_seconds": time.perf_counter() - start,
    "device": device_description(),
    "command": command or "vae_jax.train.train_and_evaluate(config, workdir)",
    **early_stopping_report(experiment, state),
  }


def device_description() -> str:
  """What this run computes on, e.g. "NVIDIA H100 80GB HBM3 x 1" or "cpu x 2"."""
  return f"{jax.devices()[0].device_kind} x {jax.device_count()}"


def training_seconds_by_device(records: list[dict]) -> dict[str, float]:
  """train_seconds of metrics.jsonl records summed per device (a resumed run may have moved
  to another machine); records from before the device was logged: "device not recorded"."""
  seconds = {}
  for record in records:
    device = record.get("device", "device not recorded")
    seconds[device] = seconds.get(device, 0.0) + record.get("train_seconds", 0.0)
  return seconds


def early_stopping_report(experiment: Experiment, state) -> dict[str, Any]:
  """{"early_stopping": per seed, the epoch whose parameters are evaluated, its validation
  ELBO and whether the seed stopped}; {} for a run without early stopping."""
  if not experiment.early_stopping:
    return {}
  early_stopping = jax.device_get(experiment.early_stopping_numbers(state))
  return {
    "early_stopping": {
      "best_epoch": early_stopping["best_epoch"].tolist(),
      "best_valid_elbo": early_stopping["best_elbo"].tolist(),
      "stopped": early_stopping["stopped"].tolist(),
    }
  }


def final_evaluation(
  experiment: Experiment,
  state,
  step,
  test_x,
  test_labels,
  workdir,
  command,
  training_seconds,
  training_seconds_by_device,
):
  """The full test-set evaluation, pictures, summary.json and index.html (process 0 writes)."""
  summary = evaluation_report(
    experiment, state, test_x, test_labels, split="test", step=step, command=command
  )
  summary["training_seconds"] = training_seconds
  if training_seconds_by_device:  # empty on processes other than 0, which write no files
    summary["training_seconds_by_device"] = training_seconds_by_device
  summary["config"] = json.loads(experiment.config.to_json_best_effort())
  publish(experiment, state, test_x, test_labels, workdir, summary, "summary.json")
  return summary


def pictured_member(report: dict[str, Any]) -> int:
  """The member the pictures show: the first seed of a sweep's best member, else seed 0."""
  if "sweep" not in report:
    return 0
  return report["sweep"]["best_combination"] * report["num_seeds"]


def publish(experiment: Experiment, state, x, labels, workdir, report, json_name) -> None:
  """Writes report to WORKDIR/json_name, the pictures of pictured_member(report) (and a
  sweep's comparisons) and index.html.

  Every process calls it; process 0 writes."""
  member = pictured_member(report)
  shown = experiment.take_member(  # every process takes part
    (experiment.final_params(state), experiment.swept(state)), member
  )
  if not parallel.is_main_process():
    return
  with open(os.path.join(workdir, json_name), "w") as f:
    json.dump(report, f, indent=2)
  # Host copies: the pictures are drawn by this process alone, on its own device.
  (params, swept), x, labels = jax.device_get((shown, x, labels))
  model = experiment.model(params, swept)
  pictures = save_pictures(experiment, model, x, labels, workdir, report=report)
  write_index(workdir, report, pictures)


def caption(report: dict[str, Any]) -> str:
  """What a picture comes from: dataset, binarization, epoch, ELBO of the evaluated split."""
  split = report["split"]
  epoch = f"{report['epochs']:g}"
  member = pictured_member(report)
  if "early_stopping" in report:  # the pictures are of that member's best epoch
    epoch = f"{report['early_stopping']['best_epoch'][member]} (the best of {epoch})"
  about = (
    f"{report['dataset']}, {report['binarization']} binarization, epoch {epoch}, "
    f"{split} ELBO {report[f'{split}_elbo']:.2f} nats"
  )
  if "sweep" in report:
    sweep = report["sweep"]
    about += f"\nthe best of the sweep: {_values(sweep['combinations'][sweep['best_combination']])}"
  return about


def _values(member: dict[str, Any]) -> str:
  """A sweep member's values, "beta=0.5, learning_rate=0.001"."""
  return ", ".join(f"{name}={value:g}" for name, value in member["values"].items())


def display_examples(labels: np.ndarray, num_classes: int, count: int) -> np.ndarray:
  """Indices of `count` examples to show: classes in turn (0, 1, ..., 0, 1, ...), each
  class's examples in order; evenly spaced without labels. Fixed, so every run shows the
  same images."""
  labels = np.asarray(labels)
  if not num_classes:
    return np.linspace(0, len(labels) - 1, count).round().astype(int)
  by_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
  order = [
    members[j]
    for j in range(max(len(m) for m in by_class))
    for members in by_class
    if j < len(members)
  ]
  return np.asarray(order[:count])


def save_pictures(
  experiment: Experiment, model, x, labels, workdir, *, report: dict[str, Any]
) -> list[str]:
  """Writes the pictures of a model, each titled with caption(report); returns their names.

  samples.png (prior samples; one labelled row per class for conditional models),
  reconstructions.png (labelled rows of originals and reconstructions, across classes),
  interpolations.png (between test images of different classes), latent_scatter.png,
  manifold.png (2-D latents), training_curves.png (when metrics.jsonl exists).
  """
  config = experiment.config
  conditional = experiment.conditional
  num_classes = experiment.dataset.num_classes
  images = x.astype(jnp.float32) / (255.0 if experiment.integer_data else 1.0)
  about = caption(report)
  pictures = {}
  if conditional:
    grid = plots.prior_samples(
      model,
      jax.random.key(2),
      rows=num_classes,
      columns=10,
      labels=jnp.repeat(jnp.arange(num_classes), 10),
    )
    pictures["samples"] = plots.annotate(
      grid,
      f"Samples of p(x|z, class), z from the prior (decoder means)\n{about}",
      row_labels=[f"class {c}" for c in range(num_classes)],
    )
  else:
    grid = plots.prior_samples(model, jax.random.key(2), rows=8, columns=8)
    pictures["samples"] = plots.annotate(
      grid, f"Samples: decoder means at z from the prior\n{about}"
    )
  shown = display_examples(labels, num_classes, 32)
  y = labels[shown] if conditional else None
  grid = plots.reconstructions(model, x[shown], images[shown], y, columns=8)
  pictures["reconstructions"] = plots.annotate(
    grid,
    f"Test images and their reconstructions (decoder mean at the posterior mean)\n{about}",
    row_labels=["original", "reconstruction"] * (len(shown) // 8),
  )
  pairs = display_examples(labels, num_classes, 16)
  first, last = pairs[:8], pairs[8:]  # of different classes where there are labels
  y = labels[first] if conditional else None
  grid = plots.interpolations(model, x[first], x[last], labels=y)
  row_labels = [f"{labels[a]} → {labels[b]}" for a, b in zip(first, last)] if num_classes else None
  pictures["interpolations"] = plots.annotate(
    grid,
    "Decoder means along lines between the posterior means of two test images"
    f"{' (decoded with the first image’s class)' if conditional else ''}\n{about}",
    row_labels=row_labels,
  )
  means = evaluation.map_batches(
    lambda x, labels: posteriors.location(model.encode(x, labels if conditional else None)),
    (x, labels),
    config.eval_batch_size,
  )
  pictures["latent_scatter"] = plots.latent_scatter(
    jax.device_get(means), jax.device_get(labels) if num_classes else None, title=about
  )
  if model.latent_dim == 2 and model.has_analytic_kl:  # a 2-D latent with a N(0, I) prior
    grid = plots.latent_manifold(model, labels=0 if conditional else None)
    pictures["manifold"] = plots.annotate(
      grid,
      f"Decoder means over the 2-D latent space at Gaussian quantiles"
      f"{' (class 0)' if conditional else ''}\n{about}",
    )
  records = metrics.read_records(workdir)
  if "sweep" in report:
    pictures.update(sweep_pictures(report, records, title=about))
  elif records:
    pictures["training_curves"] = plots.training_curves(records, title=about)
  for name, picture in pictures.items():
    plots.save_png(os.path.join(workdir, f"{name}.png"), picture)
  return [f"{name}.png" for name in pictures]


def sweep_pictures(report: dict[str, Any], records: list[dict], *, title: str) -> dict:
  """A sweep's comparisons: every member's test ELBO per epoch (training_curves), for a
  sweep over beta the rate-distortion plane (rate_distortion), for two swept fields a
  heatmap of the IS log-likelihood (sweep_heatmap); means over seeds."""
  split, sweep, seeds = report["split"], report["sweep"], report["num_seeds"]
  combinations, fields = sweep["combinations"], sweep["fields"]
  names = [_values(entry) for entry in combinations]
  pictures = {}
  if records:
    per_epoch = np.array(
      [r.get("test/elbo_per_member", [r["test/elbo"]]) for r in records], np.float64
    )
    means = per_epoch.reshape(len(records), len(combinations), seeds).mean(axis=-1)
    pictures["training_curves"] = plots.sweep_curves(
      [r["epoch"] for r in records],
      {name: means[:, c] for c, name in enumerate(names)},
      ylabel="test ELBO (nats), mean over seeds",
      title=title,
    )
  if "beta" in fields:
    pictures["rate_distortion"] = plots.rate_distortion(
      [entry[f"{split}_kl"] for entry in combinations],
      [-entry[f"{split}_reconstruction"] for entry in combinations],
      names,
      title=title,
    )
  if len(fields) == 2:
    (first, first_values), (second, second_values) = fields.items()
    values = np.array(
      [
        np.nan if any(entry["diverged_at_step"]) else entry[f"{split}_log_likelihood"]
        for entry in combinations
      ]
    ).reshape(len(first_values), len(second_values))
    pictures["sweep_heatmap"] = plots.heatmap(
      values,
      (first, list(first_values)),
      (second, list(second_values)),
      label=f"{split} log p(x), IS-{report['log_likelihood_num_samples']} (nats)",
      title=title,
    )
  return pictures


def _value(report: dict[str, Any], name: str, digits: int = 2) -> str:
  value, stderr = report.get(name), report.get(f"{name}_stderr")
  if value is None:
    return "n/a"
  if stderr is not None:
    return f"{value:.{digits}f} ± {stderr:.{digits}f}"
  return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"  # 10,000, not 1e+04


def _headline_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
  """(what, value) rows of the numbers a person looks for first."""
  split = report["split"]
  rows = [(f"{split} ELBO", _value(report, f"{split}_elbo"))]
  for k in report["iwae_samples"]:
    rows.append((f"{split} IWAE bound, K = {k}", _value(report, f"{split}_iwae_{k}")))
  rows.append(
    (
      f"{split} log p(x), IS with {report['log_likelihood_num_samples']:,} samples",
      _value(report, f"{split}_log_likelihood"),
    )
  )
  if f"{split}_log_likelihood_bits_per_dim" in report:
    rows.append(("  in bits/dim", f"{report[f'{split}_log_likelihood_bits_per_dim']:.4f}"))
  # One seed: a list per latent; several: one list per seed.
  latents = (
    report.get(f"{split}_latent_activity")
    or report.get(f"{split}_latent_activity_per_seed", [[]])[0]
  )
  active = report.get(f"{split}_active_units")
  rows.append(("active units", f"{active:g} of {len(latents)}" if latents else f"{active:g}"))
  return rows


def _seeds_cell(entry: dict[str, Any], name: str) -> str:
  """ "mean ± standard error (sd S)": S the spread across seeds (with several seeds)."""
  cell = _value(entry, name)
  if f"{name}_seed_std" in entry:
    cell += f" (sd {entry[f'{name}_seed_std']:.2f})"
  return cell


def sweep_table(report: dict[str, Any]) -> list[list[str]]:
  """A sweep's combinations as rows of strings, the header first: each swept field, the split's
  ELBO, IS log-likelihood, KL and reconstruction (means over seeds ± standard error over
  examples, with the spread across seeds), and which is best or diverged."""
  split, sweep = report["split"], report["sweep"]
  header = [
    *sweep["fields"],
    f"{split} ELBO",
    f"log p(x), IS-{report['log_likelihood_num_samples']}",
    "KL (rate)",
    "reconstruction",
    "",
  ]
  rows = [header]
  for c, entry in enumerate(sweep["combinations"]):
    diverged = [
      f"seed {seed} diverged at step {step}"
      for seed, step in zip(sweep["seeds"], entry["diverged_at_step"])
      if step is not None
    ]
    note = ", ".join(diverged) or ("best" if c == sweep["best_combination"] else "")
    rows.append(
      [
        *(f"{v:g}" for v in entry["values"].values()),
        *(_seeds_cell(entry, f"{split}_{n}") for n in ("elbo", "log_likelihood")),
        *(f"{entry[f'{split}_{n}']:.2f}" for n in ("kl", "reconstruction")),
        note,
      ]
    )
  return rows


def _sweep_lines(report: dict[str, Any]) -> list[str]:
  rows = sweep_table(report)
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  seeds = report["num_seeds"]
  lines = [
    f"Sweep: {len(rows) - 1} combinations x {seeds} seed{'s' if seeds > 1 else ''}, trained in "
    "one program (means over seeds ± standard error over images"
    + (", sd: the spread across seeds):" if seeds > 1 else "):")
  ]
  lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
  return lines


def human_summary(report: dict[str, Any], workdir: str) -> str:
  """The end-of-run summary printed to stdout; the full record is summary.json."""
  split = report["split"]
  seeds = report["num_seeds"]
  lines = [
    "",
    f"Trained {report['epochs']:g} epochs on {report['dataset']} ({report['binarization']} "
    f"binarization){f', {seeds} seeds (mean over seeds)' if seeds > 1 else ''}.",
    f"Evaluated on {int(report[f'{split}_num_examples']):,} {split} images, nats per image "
    "± standard error over images:",
  ]
  if "sweep" in report:
    lines[-1] = lines[-1][:-1] + ", the best combination's:"
  rows = _headline_rows(report)
  width = max(len(what) for what, _ in rows)
  lines += [f"  {what:<{width}}  {value}" for what, value in rows]
  if "sweep" in report:
    lines += _sweep_lines(report)
  if "early_stopping" in report:
    early_stopping = report["early_stopping"]
    lines.append(
      f"Early stopping: the parameters of epoch {_per_seed(early_stopping['best_epoch'])}, the "
      f"best validation ELBO ({_per_seed(early_stopping['best_valid_elbo'], '.2f')})"
      + ("." if all(early_stopping["stopped"]) else ", before the patience ran out.")
    )
  seconds = report.get("training_seconds")
  by_device = report.get("training_seconds_by_device", {})
  where = (  # only when the run moved between machines
    " (" + ", ".join(f"{d}: {format_duration(s)}" for d, s in by_device.items()) + ")"
    if len(by_device) > 1
    else ""
  )
  lines.append(
    (f"Training {format_duration(seconds)}{where}, " if seconds is not None else "")
    + f"evaluation {format_duration(report['evaluation_seconds'])} on {report['device']}."
  )
  files = sorted(f for f in os.listdir(workdir) if not f.startswith("events."))
  lines.append(f"Workdir {workdir}: {', '.join(files)}")
  lines.append(f"Open {os.path.join(workdir, 'index.html')} to see the pictures with the numbers.")
  return "\n".join(lines)


def _per_seed(values: list, spec: str = "") -> str:
  """One seed's value, or every seed's separated by slashes."""
  return " / ".join(format(value, spec) for value in values)


def _setting(value) -> str:
  if isinstance(value, dict):
    return ", ".join(f"{name}: {_setting(v)}" for name, v in value.items())
  return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_index(workdir: str, report: dict[str, Any], pictures: list[str]) -> str:
  """index.html: the headline numbers, the settings and every picture, in one page."""
  split = report["split"]
  rows = "".join(
    f"<tr><td>{html.escape(what)}</td><td>{html.escape(value)}</td></tr>"
    for what, value in _headline_rows(report)
  )
  settings = "".join(
    f"<li>{name}: {html.escape(_setting(report[name]))}</li>"
    for name in (
      "dataset",
      "binarization",
      "binarization_seed",
      "epochs",
      "steps",
      "num_seeds",
      "device",
      "training_seconds",
      "training_seconds_by_device",
      "evaluation_seconds",
      "command",
    )
    if name in report
  )
  images = "".join(
    f'<figure><img src="{name}" alt="{name}"><figcaption>{name}</figcaption></figure>'
    for name in pictures
  )
  if "sweep" in report:  # the combinations before the pictures (of the best one)
    table = sweep_table(report)
    images = (
      "<table>"
      + "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in table
      )
      + "</table>"
      + images
    )
  page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(caption(report))}</title>
<style>body{{font-family:sans-serif;margin:2em}} td{{padding:2px 12px}}
figure{{display:inline-block;vertical-align:top;margin:1em}}</style></head>
<body><h1>{html.escape(caption(report))}</h1>
<table><tr><th>{split} set</th><th>nats per image ± standard error</th></tr>{rows}</table>
<ul>{settings}</ul>
{images}
</body></html>
"""
  path = os.path.join(workdir, "index.html")
  with open(path, "w") as f:
    f.write(page)
  return path


def markdown(report: dict, split: str) -> str:
  """eval.md: one table of the numbers with their standard errors, then the settings."""
  lines = [f"# Evaluation of {report['dataset']} ({split} split)", "", "| metric | value |"]
  lines.append("|---|---|")
  for name, value in report.items():
    if not name.startswith(f"{split}_") or isinstance(value, list):
      continue
    if name.endswith(("_stderr", "_seed_std")):  # beside their values; a sweep's table below
      continue
    lines.append(f"| {name[len(split) + 1 :]} | {_value(report, name, digits=3)} |")
  lines += ["", "± is the standard error over examples."]
  kl = report.get(f"{split}_kl_per_dimension")  # absent where the prior does not factorize
  if kl and isinstance(kl[0], list):
    kl = kl[0]  # several seeds: the first
  if kl:
    lines[-1] += " KL per latent dimension (nats): " + ", ".join(f"{v:.2f}" for v in kl)
  if "sweep" in report:  # the numbers above are the best member's
    lines[0] += f", the best of {len(report['sweep']['combinations'])} swept combinations"
    rows = sweep_table(report)
    lines += ["", "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    lines += ["", "Means over seeds ± standard error over examples; sd: the spread across seeds."]
  lines.append("")
  for name in (
    "binarization",
    "binarization_seed",
    "iwae_samples",
    "log_likelihood_num_samples",
    "num_seeds",
    "steps",
    "early_stopping",
    "device",
    "evaluation_seconds",
    "command",
  ):
    if name in report:
      lines.append(f"- {name}: {_setting(report[name])}")
  return "\n".join(lines) + "\n"
