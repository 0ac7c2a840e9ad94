"""Writes the docs' generated pages from the code and from the files under results/.

  python docs/generate.py    # re-renders the README's Table 1 and speed line from results/

`make docs` calls write_all at every build (docs/conf.py): the API pages, the config
fields (from vae_jax/config.py's own comments), the reproduction table (from
results/*/eval.json), the benchmark tables (from the records scripts/bench.py writes
under results/benchmarks/) and copies of the notebooks. Nothing here is kept by hand,
so no page can drift from the files it shows.
"""

import ast
import glob
import importlib
import inspect
import itertools
import json
import os
import re
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The API reference: each module's page, in reading order.
API_SECTIONS = {
  "The pure API": ("objectives", "distributions", "likelihoods", "priors", "posteriors"),
  "Models": ("models", "networks"),
  "Training": (
    "config",
    "sweeps",
    "losses",
    "train",
    "experiment",
    "state",
    "checkpoints",
    "metrics",
  ),
  "Evaluation and pictures": ("evaluation", "report", "plots"),
  "Data, devices and progress": ("data", "parallel", "progress"),
}

# Burda, Grosse & Salakhutdinov 2015 (arXiv:1509.00519), Table 1: test log p(x) by IS-5000
# on dynamically binarized MNIST, 3,280 epochs. The only copy of the paper's numbers.
BURDA2015_TABLE1 = {
  "burda2015_vae_k1": ("VAE, k=1", -86.76),
  "burda2015_iwae_k50": ("IWAE, k=50", -84.78),
  "burda2015_iwae_k50_2layer": ("IWAE, 2 layers, k=50", -82.90),
}
# Tomczak & Welling 2018 (arXiv:1705.07120), Table 2 as commonly cited: test log p(x) by
# IS-5000 of the VAE with one stochastic layer, and of the two-level HVAE
# (experiments/hvae.py). run: (model, prior, data, paper).
TOMCZAK2018_TABLE2 = {
  "tomczak2018_vae_static": ("VAE", "standard", "static", -88.56),
  "tomczak2018_vampprior_static": ("VAE", "VampPrior", "static", -85.57),
  "tomczak2018_vae_dynamic": ("VAE", "standard", "dynamic", -84.50),
  "tomczak2018_vampprior_dynamic": ("VAE", "VampPrior", "dynamic", -82.38),
  "tomczak2018_hvae_vampprior_static": ("HVAE", "VampPrior", "static", -83.19),
}
README_TABLE_BEGIN = "<!-- table1: python docs/generate.py renders it from results/*/eval.json -->"
README_TABLE_END = "<!-- /table1 -->"
README_TABLE2_BEGIN = "<!-- table2: python docs/generate.py renders it from results/*/eval.json -->"
README_TABLE2_END = "<!-- /table2 -->"
README_SPEED_BEGIN = "<!-- speed: python docs/generate.py renders it from results/benchmarks -->"
README_SPEED_END = "<!-- /speed -->"


def public_definitions(module) -> list[tuple[str, ast.stmt]]:
  """(name, statement) for each name a module defines and does not mark private, in source
  order: its functions, classes and module-level constants (imported names are left to
  their own module)."""
  definitions = []
  for node in ast.parse(inspect.getsource(module)).body:
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
      definitions.append((node.name, node))
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      definitions += [(t.id, node) for t in targets if isinstance(t, ast.Name)]
  return [(name, node) for name, node in definitions if not name.startswith("_")]


def public_names(module) -> list[str]:
  """The names of public_definitions(module)."""
  return [name for name, _ in public_definitions(module)]


def _directive(module, name: str) -> str:
  obj = getattr(module, name)
  if inspect.isclass(obj):
    return "autoclass"
  if inspect.isfunction(obj):
    return "autofunction"
  return "autodata"


def api_page(module_name: str) -> str:
  """One module's API page: its docstring, a summary table, then every public name."""
  module = importlib.import_module(f"vae_jax.{module_name}")
  names = public_names(module)
  lines = [
    f"# vae_jax.{module_name}",
    "",
    "```{eval-rst}",
    f".. automodule:: vae_jax.{module_name}",
    "   :no-members:",
    "",
    f".. currentmodule:: vae_jax.{module_name}",
    "",
    ".. autosummary::",
    "   :nosignatures:",
    "",
    *(f"   {name}" for name in names),
    "",
  ]
  for name in names:
    lines += [f".. {_directive(module, name)}:: {name}", ""]
  return "\n".join(lines + ["```", ""])


def api_index() -> str:
  """The API reference's front page: the package's re-exports, then the modules by section."""
  import vae_jax

  defined_in = {
    name: module
    for module in ("objectives", "distributions")
    for name in public_names(importlib.import_module(f"vae_jax.{module}"))
  }
  exported = [
    f"   ~vae_jax.{defined_in[name]}.{name}" for name in vars(vae_jax) if name in defined_in
  ]
  lines = [
    "# API reference",
    "",
    "Every public name of vae_jax, from its docstring. `import vae_jax` gives the pure",
    "functions (objectives and distributions) at the top level:",
    "",
    "```{eval-rst}",
    ".. autosummary::",
    "   :nosignatures:",
    "",
    *exported,
    "```",
    "",
  ]
  for section, modules in API_SECTIONS.items():
    lines += [f"## {section}", "", "```{toctree}", ":maxdepth: 1", ""]
    lines += [f"vae_jax.{m}" for m in modules] + ["```", ""]
  return "\n".join(lines)


_FIELD = re.compile(r"^\s*config\.(\w+) = (.*?)(?:\s+#\s*(.*))?$")
_COMMENT = re.compile(r"^\s*# ?(.*)$")


def config_fields() -> list[tuple[str, list[tuple[str, str, str]]]]:
  """get_default_config's fields by section, each (name, default, description), read off
  vae_jax/config.py: a comment block after a blank line opens a section; a comment block
  right after a field describes the next field; a field's own trailing comment is its
  description."""
  from vae_jax import config as config_lib

  defaults = config_lib.get_default_config()
  source = inspect.getsource(config_lib.get_default_config).splitlines()
  sections, note, previous_blank = [], [], False
  for line in source:
    comment, field = _COMMENT.match(line), _FIELD.match(line)
    if not line.strip():
      previous_blank = True
    elif comment:
      if previous_blank and not note:
        sections.append((comment.group(1), []))
      else:
        note.append(comment.group(1))
      previous_blank = False
    elif field:
      name, _, description = field.groups()
      text = ": ".join(part for part in (description, " ".join(note)) if part)
      sections[-1][1].append((name, repr(defaults[name]).replace("'", '"'), text))
      note, previous_blank = [], False
  return sections


def config_fields_md() -> str:
  """The config fields as Markdown tables, one per section."""
  lines = []
  for header, fields in config_fields():
    lines += [f"**{header}**", "", "| field | default | meaning |", "|---|---|---|"]
    lines += [f"| `{n}` | `{d}` | {t.replace('|', '&#124;')} |" for n, d, t in fields]
    lines.append("")
  return "\n".join(lines)


def _nats(value: float, digits: int = 2) -> str:
  return f"{value:.{digits}f}".replace("-", "−")


def table1_rows() -> list[dict]:
  """Burda et al.'s Table 1 beside each published run's eval.json."""
  rows = []
  for run, (model, paper) in BURDA2015_TABLE1.items():
    with open(os.path.join(ROOT, "results", run, "eval.json")) as f:
      report = json.load(f)
    with open(os.path.join(ROOT, "results", run, "summary.json")) as f:
      training = {k: v for k, v in json.load(f).items() if k.startswith("training_seconds")}
    rows.append(dict(run=run, model=model, paper=paper, **report, **training))
  return rows


def table1_md(*, link: bool) -> str:
  """The Table 1 reproduction as Markdown; link: the run column links to results/<run>
  (from the README), else names the folder."""
  lines = [
    "| model | paper | IS-5000 here | IWAE-50 | ELBO | epochs | run |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in table1_rows():
    lines.append(
      f"| {r['model']} | {_nats(r['paper'])} | {_nats(r['test_log_likelihood'])} ± "
      f"{r['test_log_likelihood_stderr']:.2f} | {_nats(r['test_iwae_50'])} | "
      f"{_nats(r['test_elbo'])} | {int(r['epochs']):,} | "
      + (f"[{r['run']}](results/{r['run']})" if link else f"`results/{r['run']}/`")
      + " |"
    )
  return "\n".join(lines)


def table1_details_md() -> str:
  """What the docs page adds under the table: how each row was evaluated."""
  lines = []
  for r in table1_rows():
    lines.append(
      f"- `{r['run']}`: {r['test_num_examples']:,} test images of {r['dataset']} "
      f"({r['binarization']} binarization, test set binarized once with seed "
      f"{r['binarization_seed']}), IS with {r['log_likelihood_num_samples']:,} samples "
      f"(Monte Carlo error of the estimate {r['test_log_likelihood_mc_stderr']:.2f} nats), "
      f"{r['test_active_units']} active units; evaluated on {r['device']} in "
      f"{r['evaluation_seconds']:.0f} s by `{r['command']}`. Trained for "
      f"{r['training_seconds'] / 60:,.0f} minutes"
      + (
        " ("
        + ", ".join(
          f"{device}: {seconds / 60:,.0f}"
          for device, seconds in r.get("training_seconds_by_device", {}).items()
        )
        + ")"
        if len(r.get("training_seconds_by_device", {})) > 1
        else ""
      )
      + f"; which device ran which epochs: `results/{r['run']}/HISTORY.md`."
    )
  return "\n".join(lines)


def _read_json(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def table2_md(*, link: bool) -> str:
  """Tomczak & Welling's Table 2 beside each run: its eval.json where it has finished, its
  progress (from metrics.jsonl) while it trains; link: the run column links to
  results/<run> (from the README), else names the folder."""
  lines = [
    "| model | prior | MNIST | paper | IS-5000 here | ELBO | best epoch / trained | minutes "
    "| run |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for run, (model, prior, binarization, paper) in TOMCZAK2018_TABLE2.items():
    folder = os.path.join(ROOT, "results", run)
    report = _read_json(os.path.join(folder, "eval.json"))
    summary = _read_json(os.path.join(folder, "summary.json"))
    metrics_path = os.path.join(folder, "metrics.jsonl")
    if report and summary:
      best = report["early_stopping"]["best_epoch"][0]
      cells = [
        f"{_nats(report['test_log_likelihood'])} ± {report['test_log_likelihood_stderr']:.2f}",
        _nats(report["test_elbo"]),
        f"{best:,} / {int(report['epochs']):,}",
        f"{summary['training_seconds'] / 60:,.0f}",
      ]
    elif os.path.exists(metrics_path):
      with open(metrics_path) as f:
        records = [json.loads(line) for line in f.read().splitlines()]
      last, seconds = records[-1], sum(r.get("train_seconds", 0.0) for r in records)
      cells = [
        "training",
        f"valid {_nats(last['valid/best_elbo'])} so far",
        f"{int(last['valid/best_epoch']):,} / {last['epoch']:,}",
        f"{seconds / 60:,.0f}",
      ]
    else:
      cells = ["not started", "", "", ""]
    name = f"[{run}](results/{run})" if link and os.path.isdir(folder) else f"`results/{run}/`"
    lines.append(
      f"| {model} | {prior} | {binarization} | {_nats(paper)} | "
      + " | ".join(cells)
      + f" | {name} |"
    )
  return "\n".join(lines)


def _network(config: dict) -> str:
  """A config's model in a few words: its layers, latents, init and log-variance clip."""
  words = [
    f"{config['activation']} {'-'.join(map(str, config['hidden']))}-{config['latent_dim']}",
    "He" if config["weight_init"] == "he_normal" else "",
    "clip [{:g}, {:g}]".format(*config["logvar_range"]) if config["logvar_range"] else "",
  ]
  return ", ".join(word for word in words if word)


def _kl(value: float) -> str:
  """A sampled KL to two digits, without the sign of a -0.00."""
  return f"{round(value, 2) + 0.0:.2f}"


def _prior(config: dict) -> str:
  if config["prior"] == "vampprior":
    return f"VampPrior {config['prior_components']}"
  return config["prior"].replace("_", " ")


def diagnosis_md(group: str) -> str:
  """The VampPrior diagnosis runs of one group (scripts/vampprior_diagnosis.py) as a table
  of their settings, KL and test numbers."""
  folder = os.path.join(ROOT, "results", "tomczak2018_diagnosis", group)
  lines = [
    "| run | prior | network | lr | warm-up | KL, epoch 1 | KL, last | train ELBO | test ELBO "
    "| IS | saturated |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for run in sorted(os.listdir(folder)):
    summary = _read_json(os.path.join(folder, run, "summary.json"))
    with open(os.path.join(folder, run, "metrics.jsonl")) as f:
      records = [json.loads(line) for line in f.read().splitlines()]
    config = summary["config"]
    saturated = _read_json(os.path.join(folder, run, "saturation.json"))["saturated_fraction"]
    optimizer = " NormGrad" if config["adam_normgrad"] else ""
    lines.append(
      f"| `{run}` | {_prior(config)} | {_network(config)} | {config['learning_rate']:g}"
      f"{optimizer} | {config['kl_warmup_epochs']} | {_kl(records[0]['test/kl'])} | "
      f"{_kl(records[-1]['test/kl'])} | {_nats(records[-1]['train/elbo'])} | "
      f"{_nats(summary['test_elbo'])} | {_nats(summary['test_log_likelihood'])} | "
      + ("" if saturated is None else f"{saturated:.0%}")
      + " |"
    )
  return "\n".join(lines) + (  # the runs of a group share these settings
    f"\n\n{summary['num_test']:,} test images of {summary['dataset']} (binarized once); IS"
    f" with {summary['log_likelihood_num_samples']:,} samples; KL and test ELBO in nats per image,"
    f" one sample; {config['num_epochs']} epochs at batch {config['batch_size']}; saturated:"
    " the share of the encoder's last tanh layer with |h| > 0.99 over 1,000 test images."
    " `scripts/vampprior_diagnosis.py` trains each run; `results/tomczak2018_diagnosis/"
    f"{group}/` keeps its summary.json and metrics.jsonl."
  )


# The posterior comparison on MNIST (docs/guide/posteriors.md): each run's flags.
POSTERIOR_RUNS = {
  "diagonal": "--config.posterior=diagonal --config.analytic_kl=True",
  "diagonal_mc": "--config.posterior=diagonal",
  "full_covariance": "--config.posterior=full_covariance",
  "iaf2": "--config.flow_steps=2",
  "iaf4": "--config.flow_steps=4",
}


def posteriors_md() -> str:
  """The posterior comparison from results/kingma2016_iaf_mnist/<run>/summary.json."""
  folder = os.path.join(ROOT, "results", "kingma2016_iaf_mnist")
  lines = [
    "| posterior | flags | test ELBO | IS-5000 | gap | minutes |",
    "|---|---|---|---|---|---|",
  ]
  for run, flags in POSTERIOR_RUNS.items():
    path = os.path.join(folder, run, "summary.json")
    if not os.path.exists(path):
      continue
    with open(path) as f:
      s = json.load(f)
    lines.append(
      f"| {run} | `{flags}` | {_nats(s['test_elbo'])} ± {s['test_elbo_stderr']:.2f} | "
      f"{_nats(s['test_log_likelihood'])} ± {s['test_log_likelihood_stderr']:.2f} | "
      f"{s['test_log_likelihood'] - s['test_elbo']:.2f} | {s['training_seconds'] / 60:.1f} |"
    )
  return "\n".join(lines) + (
    "\n\n± is the standard error over the 10,000 test images (binarized once, seed 1234);"
    " gap is IS-5000 minus the ELBO, an estimate of KL(q(z|x) || p(z|x)); minutes of"
    " training. Each run's"
    " command: `python -m experiments.train --config=experiments/configs/"
    "kingma2016_iaf_mnist.py --workdir=DIR --config.data_dir=DATA_DIR` with the row's flags."
  )


def readme_table1() -> str:
  """The README's Table 1 block, markers included."""
  return f"{README_TABLE_BEGIN}\n{table1_md(link=True)}\n{README_TABLE_END}"


def readme_table2() -> str:
  """The README's Table 2 block, markers included."""
  return f"{README_TABLE2_BEGIN}\n{table2_md(link=True)}\n{README_TABLE2_END}"


def speed_line() -> str:
  """One sentence: the library's training speed against the minimal hand-written JAX loop,
  from the newest full table (batches 20 and 100, K = 1 and 50, one seed) of the one-layer
  model on each device."""
  newest = {}
  for run in benchmark_records():  # newest first
    cells = {
      (r["batch"], r["K"]): r["ratio"]
      for r in run["rows"]
      if "ratio" in r and "2 layers" not in r["objective"] and r.get("seeds", 1) == 1
    }
    full = {(20, 1), (20, 50), (100, 1), (100, 50)} <= set(cells)
    if run["mode"] == "train" and full and run["device"] not in newest:
      newest[run["device"]] = (run, list(cells.values()))
  parts = [
    f"{min(ratios):.2f}-{max(ratios):.2f}x on {device} ({run['date']})"
    for device, (run, ratios) in newest.items()
  ]
  return (
    "vae_jax trains at the speed of a minimal hand-written JAX loop of the same model"
    f" and estimator: {'; '.join(parts)}, batches of 20 and 100, K = 1 and 50."
  )


def readme_speed() -> str:
  """The README's speed block, markers included."""
  return f"{README_SPEED_BEGIN}\n{speed_line()}\n{README_SPEED_END}"


MODE_TITLES = {
  "train": "Training throughput",
  "kernels": "Kernels per step",
  "eval": "IS-5000 evaluation",
  "quality": "Time to a test ELBO",
  "precision": "bfloat16 against float32",
  "matmul": "Dense-layer products",
  "prior": "A step with each prior",
  "sweep": "A sweep in one program against separate runs",
}
# Record fields as table headers; a field not named here shows under its own name.
COLUMNS = {
  "objective": "model",
  "library_img_per_s": "library img/s",
  "minimal_loop_img_per_s": "minimal loop img/s",
  "ratio": "ratio",
  "rounds": "rounds",
  "roofline_fraction": "of matmul roofline",
  "library_kernels": "library kernels",
  "minimal_loop_kernels": "minimal loop kernels",
  "eval_batch": "eval batch",
  "eval_chunk": "eval chunk",
  "eval_kernels_per_chunk": "eval kernels per chunk",
  "image_samples_per_second": "image·samples/s",
  "img_per_s": "img/s",
  "train_seconds": "training s",
  "test_iwae_50": "test IWAE-50",
  "test_elbo": "test ELBO",
  "cost_vs_standard": "time / the standard prior's",
  "matmul_cost_vs_standard": "the same, of its matmuls",
  "mixture_library_ms": "mixture density and gradient, library (ms)",
  "mixture_autodiff_ms": "the broadcast expression through autodiff (ms)",
  "sweep_seconds": "one program (s)",
  "separate_seconds": "separate runs (s)",
  "speedup": "speed-up",
  "sweep_steady_img_per_s": "one program, steady img/s",
  "separate_steady_img_per_s": "separate runs, steady img/s",
  "steady_speedup": "steady speed-up",
}


def _format(name: str, value) -> str:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return str(value)
  if name in ("ratio", "roofline_fraction", "seconds"):
    return f"{value:.3f}" if name != "roofline_fraction" else f"{value:.2f}"
  if isinstance(value, float) and abs(value) < 1000:
    return f"{value:,.2f}"
  return f"{value:,.0f}"


def _table(rows: list[dict]) -> list[str]:
  """Rows of one run as a Markdown table; the rounds' ratio range is one column."""
  rows = [dict(r) for r in rows]
  for r in rows:
    if "round_ratio_min" in r:
      r["rounds"] = f"{r.pop('round_ratio_min'):.2f}-{r.pop('round_ratio_max'):.2f}"
  columns = list(dict.fromkeys(c for r in rows for c in r))
  lines = ["| " + " | ".join(COLUMNS.get(c, c) for c in columns) + " |"]
  lines.append("|" + "---|" * len(columns))
  for r in rows:
    lines.append("| " + " | ".join(_format(c, r[c]) if c in r else "" for c in columns) + " |")
  return lines


def benchmark_records() -> list[dict]:
  """Every run that scripts/bench.py recorded, newest first."""
  runs = []
  for path in glob.glob(os.path.join(ROOT, "results", "benchmarks", "*.json")):
    with open(path) as f:
      record = json.load(f)
    for run in reversed(record["runs"]):  # a file appends its runs: the newest is last
      runs.append(dict(run, file=os.path.relpath(path, ROOT), device=record["device"]))
  return sorted(runs, key=lambda run: run["date"], reverse=True)  # stable: newest first


def benchmarks_md() -> str:
  """The recorded runs by device, newest first, each a table under its command and commit."""
  lines = []
  runs = benchmark_records()
  for device in dict.fromkeys(run["device"] for run in runs):
    lines += [f"### {device}", ""]
    for run in (r for r in runs if r["device"] == device):
      lines += [
        f"**{MODE_TITLES.get(run['mode'], run['mode'])}, {run['date']}**:"
        f" `{run['command']}` at commit `{run['commit']}`, jax {run['jax_version']},"
        f" {run['num_devices']} device(s) (`{run['file']}`).",
      ]
      if run.get("note"):
        lines += ["", run["note"]]
      # Rows of another shape (another measurement of the run) get a table of their own.
      for _, rows in itertools.groupby(run["rows"], key=lambda row: tuple(row)):
        lines += ["", *_table(list(rows))]
      lines += [""]
  return "\n".join(lines)


def write_all(out: str) -> None:
  """Writes every generated page under out (docs/_generated)."""
  shutil.rmtree(out, ignore_errors=True)
  os.makedirs(os.path.join(out, "api"))
  with open(os.path.join(out, "api", "index.md"), "w") as f:
    f.write(api_index())
  for modules in API_SECTIONS.values():
    for module in modules:
      with open(os.path.join(out, "api", f"vae_jax.{module}.md"), "w") as f:
        f.write(api_page(module))
  # Fragments that the hand-written pages include (docs/conf.py excludes them as pages).
  os.makedirs(os.path.join(out, "fragments"))
  pages = {
    "config_fields.md": config_fields_md(),
    "table1.md": table1_md(link=False) + "\n\n" + table1_details_md(),
    "benchmarks.md": benchmarks_md(),
    "posteriors_mnist.md": posteriors_md(),
    "table2.md": table2_md(link=False),
    "vampprior_collapse.md": diagnosis_md("collapse"),
    "vampprior_short_budget.md": diagnosis_md("short_budget"),
  }
  for name, text in pages.items():
    with open(os.path.join(out, "fragments", name), "w") as f:
      f.write(text + "\n")
  notebooks = os.path.join(out, "notebooks")
  os.makedirs(notebooks)
  for path in sorted(glob.glob(os.path.join(ROOT, "experiments", "notebooks", "*.ipynb"))):
    shutil.copy(path, notebooks)


def update_readme() -> None:
  """Rewrites the README's rendered blocks: Table 1 from the eval.json files, the speed
  line from the benchmark records."""
  path = os.path.join(ROOT, "README.md")
  with open(path) as f:
    text = f.read()
  for begin, end, render in (
    (README_TABLE_BEGIN, README_TABLE_END, readme_table1),
    (README_TABLE2_BEGIN, README_TABLE2_END, readme_table2),
    (README_SPEED_BEGIN, README_SPEED_END, readme_speed),
  ):
    pattern = re.escape(begin) + ".*?" + re.escape(end)
    if not re.search(pattern, text, flags=re.DOTALL):
      sys.exit(f"README.md has no block between {begin!r} and {end!r}.")
    text = re.sub(pattern, lambda _, render=render: render(), text, flags=re.DOTALL)
  with open(path, "w") as f:
    f.write(text)


if __name__ == "__main__":
  sys.path.insert(0, ROOT)
  update_readme()
