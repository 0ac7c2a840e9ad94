"""The evaluation report of a trained model: numbers, summary.json, eval.md and pictures.

Both the trainer (at the end of a run) and experiments/evaluate.py (on a
workdir) report through these functions.
"""

import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import data, evaluation, parallel, plots
from vae_jax.experiment import Experiment


def full_evaluation(experiment: Experiment, params, x, labels) -> dict[str, Any]:
  """ELBO, IWAE bounds, IS log-likelihood (each with its standard error over examples),
  active units and KL per dimension; averaged over seeds, with per-seed values.

  x and labels come from eval_inputs.
  """
  per_seed = []
  for seed in range(experiment.config.num_seeds):
    examples = experiment.evaluate_examples(experiment.seed_params(params, seed), x, labels)
    per_seed.append(
      evaluation.summarize(
        jax.device_get(examples),
        num_pixels=math.prod(experiment.dataset.image_shape),
        bits_per_dim=experiment.integer_data,
      )
    )
  return combine_seeds(per_seed)


def mean_over_seeds(values: dict[str, Any]) -> dict[str, Any]:
  """Scalars as floats, plus per-seed lists when there is more than one seed."""
  out = {}
  for name, per_seed in values.items():
    per_seed = np.asarray(per_seed, np.float64)
    out[name] = float(per_seed.mean())
    if per_seed.size > 1:
      out[f"{name}_per_seed"] = per_seed.tolist()
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
  experiment: Experiment, params, x, labels, *, split: str, command: str | None
) -> dict[str, Any]:
  """The full evaluation of a split, with what it was measured on: summary.json and eval.json."""
  config = experiment.config
  start = time.perf_counter()
  results = full_evaluation(experiment, params, x, labels)
  return {
    **{f"{split}_{name}": value for name, value in results.items()},
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
    "evaluation_seconds": time.perf_counter() - start,
    "device": f"{jax.devices()[0].device_kind} x {jax.device_count()}",
    "command": command or "vae_jax.train.train_and_evaluate(config, workdir)",
  }


def final_evaluation(experiment: Experiment, state, step, test_x, test_labels, workdir, command):
  """The full test-set evaluation, pictures, summary.json (written by process 0)."""
  summary = evaluation_report(
    experiment, state["params"], test_x, test_labels, split="test", command=command
  )
  summary["steps"] = step
  summary["config"] = json.loads(experiment.config.to_json_best_effort())
  first_seed = experiment.seed_params(state["params"], 0)  # every process takes part
  if parallel.is_main_process():
    # Host copies: the pictures are drawn by this process alone, on its own device.
    first_seed, test_x, test_labels = jax.device_get((first_seed, test_x, test_labels))
    save_pictures(experiment, experiment.model(first_seed), test_x, test_labels, workdir)
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
  return summary


def save_pictures(experiment: Experiment, model, x, labels, workdir) -> list[str]:
  """Writes the pictures of a model to workdir; returns their file names.

  samples.png (prior samples; one row per class for conditional models),
  reconstructions.png, interpolations.png, latent_scatter.png,
  manifold.png (2-D latents), training_curves.png (when metrics.jsonl exists).
  """
  config = experiment.config
  conditional = experiment.conditional
  num_classes = experiment.dataset.num_classes
  images = x.astype(jnp.float32) / (255.0 if experiment.integer_data else 1.0)
  pictures = {}
  if conditional:
    pictures["samples"] = plots.prior_samples(
      model,
      jax.random.key(2),
      rows=num_classes,
      columns=10,
      labels=jnp.repeat(jnp.arange(num_classes), 10),
    )
  else:
    pictures["samples"] = plots.prior_samples(model, jax.random.key(2), rows=8, columns=8)
  y = labels[:32] if conditional else None
  pictures["reconstructions"] = plots.reconstructions(model, x[:32], images[:32], y)
  y = labels[:8] if conditional else None
  pictures["interpolations"] = plots.interpolations(model, x[:8], x[-8:], labels=y)
  means = evaluation.map_batches(
    lambda x, labels: model.encode(x, labels if conditional else None)[0],
    (x, labels),
    config.eval_batch_size,
  )
  pictures["latent_scatter"] = plots.latent_scatter(
    jax.device_get(means), jax.device_get(labels) if num_classes else None
  )
  if model.latent_dim == 2 and model.has_analytic_kl:  # a 2-D latent with a N(0, I) prior
    pictures["manifold"] = plots.latent_manifold(model, labels=0 if conditional else None)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(metrics_path):
    with open(metrics_path) as f:
      records = [json.loads(line) for line in f]
    if records:
      pictures["training_curves"] = plots.training_curves(records)
  for name, picture in pictures.items():
    plots.save_png(os.path.join(workdir, f"{name}.png"), picture)
  return [f"{name}.png" for name in pictures]


def markdown(report: dict, split: str) -> str:
  """eval.md: one table of the numbers with their standard errors, then the settings."""
  lines = [f"# Evaluation of {report['dataset']} ({split} split)", "", "| metric | value |"]
  lines.append("|---|---|")
  for name, value in report.items():
    if not name.startswith(f"{split}_") or name.endswith("_stderr") or isinstance(value, list):
      continue
    stderr = report.get(f"{name}_stderr")
    shown = f"{value:.3f} ± {stderr:.3f}" if stderr is not None else f"{value:.4g}"
    lines.append(f"| {name[len(split) + 1 :]} | {shown} |")
  lines += ["", "± is the standard error over examples."]
  kl = report.get(f"{split}_kl_per_dimension")  # absent where the prior does not factorize
  if kl and isinstance(kl[0], list):
    kl = kl[0]  # several seeds: the first
  if kl:
    lines[-1] += " KL per latent dimension (nats): " + ", ".join(f"{v:.2f}" for v in kl)
  lines.append("")
  for name in (
    "binarization",
    "binarization_seed",
    "iwae_samples",
    "log_likelihood_num_samples",
    "num_seeds",
    "steps",
    "device",
    "evaluation_seconds",
    "command",
  ):
    lines.append(f"- {name}: {report.get(name)}")
  return "\n".join(lines) + "\n"
