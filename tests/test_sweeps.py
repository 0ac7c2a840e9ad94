"""Tests for sweeps in one program (vae_jax/sweeps.py): the members are real runs."""

import json
import os

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_train import _run_chunks, interrupt_at_call, make_small_dataset, tiny_config

from vae_jax import data, metrics, report, sweeps, train
from vae_jax.config import build_config, load_workdir_config, validate_config
from vae_jax.experiment import Experiment


@pytest.fixture(scope="module")
def small_dataset():
  return make_small_dataset()


def test_a_sweep_is_parsed_from_a_string_or_a_dict_and_ordered_by_member():
  config = build_config(dict(sweep="beta=0.5,1;learning_rate=1e-3,3e-4", num_seeds=2, seed=7))
  assert sweeps.parse(config.sweep) == {"beta": (0.5, 1.0), "learning_rate": (1e-3, 3e-4)}
  assert build_config(dict(sweep={"beta": [0.5, 1]})).sweep == "beta=0.5,1.0"
  assert sweeps.num_members(config) == 8
  settings = sweeps.member_settings(config)
  assert settings[0] == {"beta": 0.5, "learning_rate": 1e-3, "seed": 7}
  assert settings[3] == {"beta": 0.5, "learning_rate": 3e-4, "seed": 8}
  assert settings[7] == {"beta": 1.0, "learning_rate": 3e-4, "seed": 8}


@pytest.mark.parametrize(
  "overrides, message",
  [
    (dict(sweep="latent_dim=2,4"), "changes the program's shapes or code"),
    (dict(sweep="alpha=1,2"), "a field this config lacks"),
    (dict(sweep="beta"), "is not FIELD=V1,V2"),
    (dict(sweep="beta=a,b"), "must be numbers"),
    (dict(sweep="beta=1,2", objective="iwae", num_samples=5), "no KL term to weigh"),
    (dict(sweep="free_bits=0,1", analytic_kl=False), "needs analytic_kl=True"),
  ],
)
def test_a_sweep_that_cannot_run_in_one_program_is_refused_before_any_work(overrides, message):
  with pytest.raises(ValueError, match=message):
    validate_config(build_config(overrides))


def test_a_field_of_ones_own_may_be_swept_once_declared():
  config = build_config(dict(sweep="alpha=1,2"))
  with pytest.raises(ValueError):
    validate_config(config)
  config.alpha = 1.0  # declared: a loss of one's own reads it from hparams
  validate_config(config)


def test_members_end_with_the_parameters_of_separate_runs(small_dataset):
  overrides = dict(kl_warmup_epochs=1, analytic_kl=True)
  sweep = dict(beta=(0.5, 2.0), learning_rate=(1e-3, 3e-3))
  together = Experiment(
    tiny_config(sweep=sweeps.format_spec(sweep), num_seeds=2, seed=5, **overrides), small_dataset
  )
  state = _run_chunks(together, together.initial_state(), 2)
  for m, member in enumerate(sweeps.member_settings(together.config)):
    alone = Experiment(
      tiny_config(
        beta=member["beta"], learning_rate=member["learning_rate"], seed=member["seed"], **overrides
      ),
      small_dataset,
    )
    separate = _run_chunks(alone, alone.initial_state(), 2)
    jax.tree.map(
      lambda a, b, m=m: np.testing.assert_allclose(a[m], b[0], rtol=2e-5, atol=2e-6),
      state["params"],
      separate["params"],
    )


def test_a_loss_of_ones_own_receives_the_members_values(small_dataset):
  seen = []

  def loss_fn(model, key, x, labels, step, hparams):
    terms = model.elbo_terms(key, x)
    seen.append(sorted(hparams))
    value = terms.reconstruction - hparams["alpha"] * terms.kl
    return -jnp.mean(value), {"alpha": jnp.asarray(hparams["alpha"], jnp.float32)}

  config = tiny_config(sweep="alpha=0.5,4")
  config.alpha = 1.0
  experiment = Experiment(config, small_dataset, loss_fn=loss_fn)
  keys, images, labels = experiment.train_inputs()
  _, metrics = experiment.train_chunk(experiment.initial_state(), keys, images, labels)
  np.testing.assert_allclose(jax.device_get(metrics["alpha"]), [0.5, 4.0])
  assert "alpha" in seen[0] and "beta" in seen[0]


def test_a_gaussian_variance_sweep_equals_separate_runs_and_needs_a_fixed_variance(
  small_dataset,
):
  overrides = dict(likelihood="gaussian", binarization="none")
  together = Experiment(tiny_config(sweep="gaussian_logvar=0,-2", **overrides), small_dataset)
  state = _run_chunks(together, together.initial_state(), 2)
  test_x, test_labels = together.eval_inputs(small_dataset.test_images, small_dataset.test_labels)
  elbos = together.evaluate(state["params"], together.swept(state), test_x, test_labels)["elbo"]
  for m, logvar in enumerate((0.0, -2.0)):
    alone = Experiment(tiny_config(gaussian_logvar=logvar, **overrides), small_dataset)
    separate = _run_chunks(alone, alone.initial_state(), 2)
    jax.tree.map(
      lambda a, b, m=m: np.testing.assert_allclose(a[m], b[0], rtol=2e-5, atol=2e-6),
      state["params"],
      separate["params"],
    )
    elbo = alone.evaluate(separate["params"], {}, test_x, test_labels)["elbo"][0]
    np.testing.assert_allclose(elbos[m], elbo, rtol=1e-5)
  with pytest.raises(ValueError, match="needs likelihood='gaussian'"):
    validate_config(build_config(dict(sweep="gaussian_logvar=0,-2")))


def test_combinations_are_averaged_over_seeds_and_the_best_is_a_finished_one():
  config = build_config(dict(sweep="beta=1,2,4", num_seeds=2))
  log_likelihoods = [-90.0, -92.0, -85.0, -87.0, -80.0, -70.0]  # the last two diverged
  per_member = [
    {"elbo": ll - 5.0, "elbo_stderr": 0.5, "log_likelihood": ll, "log_likelihood_stderr": 0.3}
    for ll in log_likelihoods
  ]
  compared = report.compare_combinations(config, per_member, np.array([-1, -1, -1, -1, 40, 7]))
  first, second, third = compared["combinations"]
  assert first["values"] == {"beta": 1.0} and third["values"] == {"beta": 4.0}
  assert first["log_likelihood"] == -91.0 and first["elbo"] == -96.0
  np.testing.assert_allclose(first["log_likelihood_seed_std"], np.std([-90, -92], ddof=1))
  assert first["log_likelihood_stderr"] == 0.3
  assert third["diverged_at_step"] == [40, 7] and second["diverged_at_step"] == [None, None]
  assert compared["best_combination"] == 1  # -86, not the diverged -75
  assert compared["log_likelihood"] == -86.0  # the headline numbers are the best's


def test_a_beta_by_learning_rate_sweep_trains_from_the_command_line_and_compares(tmp_path):
  workdir = str(tmp_path / "sweep")
  trained = helpers.run_module(
    "experiments.train",
    "--config=experiments/configs/smoke.py",
    f"--workdir={workdir}",
    "--config.sweep=beta=0.5,4;learning_rate=1e-3,3e-3",
    "--config.num_seeds=2",
  )
  assert trained.returncode == 0, trained.stderr[-3000:]
  assert "Sweep: 4 combinations x 2 seeds" in trained.stdout
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  sweep = summary["sweep"]
  assert sweep["fields"] == {"beta": [0.5, 4.0], "learning_rate": [1e-3, 3e-3]}
  combinations = sweep["combinations"]
  assert [c["values"] for c in combinations] == [
    {"beta": b, "learning_rate": lr} for b in (0.5, 4.0) for lr in (1e-3, 3e-3)
  ]
  for entry in combinations:
    for name in ("test_elbo", "test_log_likelihood"):
      assert np.isfinite(entry[name]) and entry[f"{name}_stderr"] > 0
      assert entry[f"{name}_seed_std"] > 0  # two seeds differ
    assert entry["diverged_at_step"] == [None, None]
  # beta weighs the KL: at each learning rate the beta = 4 members carry less information.
  for low, high in ((0, 2), (1, 3)):
    assert combinations[low]["test_kl"] > combinations[high]["test_kl"]
  best = max(range(4), key=lambda c: combinations[c]["test_log_likelihood"])
  assert sweep["best_combination"] == best
  assert summary["test_log_likelihood"] == combinations[best]["test_log_likelihood"]
  records = metrics.read_records(workdir)
  assert len(records[-1]["test/elbo_per_member"]) == 8
  for picture in ("training_curves", "rate_distortion", "sweep_heatmap", "samples"):
    assert os.path.getsize(os.path.join(workdir, f"{picture}.png")) > 0
  # TensorBoard names each member's curve by its values and seed (its tags take no "=,").
  (events,) = [f for f in os.listdir(workdir) if f.startswith("events.")]
  assert (
    b"test/elbo_per_member/beta_0.5_learning_rate_0.001_seed_1"
    in open(os.path.join(workdir, events), "rb").read()
  )
  # experiments.evaluate evaluates a sweep workdir the same way, into eval.json and eval.md.
  evaluated = helpers.run_module("experiments.evaluate", f"--workdir={workdir}")
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  again = json.load(open(os.path.join(workdir, "eval.json")))
  assert [c["test_log_likelihood"] for c in again["sweep"]["combinations"]] == pytest.approx(
    [c["test_log_likelihood"] for c in combinations], abs=1e-4
  )
  table = open(os.path.join(workdir, "eval.md")).read()
  assert "| beta | learning_rate | test ELBO |" in table and "best" in table
  # restore_model returns one member's model: by index, or by its values and seed.
  config = load_workdir_config(workdir)
  experiment = Experiment(config, data.load_for_config(config))
  _, state = experiment.restore(workdir)
  model, _ = train.restore_model(workdir, member={"beta": 4.0, "learning_rate": 3e-3, "seed": 1})
  expected = jax.device_get(experiment.take_member(state["params"], 7))
  jax.tree.map(np.testing.assert_array_equal, nnx.state(model, nnx.Param), expected)
  with pytest.raises(ValueError, match="No member"):
    train.restore_model(workdir, member={"beta": 3.0})


def test_a_diverged_member_is_kept_at_its_last_good_state_while_the_others_go_on(
  small_dataset, tmp_path
):
  config = tiny_config(sweep="learning_rate=1e-3,1e30", adam_eps=1e-30, eval_num_samples=5)
  summary = train.train_and_evaluate(config, str(tmp_path), dataset=small_dataset)
  good, diverged = summary["sweep"]["combinations"]
  assert good["diverged_at_step"] == [None] and diverged["diverged_at_step"][0] >= 0
  assert summary["sweep"]["best_combination"] == 0
  experiment = Experiment(config, small_dataset)
  step, state = experiment.restore(str(tmp_path))
  assert step == experiment.total_steps
  np.testing.assert_array_equal(
    jax.device_get(state["diverged_at"]), [-1, diverged["diverged_at_step"][0]]
  )
  # The diverged member keeps finite parameters; the other trained as if alone.
  assert all(np.all(np.isfinite(leaf[1])) for leaf in jax.tree.leaves(state["params"]))
  alone = Experiment(tiny_config(learning_rate=1e-3, adam_eps=1e-30), small_dataset)
  separate = _run_chunks(alone, alone.initial_state(), alone.total_steps // alone.steps_per_call)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a[0], b[0], rtol=2e-5, atol=2e-6),
    state["params"],
    separate["params"],
  )
  records = metrics.read_records(str(tmp_path))
  assert np.isnan(records[-1]["train/loss_per_member"][1])
  assert np.isfinite(records[-1]["train/loss"])  # the mean over the members still training
  # Every member diverged: the run stops as a run without a sweep does.
  everything = tiny_config(sweep="learning_rate=1e29,1e30", adam_eps=1e-30)
  with pytest.raises(FloatingPointError, match=r"member learning_rate=1e\+\d+,seed=0"):
    train.train_and_evaluate(everything, str(tmp_path / "all"), dataset=small_dataset)


def test_an_interrupted_sweep_resumes_bit_exactly_and_refuses_another_sweep(
  small_dataset, tmp_path, monkeypatch
):
  config = tiny_config(
    sweep="beta=0.5,2;kl_warmup_epochs=0,1",
    num_seeds=2,
    num_epochs=2,
    steps_per_call=2,
    eval_num_samples=5,
  )
  train.train_and_evaluate(config, str(tmp_path / "straight"), dataset=small_dataset)
  original_init = interrupt_at_call(monkeypatch, 3)  # mid-epoch (4 calls per epoch)
  interrupted = str(tmp_path / "interrupted")
  with pytest.raises(SystemExit):
    train.train_and_evaluate(config, interrupted, dataset=small_dataset)
  monkeypatch.setattr(Experiment, "__init__", original_init)
  changed = config.copy_and_resolve_references()
  changed.sweep = "beta=0.5,4;kl_warmup_epochs=0,1"
  with pytest.raises(ValueError, match="sweep="):
    train.train_and_evaluate(changed, interrupted, dataset=small_dataset)
  train.train_and_evaluate(config, interrupted, dataset=small_dataset)  # the same call resumes
  experiment = Experiment(config, small_dataset)
  (step_a, straight), (step_b, resumed) = (
    experiment.restore(str(tmp_path / name)) for name in ("straight", "interrupted")
  )
  assert step_a == step_b == experiment.total_steps
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight), jax.device_get(resumed))


def test_early_stopping_does_not_count_each_members_own_warm_up(small_dataset):
  config = tiny_config(sweep="kl_warmup_epochs=0,3", early_stopping_epochs=1)
  experiment = Experiment(config, data.hold_out_validation(small_dataset, 100))
  state = experiment.initial_state()
  for epoch, elbo in ((1, -100.0), (2, -101.0)):  # epoch 2 does not improve
    state = experiment.update_early_stopping(state, jnp.full(2, elbo), epoch)
  stopped = jax.device_get(experiment.early_stopping_numbers(state)["stopped"])
  np.testing.assert_array_equal(stopped, [True, False])  # epoch 2 is the second's warm-up
