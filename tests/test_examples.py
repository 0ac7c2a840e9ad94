"""The examples of the README and the docs pages that are marked as run here, run as written.

A training example runs with the config's budget cut down (1 epoch, a 20-sample IS estimate
instead of 5,000) and is checked for what it trained and evaluated; the README's pure-API
example is checked against log p(x) in closed form. (The pages' `>>>` examples are doctests.)
"""

import glob
import math
import os
import re

import helpers
import jax
import numpy as np
import pytest

import vae_jax
from vae_jax import config as config_lib

MARKER = "<!-- this example runs in tests/test_examples.py -->"
PAGES = ["README.md", *sorted(glob.glob("docs/**/*.md", root_dir=helpers.REPO, recursive=True))]


def examples() -> dict[str, str]:
  """Every marked example, by page and number."""
  found = {}
  for page in PAGES:
    if page.startswith("docs/_"):
      continue
    with open(os.path.join(helpers.REPO, page)) as f:
      blocks = re.findall(re.escape(MARKER) + r"\s*```python\n(.*?)```", f.read(), re.DOTALL)
    found.update({f"{page}#{i}": block for i, block in enumerate(blocks)})
  return found


EXAMPLES = examples()


def test_the_pages_have_their_examples():
  pages = {name.split("#")[0] for name in EXAMPLES}
  assert {
    "README.md",
    "docs/guide/your_own_loss.md",
    "docs/guide/your_own_model.md",
    "docs/guide/posteriors.md",
  } <= pages
  assert len(EXAMPLES) == 5


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs(name, tmp_path, monkeypatch):
  build_config = config_lib.build_config

  def small(overrides=None):
    config = build_config(overrides)
    config.update(dict(num_epochs=1, eval_num_samples=20, eval_chunk_size=10))
    return config

  monkeypatch.setattr(config_lib, "build_config", small)
  monkeypatch.chdir(tmp_path)
  namespace = {}
  # distrax broadcasts implicitly, which the tests otherwise forbid (conftest.py).
  promotion = "allow" if "import distrax" in EXAMPLES[name] else "raise"
  with jax.numpy_rank_promotion(promotion):
    exec(EXAMPLES[name], namespace)
  if "summary" not in namespace:  # the pure API: every bound at the exact posterior is log p(x)
    log_px = vae_jax.log_normal(namespace["x"], 0.0, math.log(2.0))
    for bound in ("elbo", "iwae"):
      np.testing.assert_allclose(namespace[bound], log_px, rtol=1e-5)
    return
  summary = namespace["summary"]
  assert np.isfinite(summary["test_log_likelihood"]) and summary["steps"] == 40
  workdir = tmp_path / re.search(r'"(workdirs/\w+)"', EXAMPLES[name]).group(1)
  assert (workdir / "summary.json").exists() and (workdir / "samples.png").exists()
  record = open(workdir / "metrics.jsonl").readline()
  for metric in re.findall(r'"(\w+)": jnp\.mean', EXAMPLES[name]):  # the loss's own metrics
    assert f'"train/{metric}"' in record
