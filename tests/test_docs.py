"""The README and the docs: numbers equal their files, links resolve, every public name and
config field is documented, and the README stays a front door (under 200 lines, 1,500 words).

`make docs` builds the site with warnings as errors (in CI); these checks are the fast ones.
"""

import ast
import glob
import inspect
import json
import os
import re
import sys

import helpers
import pytest

from vae_jax import config as config_lib

sys.path.insert(0, os.path.join(helpers.REPO, "docs"))
import generate  # noqa: E402


def readme() -> str:
  with open(os.path.join(helpers.REPO, "README.md")) as f:
    return f.read()


def table_numbers(markdown: str) -> dict[str, list[float]]:
  """The numbers of each Table 1 row (paper, IS-5000, its error, IWAE-50, ELBO), by run."""
  rows = {}
  for run in generate.BURDA2015_TABLE1:
    line = next(line for line in markdown.splitlines() if line.startswith("|") and run in line)
    cells = line.replace("−", "-").split("|")[2:6]
    rows[run] = [float(x) for cell in cells for x in re.findall(r"-?\d+\.\d+", cell)]
  return rows


@pytest.mark.parametrize("where", ["README", "docs"])
def test_table1_numbers_equal_the_eval_json_files(where):
  text = readme() if where == "README" else generate.table1_md(link=False)
  for run, numbers in table_numbers(text).items():
    with open(os.path.join(helpers.REPO, "results", run, "eval.json")) as f:
      report = json.load(f)
    expected = [
      generate.BURDA2015_TABLE1[run][1],
      report["test_log_likelihood"],
      report["test_log_likelihood_stderr"],
      report["test_iwae_50"],
      report["test_elbo"],
    ]
    assert numbers == [round(x, 2) for x in expected], run


def test_readme_table1_is_the_rendered_one():
  assert generate.readme_table1() in readme(), "run `python docs/generate.py` to re-render it"


def test_readme_table2_is_the_rendered_one_with_the_eval_json_numbers():
  assert generate.readme_table2() in readme(), "run `python docs/generate.py` to re-render it"
  for run, (*_, paper) in generate.TOMCZAK2018_TABLE2.items():
    path = os.path.join(helpers.REPO, "results", run, "eval.json")
    line = next(line for line in readme().splitlines() if line.startswith("|") and run in line)
    numbers = [float(x) for x in re.findall(r"-?\d+\.\d+", line.replace("−", "-"))]
    assert numbers[0] == paper, run
    if os.path.exists(path):  # a finished run: its IS-5000 and standard error
      with open(path) as f:
        report = json.load(f)
      expected = [report["test_log_likelihood"], report["test_log_likelihood_stderr"]]
      assert numbers[1:3] == [round(x, 2) for x in expected], run


def test_readme_is_a_front_door():
  text = readme()
  assert len(text.splitlines()) <= 200
  assert len(text.split()) <= 1500


def test_readme_links_resolve():
  links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme())
  local = [link for link in links if "://" not in link]
  assert local, "the README links to its docs pages"
  missing = [link for link in local if not os.path.exists(os.path.join(helpers.REPO, link))]
  assert not missing


def _constant_documented(source_lines: list[str], node: ast.stmt) -> bool:
  """A constant or attribute is documented by a `#:` comment right above it or beside it."""
  above, line = source_lines[node.lineno - 2], source_lines[node.lineno - 1]
  return above.lstrip().startswith("#:") or "  #: " in line


@pytest.mark.parametrize("module_name", [m for ms in generate.API_SECTIONS.values() for m in ms])
def test_every_public_name_has_a_docstring(module_name):
  module = __import__(f"vae_jax.{module_name}", fromlist=["_"])
  lines = inspect.getsource(module).splitlines()
  undocumented = []
  for name, node in generate.public_definitions(module):
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
      if not _constant_documented(lines, node):
        undocumented.append(name)
    else:
      if not ast.get_docstring(node):
        undocumented.append(name)
      if isinstance(node, ast.ClassDef):
        undocumented += [
          f"{node.name}.{m.name}"
          for m in node.body
          if isinstance(m, ast.FunctionDef)
          and not m.name.startswith("_")
          and not ast.get_docstring(m)
        ]
        # Declared attributes (a protocol's, a NamedTuple's fields): a `#:` comment, or an
        # entry in the class docstring's Attributes section.
        attributes = (ast.get_docstring(node) or "").partition("Attributes:")[2]
        undocumented += [
          f"{node.name}.{m.target.id}"
          for m in node.body
          if isinstance(m, ast.AnnAssign)
          and isinstance(m.target, ast.Name)
          and not m.target.id.startswith("_")
          and not _constant_documented(lines, m)
          and not re.search(rf"\b{m.target.id}\b[^\n]*:", attributes)
        ]
  assert not undocumented, f"vae_jax.{module_name}: {undocumented}"
  assert module.__doc__, f"vae_jax.{module_name} has no module docstring"


def test_every_config_field_is_described_once():
  sections = generate.config_fields()
  fields = [name for _, rows in sections for name, _, _ in rows]
  assert sorted(fields) == sorted(config_lib.get_default_config().keys())
  assert all(description for _, rows in sections for _, _, description in rows)


def test_benchmark_records_say_what_ran_where():
  paths = glob.glob(os.path.join(helpers.REPO, "results", "benchmarks", "*.json"))
  assert paths
  for path in paths:
    with open(path) as f:
      record = json.load(f)
    assert record["device"] and record["runs"], path
    for run in record["runs"]:
      for key in ("date", "mode", "command", "commit", "jax_version", "num_devices", "rows"):
        assert run[key] not in (None, "", []), (path, key)
