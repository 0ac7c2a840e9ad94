"""The notebooks in experiments/notebooks run top to bottom and draw their pictures."""

import os
import re

import helpers
import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = os.path.join(helpers.REPO, "experiments", "notebooks")
# Pictures each notebook must show inline: PNG outputs, from files or from matplotlib.
PICTURES = {"quickstart.ipynb": 6, "sweeps.ipynb": 3, "your_own_loss.ipynb": 1}


def test_every_notebook_is_tested_and_committed_without_outputs():
  names = sorted(n for n in os.listdir(NOTEBOOKS) if n.endswith(".ipynb"))
  assert names == sorted(PICTURES)
  for name in names:
    notebook = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code), name
    assert os.path.getsize(os.path.join(NOTEBOOKS, name)) < 1_000_000


def shortened(notebook):
  """The notebook with a tenth of its epochs and 100 importance samples per test image:
  the same cells and code paths in less than half the time (the full runs' times are in
  the README)."""
  epochs = evaluations = 0
  for cell in notebook.cells:
    if cell.cell_type == "code":
      source = re.sub(r",\s*eval_num_samples=\d+", "", cell.source)
      source, n = re.subn(
        r"num_epochs=(\d+)", lambda m: f"num_epochs={max(2, int(m[1]) // 10)}", source
      )
      epochs += n
      source, n = re.subn(
        r"build_config\(dict\(", "build_config(dict(eval_num_samples=100, ", source
      )
      evaluations += n
      cell.source = source
  assert epochs and epochs == evaluations, "every config in the notebook should be shortened"
  return notebook


@pytest.mark.parametrize("name", sorted(PICTURES))
def test_notebook_runs_top_to_bottom(name, tmp_path, monkeypatch):
  notebook = shortened(nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4))
  # Runs in tmp_path (its workdirs go there), importing this checkout's vae_jax.
  monkeypatch.setenv(
    "PYTHONPATH", os.pathsep.join(filter(None, [helpers.REPO, os.environ.get("PYTHONPATH")]))
  )
  client = NotebookClient(
    notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
  )
  client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
  outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
  pictures = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(pictures) >= PICTURES[name], f"{len(pictures)} pictures shown"
  assert not [o for o in outputs if o.get("output_type") == "error"]
  # Without ipywidgets (as here), the bar is a text bar, not tqdm.auto's warning.
  assert not [o for o in outputs if "IProgress not found" in o.get("text", "")]
