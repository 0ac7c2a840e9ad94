"""The README's research examples run as written, with a test-sized budget."""

import os
import re

import helpers
import numpy as np
import pytest

from vae_jax import config as config_lib

MARKER = "<!-- this example runs in tests/test_readme.py -->"


def readme_examples() -> list[str]:
  with open(os.path.join(helpers.REPO, "README.md")) as f:
    text = f.read()
  return re.findall(re.escape(MARKER) + r"\s*```python\n(.*?)```", text, flags=re.DOTALL)


def test_the_readme_has_its_two_research_examples():
  assert len(readme_examples()) == 2


@pytest.mark.parametrize("index", [0, 1], ids=["your_own_loss", "your_own_model"])
def test_readme_example_runs(index, tmp_path, monkeypatch):
  """Runs the example with the config's budget cut down (1 epoch, a 20-sample IS estimate
  instead of 5,000) and checks what it trained and evaluated."""
  build_config = config_lib.build_config

  def small(overrides=None):
    config = build_config(overrides)
    config.update(dict(num_epochs=1, eval_num_samples=20, eval_chunk_size=10))
    return config

  monkeypatch.setattr(config_lib, "build_config", small)
  monkeypatch.chdir(tmp_path)
  namespace = {}
  exec(readme_examples()[index], namespace)
  summary = namespace["summary"]
  assert np.isfinite(summary["test_log_likelihood"]) and summary["steps"] == 40
  workdir = tmp_path / "workdirs" / ("my_loss" if index == 0 else "linear_vae")
  assert (workdir / "summary.json").exists() and (workdir / "samples.png").exists()
  if index == 0:
    record = open(workdir / "metrics.jsonl").readline()
    assert '"train/beta_elbo"' in record and '"train/iwae_16"' in record
