"""Faults and bad input: a resumed run checks its config, damaged checkpoints are
recognized and skipped, nothing is logged twice, an unwritable workdir fails at once."""

import asyncio
import importlib
import json
import os
import re
import shutil
import subprocess
import sys

import helpers
import jax
import numpy as np
import pytest
import tensorstore as ts
from test_train import make_small_dataset, tiny_config

from vae_jax import checkpoints, metrics, report, train
from vae_jax.config import build_config, check_resumable, load_workdir_config


@pytest.fixture(scope="module")
def small_dataset():
  return make_small_dataset()


def _params(workdir):
  checkpointer = checkpoints.Checkpointer(workdir, max_to_keep=3)
  step = checkpointer.latest_step()
  restored = checkpointer.manager.restore(step)
  checkpointer.close()
  return step, restored["params"]


def test_resuming_with_another_config_is_refused_and_keeps_the_workdir(small_dataset, tmp_path):
  workdir = str(tmp_path)
  train.train_and_evaluate(tiny_config(num_epochs=1), workdir, dataset=small_dataset)
  config_json = open(os.path.join(workdir, "config.json")).read()
  for change, named in (
    (dict(activation="relu"), "activation='tanh' -> 'relu'"),
    (dict(batch_size=25), "batch_size=50 -> 25"),
    (dict(learning_rate=3e-3), "learning_rate=0.001 -> 0.003"),
    (dict(latent_dim=5), "latent_dim=4 -> 5"),
  ):
    with pytest.raises(ValueError, match="Bad config for resuming") as error:
      train.train_and_evaluate(tiny_config(num_epochs=1, **change), workdir, dataset=small_dataset)
    assert named in str(error.value)
    assert open(os.path.join(workdir, "config.json")).read() == config_json  # untouched
  # Training longer, or evaluating with more samples, is a resume.
  summary = train.train_and_evaluate(
    tiny_config(num_epochs=2, eval_num_samples=30), workdir, dataset=small_dataset
  )
  assert summary["steps"] == 16 and summary["log_likelihood_num_samples"] == 30
  cosine = str(tmp_path / "cosine")
  train.train_and_evaluate(
    tiny_config(num_epochs=1, lr_schedule="cosine"), cosine, dataset=small_dataset
  )
  with pytest.raises(ValueError, match="num_epochs=1 -> 2"):  # a cosine schedule depends on it
    train.train_and_evaluate(
      tiny_config(num_epochs=2, lr_schedule="cosine"), cosine, dataset=small_dataset
    )


def test_fields_a_run_never_reads_do_not_block_resuming_it():
  # A new default for a field a run never reads (top_hidden in a one-layer run) relabels nothing.
  one_layer = build_config(dict(top_hidden=(50, 50), top_latent_dim=20, conv_channels=(8,)))
  check_resumable(one_layer, build_config())
  two_layers = build_config(dict(stochastic_layers=2, top_hidden=(50, 50)))
  with pytest.raises(ValueError, match=r"top_hidden=\[50, 50\] -> \[100, 100\]"):
    check_resumable(two_layers, build_config(dict(stochastic_layers=2)))
  conv = build_config(dict(architecture="conv", conv_channels=(8,)))
  with pytest.raises(ValueError, match=r"conv_channels=\[8\] -> \[32, 64\]"):
    check_resumable(conv, build_config(dict(architecture="conv")))


@pytest.mark.parametrize(
  "name", ["burda2015_vae_k1", "burda2015_iwae_k50", "burda2015_iwae_k50_2layer"]
)
def test_published_runs_resume_with_their_config_files(name):
  # scripts/reproduce_burda2015.sh resumes results/<name> with experiments/configs/<name>.py.
  saved = load_workdir_config(os.path.join(helpers.REPO, "results", name))
  check_resumable(saved, importlib.import_module(f"experiments.configs.{name}").get_config())


def test_reproduce_burda2015_names_a_run_that_failed(tmp_path):
  # A stand-in for python: the VAE has finished, the 1-layer IWAE trains until its piece
  # ends, the 2-layer one fails at once (as a refused resume does).
  stub = tmp_path / "python"
  stub.write_text(
    "#!/usr/bin/env bash\n"
    'case "$*" in\n'
    '  *2layer*) echo "Error: Bad config for resuming: (top_hidden)" >&2; exit 1 ;;\n'
    '  *) echo "epoch 7/3280 step 21000 | train loss 90.00"; exec sleep 30 ;;\n'
    "esac\n"
  )
  stub.chmod(0o755)
  root = tmp_path / "results"
  (root / "burda2015_vae_k1").mkdir(parents=True)
  (root / "burda2015_vae_k1" / "summary.json").write_text("{}")
  result = subprocess.run(
    ["bash", "scripts/reproduce_burda2015.sh", "DATA", str(root), "2"],
    cwd=helpers.REPO,
    env={**os.environ, "PYTHON": str(stub)},
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert result.returncode == 1, result.stdout + result.stderr
  assert "burda2015_vae_k1: finished" in result.stdout
  assert "burda2015_iwae_k50: epoch 7/3280 step 21000" in result.stdout
  assert "burda2015_iwae_k50_2layer: FAILED (exit 1)" in result.stdout
  assert "Bad config for resuming" in result.stdout


def _flip_a_byte(path):
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0x10]))


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _largest_file(directory):
  files = [os.path.join(root, f) for root, _, names in os.walk(directory) for f in names]
  return max(files, key=os.path.getsize)


@pytest.mark.parametrize("damage", [_flip_a_byte, _truncate], ids=["flipped_byte", "truncated"])
def test_a_damaged_checkpoint_is_skipped_and_the_run_ends_as_an_undamaged_one(
  small_dataset, tmp_path, damage
):
  straight = str(tmp_path / "straight")
  train.train_and_evaluate(tiny_config(num_epochs=3), straight, dataset=small_dataset)
  damaged = str(tmp_path / "damaged")
  train.train_and_evaluate(tiny_config(num_epochs=2), damaged, dataset=small_dataset)
  damage(_largest_file(os.path.join(damaged, "checkpoints", "16")))
  # Resumes from step 8 (the newest intact checkpoint), replaces step 16, trains to 24.
  train.train_and_evaluate(tiny_config(num_epochs=3), damaged, dataset=small_dataset)
  (step_a, params_a), (step_b, params_b) = _params(straight), _params(damaged)
  assert step_a == step_b == 24
  jax.tree.map(np.testing.assert_array_equal, params_a, params_b)
  records = [json.loads(line) for line in open(os.path.join(damaged, "metrics.jsonl"))]
  assert [r["epoch"] for r in records] == [1, 2, 3]  # epoch 2's record, redone, once


def test_no_intact_checkpoint_says_what_to_do(small_dataset, tmp_path):
  workdir = str(tmp_path)
  train.train_and_evaluate(tiny_config(num_epochs=1), workdir, dataset=small_dataset)
  _truncate(_largest_file(os.path.join(workdir, "checkpoints", "8")))
  with pytest.raises(ValueError, match="No checkpoint in .* can be restored .*new --workdir"):
    train.train_and_evaluate(tiny_config(num_epochs=2), workdir, dataset=small_dataset)


def test_steps_logged_after_the_last_checkpoint_are_not_logged_twice(small_dataset, tmp_path):
  """A run killed after logging epoch 3 but before checkpointing it resumes from epoch 2:
  metrics.jsonl keeps epochs 1-2 and gets epoch 3 once. The training time reported
  counts the epochs of both calls."""
  workdir = str(tmp_path)
  config = tiny_config(num_epochs=3, checkpoint_every_epochs=2)
  train.train_and_evaluate(config, workdir, dataset=small_dataset)
  checkpointer = checkpoints.Checkpointer(workdir, max_to_keep=3)
  assert checkpointer.manager.all_steps() == [16, 24]
  checkpointer.manager.delete(24)  # as if killed before the last save
  checkpointer.close()
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write('{"step": 32, "train/lo')  # and while writing a record
  assert [r["epoch"] for r in metrics.read_records(workdir)] == [1, 2, 3]  # the cut line skipped
  summary = train.train_and_evaluate(config, workdir, dataset=small_dataset)
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["epoch"] for r in records] == [1, 2, 3]
  assert summary["training_seconds"] == pytest.approx(sum(r["train_seconds"] for r in records))
  assert summary["training_seconds"] > records[-1]["train_seconds"] > 0
  assert summary["training_seconds_by_device"] == {
    report.device_description(): pytest.approx(summary["training_seconds"])
  }


def test_a_run_resumed_on_another_machine_reports_its_training_time_per_device(
  small_dataset, tmp_path, capsys
):
  """Long runs go on piece by piece, perhaps on other machines: summary.json and the printed
  summary split the training time by the device each epoch ran on."""
  workdir = str(tmp_path)
  train.train_and_evaluate(tiny_config(num_epochs=2), workdir, dataset=small_dataset)
  path = os.path.join(workdir, "metrics.jsonl")
  records = metrics.read_records(workdir)
  # As if epoch 1 ran on another machine's device (a name that is never this one's, even on
  # an H100).
  other = f"not {report.device_description()}"
  records[0]["device"] = other
  del records[1]["device"]  # and epoch 2 before the device was logged
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  capsys.readouterr()
  summary = train.train_and_evaluate(tiny_config(num_epochs=3), workdir, dataset=small_dataset)
  third = metrics.read_records(workdir)[2]
  assert third["device"] == report.device_description()
  assert summary["training_seconds_by_device"] == {
    other: records[0]["train_seconds"],
    "device not recorded": records[1]["train_seconds"],
    report.device_description(): third["train_seconds"],
  }
  page = open(os.path.join(workdir, "index.html")).read()
  assert f"<li>training_seconds_by_device: {other}: " in page
  written = json.load(open(os.path.join(workdir, "summary.json")))
  assert written["training_seconds_by_device"] == summary["training_seconds_by_device"]
  printed = capsys.readouterr().out
  time = r"\d+m\d\ds"
  assert re.search(
    rf"Training {time} \({re.escape(other)}: {time}, device not recorded: {time}, "
    rf"{re.escape(report.device_description())}: {time}\), evaluation",
    printed,
  ), printed


def test_a_full_disk_stops_the_run_with_what_to_do_and_loses_nothing(
  small_dataset, tmp_path, monkeypatch
):
  """Space is checked before a checkpoint is written: the run stops with one clear error,
  the last checkpoint stays, and once there is room the run ends as one never stopped."""
  config = tiny_config(num_epochs=4, checkpoint_every_epochs=2)
  straight = str(tmp_path / "straight")
  train.train_and_evaluate(config, straight, dataset=small_dataset)
  workdir = str(tmp_path / "full")
  train.train_and_evaluate(tiny_config(num_epochs=2), workdir, dataset=small_dataset)
  real_disk_usage = shutil.disk_usage
  monkeypatch.setattr(
    checkpoints.shutil, "disk_usage", lambda path: real_disk_usage(path)._replace(free=100_000)
  )
  with pytest.raises(
    OSError,
    match=r"checkpoint of step 32 in .*\(0\.1 MiB free on its disk, about 0\.\d MiB needed\)\. "
    r".*resumes from the checkpoint at step 16",
  ):
    train.train_and_evaluate(config, workdir, dataset=small_dataset)
  monkeypatch.undo()
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["16", "8"]
  train.train_and_evaluate(config, workdir, dataset=small_dataset)
  (step_a, params_a), (step_b, params_b) = _params(straight), _params(workdir)
  assert step_a == step_b == 32
  jax.tree.map(np.testing.assert_array_equal, params_a, params_b)
  assert [r["epoch"] for r in metrics.read_records(workdir)] == [1, 2, 3, 4]


FILE_SIZE_LIMIT = """
import os, resource, runpy, signal, sys
os.environ["JAX_PLATFORMS"] = "cpu"  # the limit would also bind a GPU compiler's files
limit = int(sys.argv[1])
if limit:
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails (EFBIG)
  resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.argv = ["experiments.train", *sys.argv[2:]]
runpy.run_module("experiments.train", run_name="__main__")
"""


def test_a_checkpoint_write_that_fails_midway_is_one_clear_line_and_removed(tmp_path):
  """A quota or a file size limit is not seen before writing: the write fails in orbax's
  threads. The command still ends in one line that names the cause, the half-written
  checkpoint is removed, and the previous one stays."""
  workdir = str(tmp_path / "run")
  flags = ["--config=experiments/configs/smoke.py", f"--workdir={workdir}"]
  first = helpers.run_python("-c", FILE_SIZE_LIMIT, "0", *flags)
  assert first.returncode == 0, first.stderr[-3000:]
  # 64 KiB: room for the logs, not for a checkpoint's data (the smoke model's is ~0.6 MB).
  result = helpers.run_python("-c", FILE_SIZE_LIMIT, "65536", *flags, "--config.num_epochs=3")
  assert result.returncode == 1
  assert "Traceback" not in result.stderr and "Event loop" not in result.stderr, result.stderr
  assert (
    f"Error: Could not save the checkpoint of step 120 in {workdir}/checkpoints (File too "
    "large)." in result.stderr
  ), result.stderr[-2000:]
  assert "it resumes from the checkpoint at step 80, the last one saved." in result.stderr
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["40", "80"]


class _RaisesWhenCollected:
  def __del__(self):
    raise ValueError("not a checkpoint write's report")


def test_a_failed_saves_abandoned_writes_stay_quiet_after_it_has_raised(monkeypatch):
  """The writes a failed save leaves in flight may finish after the save has raised (on
  CI's machine they did, and each printed a traceback). Their closed-event-loop reports
  are dropped then too; every other unraisable report still comes through."""
  reports = []
  monkeypatch.setattr(sys, "unraisablehook", reports.append)
  with pytest.raises(OSError), checkpoints._quiet_failed_writes():
    raise OSError("File too large")
  # An abandoned write: tensorstore completes it after its event loop is closed.
  promise, future = ts.Promise.new()

  async def await_write():
    await future

  loop = asyncio.new_event_loop()
  loop.create_task(await_write())
  loop.run_until_complete(asyncio.sleep(0.01))
  loop.close()
  promise.set_result(None)
  _RaisesWhenCollected()  # dropped at once: its __del__ raises
  assert [repr(report.exc_value) for report in reports] == [
    'ValueError("not a checkpoint write\'s report")'
  ]


def test_an_unwritable_workdir_fails_at_once(small_dataset, tmp_path):
  a_file = tmp_path / "a_file"
  a_file.write_text("")
  with pytest.raises(PermissionError, match="Cannot write to .*a_file"):
    train.train_and_evaluate(tiny_config(), str(a_file), dataset=small_dataset)
  if os.geteuid() != 0:  # root writes anywhere
    read_only = tmp_path / "read_only"
    read_only.mkdir(mode=0o500)
    with pytest.raises(PermissionError, match="choose a --workdir you can write to"):
      train.train_and_evaluate(tiny_config(), str(read_only), dataset=small_dataset)


def test_build_config_names_an_unknown_field():
  with pytest.raises(KeyError, match="learning_rte"):
    build_config(dict(learning_rte=1e-3))


def test_entry_points_report_a_users_mistake_in_one_line(tmp_path):
  workdir = str(tmp_path / "run")
  trained = helpers.run_module(
    "experiments.train", "--config=experiments/configs/smoke.py", f"--workdir={workdir}"
  )
  assert trained.returncode == 0, trained.stderr[-3000:]
  for module, flags, message in (
    ("experiments.train", ["--config.activation=relu"], "activation='tanh' -> 'relu'"),
    ("experiments.evaluate", ["--iwae_samples=1,x"], "--iwae_samples=1,x: give integers"),
    ("experiments.evaluate", [f"--workdir={tmp_path}"], "has no config.json"),
  ):
    if module == "experiments.train":
      flags = ["--config=experiments/configs/smoke.py", f"--workdir={workdir}", *flags]
    elif not any(f.startswith("--workdir") for f in flags):
      flags = [f"--workdir={workdir}", *flags]
    result = helpers.run_module(module, *flags)
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
