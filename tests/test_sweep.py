"""Hyperparameter sweeps: the search space, the report, early stopping, resuming a
killed sweep, and trials trained side by side equal to the same trials one by one.
Sweeps keep the trainer's promises, one by one and side by side: SIGTERM saves every
running trial and the same command finishes them; a diverging trial is stopped unsaved,
recorded as diverged, never chosen as best, not retried, and the other trials end
bitwise as they do in the same sweep without it."""

import csv
import json
import logging
import os
import signal

import jax
import numpy as np
import pytest

from conftest import final_params
from jaxbert import sweep as sweep_lib
from jaxbert import sweep_report
from jaxbert import train as train_lib
from jaxbert.config import apply_overrides
from jaxbert.defaults import finetune_config
from jaxbert.early_stopping import EarlyStopping
from jaxbert.errors import UserError
from jaxbert.run import run, run_trials
from test_finetune_e2e import tiny_finetune_config, write_task

DEVICES = jax.devices()[:1]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
  return write_task(str(tmp_path_factory.mktemp("task")))


def tiny_sweep_config(init, task, side_by_side):
  """2 learning rates x 2 seeds of a 12-step fine-tuning run, checkpoints every 4 steps."""
  c = tiny_finetune_config(init, task)
  c.sweep.space.optim.lr = [1e-3, 3e-3]
  c.sweep.space.train.seed = [0, 1]
  c.sweep.side_by_side = side_by_side
  return c


# --- search space --------------------------------------------------------------------


def test_grid_crosses_every_setting_with_every_seed():
  c = apply_overrides(finetune_config(), ["--config.sweep.space.optim.lr=[1e-5, 3e-5]",
                                          "--config.sweep.space.optim.freeze=['none', 'encoder']",
                                          "--config.sweep.space.train.seed=[0, 1, 2]"])
  trials = sweep_lib.make_trials(c, "/tmp/unused")
  assert len(trials) == 12
  assert [t.overrides["train.seed"] for t in trials[:3]] == [0, 1, 2]
  assert {(t.overrides["optim.lr"], t.overrides["optim.freeze"]) for t in trials} == {
      (1e-5, "none"), (1e-5, "encoder"), (3e-5, "none"), (3e-5, "encoder")}
  assert len({t.id for t in trials}) == 12
  t = trials[10]  # keys in sorted order, seeds varying fastest
  assert (t.config.optim.freeze, t.config.optim.lr, t.config.train.seed) == ("encoder", 3e-5, 1)
  assert t.workdir == os.path.join("/tmp/unused", "trials", t.id)
  assert t.config.sweep.to_dict() == finetune_config().sweep.to_dict()  # a plain fine-tuning run

  c.sweep.num_trials = 6
  with pytest.raises(UserError, match="12 trials, more than config.sweep.num_trials=6"):
    sweep_lib.expand(c)
  bad = apply_overrides(finetune_config(), ["--config.sweep.space.optim.lrr=[1e-5]"])
  with pytest.raises(UserError, match="did you mean --config.optim.lr"):
    sweep_lib.expand(bad)
  with pytest.raises(UserError, match="space is empty"):
    sweep_lib.expand(finetune_config())


def test_random_search_draws_settings_reproducibly_within_the_budget():
  c = finetune_config()
  c.sweep.method = "random"
  c.sweep.num_trials = 6
  c.sweep.space.optim.lr = {"log_uniform": (1e-5, 1e-3)}
  c.sweep.space.optim.warmup_steps = {"int_uniform": (0, 10)}
  c.sweep.space.train.seed = [0, 1]
  first = sweep_lib.expand(c)
  assert first == sweep_lib.expand(c)
  assert len(first) == 6 and len({json.dumps(t, sort_keys=True) for t in first}) == 6
  assert all(1e-5 <= t["optim.lr"] <= 1e-3 and isinstance(t["optim.warmup_steps"], int)
             for t in first)
  c.sweep.num_trials = 10  # a larger budget keeps the trials the smaller one drew
  assert sweep_lib.expand(c)[:6] == first
  c.sweep.method = "grid"
  with pytest.raises(UserError, match="distribution; grid search needs lists"):
    sweep_lib.expand(c)


# --- report ------------------------------------------------------------------------------


def _record(tid, lr, seed, accuracy):
  return {"id": tid, "overrides": {"optim.lr": lr, "train.seed": seed}, "metric": "accuracy",
          "value": accuracy, "higher_is_better": True, "metrics": {"accuracy": accuracy, "f1": 0.5},
          "steps": 12, "stopped_early": False, "mode": "one_by_one", "wall_s": 1.0}


def test_best_setting_is_the_best_median_over_seeds_and_the_report_is_written(tmp_path):
  # lr 3e-5 has the single best trial (0.95) but a worse median than lr 2e-5.
  records = [_record("a0", 1e-5, 0, 0.80), _record("a1", 1e-5, 1, 0.82), _record("a2", 1e-5, 2, 0.81),
             _record("b0", 2e-5, 0, 0.90), _record("b1", 2e-5, 1, 0.88), _record("b2", 2e-5, 2, 0.91),
             _record("c0", 3e-5, 0, 0.95), _record("c1", 3e-5, 1, 0.50), _record("c2", 3e-5, 2, float("nan"))]
  (tmp_path / "trials").mkdir()
  best = sweep_report.write(str(tmp_path), records, ["optim.lr", "train.seed"], task="t")
  assert best["setting"] == {"optim.lr": 2e-5} and best["trial"] == "b2"
  assert best["setting_median"] == pytest.approx(0.90)
  assert (best["setting_min"], best["setting_max"], best["setting_seeds"]) == (0.88, 0.91, 3)
  assert os.readlink(tmp_path / "best") == os.path.join("trials", "b2")
  assert json.loads((tmp_path / "best.json").read_text())["trial"] == "b2"
  rows = (tmp_path / "results.csv").read_text().strip().splitlines()
  assert rows[0].startswith("trial,optim.lr,train.seed,accuracy,f1,setting_median")
  assert len(rows) == 10 and rows[6].endswith(",best")
  md = (tmp_path / "results.md").read_text()
  assert "median 0.9 (min 0.88, max 0.91, 3 seed(s))" in md and "| **best** | `b2` |" in md
  assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- early stopping ---------------------------------------------------------------------


def test_early_stopping_counts_evaluations_without_improvement():
  es = EarlyStopping("accuracy", patience=2, min_delta=0.01)
  assert [es.update(s, {"accuracy": a}) for s, a in
          [(1, 0.5), (2, 0.6), (3, 0.605), (4, 0.7), (5, 0.7), (6, 0.69)]] == [
              False, False, False, False, False, True]
  assert (es.best, es.best_step) == (0.7, 4)
  low = EarlyStopping("loss", patience=1, higher_is_better=False)
  assert not low.update(1, {"loss": 2.0}) and not low.update(2, {"loss": 1.0})
  assert low.update(3, {"loss": 1.5})


def test_finetune_stops_early_and_says_so(reference_run, task_dir, tmp_path):
  pre_dir, _ = reference_run
  # No evaluation can improve accuracy by more than 1: the second evaluation stops the run.
  c = tiny_finetune_config(pre_dir, task_dir, train__eval_every=2,
                           train__early_stopping_patience=1, train__early_stopping_min_delta=1.0)
  workdir = str(tmp_path / "ft")
  run(c, workdir, devices=DEVICES)
  results = json.load(open(os.path.join(workdir, "results.json")))
  assert results["early_stopping"]["stopped_at"] == 4
  assert results["early_stopping"]["best_step"] == 2
  steps = [json.loads(l)["step"] for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert max(steps) == 4  # of 12
  assert final_params(workdir)[0] == 4

  c.train.eval_every = 100
  with pytest.raises(UserError, match="train.eval_every below the 12 steps"):
    run(c, str(tmp_path / "no_evals"), devices=DEVICES)


# --- whole sweeps ------------------------------------------------------------------------


class _Killed(BaseException):
  """Stands in for the process being killed."""


def _kill_after(n):
  seen = []

  def on_record(record):
    seen.append(record["id"])
    if len(seen) == n:
      raise _Killed()

  return on_record


@pytest.fixture(scope="module")
def one_by_one(reference_run, task_dir, tmp_path_factory):
  """A one-by-one sweep killed after two trials, then started again; counts the runs."""
  workdir = str(tmp_path_factory.mktemp("sweep_one_by_one"))
  config = tiny_sweep_config(reference_run[0], task_dir, side_by_side=False)
  runs = []

  def counting_run(configs, workdirs, devices=None, on_finish=None):
    runs.extend(os.path.basename(w) for w in workdirs)
    return run_trials(configs, workdirs, devices, on_finish)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(sweep_lib, "run_trials", counting_run)
    with pytest.raises(_Killed):
      sweep_lib.run_sweep(config, workdir, DEVICES, on_record=_kill_after(2))
    before = list(runs)
    best = sweep_lib.run_sweep(config, workdir, DEVICES)
  return workdir, before, runs[len(before):], best, config


def test_restarted_sweep_does_not_run_finished_trials_again(one_by_one):
  workdir, before, after, best, config = one_by_one
  assert len(before) == 2 and len(after) == 2 and not set(before) & set(after)
  records = [json.load(open(os.path.join(workdir, "trials", t, "trial.json")))
             for t in sorted(os.listdir(os.path.join(workdir, "trials")))]
  assert len(records) == 4 and all(r["mode"] == "one_by_one" for r in records)
  _, best_trial = sweep_report.select_best(records)
  assert best["trial"] == best_trial["id"]
  assert os.path.isdir(os.path.join(workdir, "best", "checkpoints"))
  assert len(open(os.path.join(workdir, "results.csv")).read().strip().splitlines()) == 5
  assert os.path.getsize(os.path.join(workdir, "plot.png")) > 0
  # Started a third time, the sweep has nothing left to run.
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(sweep_lib, "run_trials", lambda *a, **k: pytest.fail("a finished trial ran again"))
    assert sweep_lib.run_sweep(config, workdir, DEVICES) == best


def test_side_by_side_killed_and_resumed_equals_one_by_one(one_by_one, reference_run, task_dir,
                                                           tmp_path, caplog):
  seq_dir = one_by_one[0]
  workdir = str(tmp_path / "sweep")
  config = tiny_sweep_config(reference_run[0], task_dir, side_by_side=True)
  # Killed as the first trial finishes: the other three are at step 12 of 12, their
  # newest checkpoint at step 8; the restart resumes them there, side by side.
  with pytest.raises(_Killed):
    sweep_lib.run_sweep(config, workdir, DEVICES, on_record=_kill_after(1))
  resumed = []
  caplog.set_level(logging.INFO, logger="jaxbert")
  best = sweep_lib.run_sweep(config, workdir, DEVICES, on_record=lambda r: resumed.append(r))
  assert len(resumed) == 3 and all(r["mode"] == "side_by_side" for r in resumed)
  assert caplog.text.count("at step 8") == 3
  assert best["trial"] == one_by_one[3]["trial"]
  for trial in sorted(os.listdir(os.path.join(seq_dir, "trials"))):
    a = json.load(open(os.path.join(seq_dir, "trials", trial, "trial.json")))
    b = json.load(open(os.path.join(workdir, "trials", trial, "trial.json")))
    assert b["metrics"] == pytest.approx(a["metrics"], abs=1e-6), trial
    step_a, params_a = final_params(os.path.join(seq_dir, "trials", trial))
    step_b, params_b = final_params(os.path.join(workdir, "trials", trial))
    assert step_a == step_b == 12
    for k in params_a:
      np.testing.assert_allclose(params_b[k], params_a[k], rtol=1e-4, atol=1e-5,
                                 err_msg=f"{trial} {'/'.join(k)}")
    preds = [[json.loads(l)["probabilities"] for l in open(os.path.join(d, "trials", trial,
                                                                         "predictions.jsonl"))]
             for d in (seq_dir, workdir)]
    np.testing.assert_allclose(preds[1], preds[0], atol=1e-4)


# --- SIGTERM and divergence ----------------------------------------------------------


DIVERGING_LR = 1e3


def sweep_config(init, task, lrs, side_by_side):
  c = tiny_finetune_config(init, task)
  c.sweep.space.optim.lr = lrs
  c.sweep.space.train.seed = [0, 1]
  c.sweep.side_by_side = side_by_side
  c.train.max_nonfinite = 3
  return c


def sigterm_at_first_save(mp, step):
  """SIGTERM to this process right after the first checkpoint at `step` is written."""
  sent = []
  save = train_lib.save_checkpoint

  def saving(mngr, at, state, tokenizer_json):
    save(mngr, at, state, tokenizer_json)
    if at == step and not sent:
      sent.append(at)
      os.kill(os.getpid(), signal.SIGTERM)

  mp.setattr(train_lib, "save_checkpoint", saving)
  return sent


def trial_records(workdir):
  out = {}
  for t in sorted(os.listdir(os.path.join(workdir, "trials"))):
    path = os.path.join(workdir, "trials", t, "trial.json")
    if os.path.exists(path):
      out[t] = json.load(open(path))
  return out


def assert_bitwise(workdir, ref_dir, trial):
  step_a, a = final_params(os.path.join(ref_dir, "trials", trial))
  step_b, b = final_params(os.path.join(workdir, "trials", trial))
  assert step_a == step_b
  assert set(a) == set(b)
  for k in a:
    np.testing.assert_array_equal(b[k], a[k], err_msg=f"{trial} {'/'.join(k)}")


def check_diverged(workdir, records, best):
  diverged = {t for t, r in records.items() if r["overrides"]["optim.lr"] == DIVERGING_LR}
  assert len(diverged) == 2
  for t in diverged:
    assert records[t]["status"] == "diverged" and "non-finite" in records[t]["message"]
    ckpt = os.path.join(workdir, "trials", t, "checkpoints")
    if os.path.isdir(ckpt) and any(s.isdigit() for s in os.listdir(ckpt)):
      _, params = final_params(os.path.join(workdir, "trials", t))
      assert all(np.isfinite(v).all() for v in params.values()), t  # never saved non-finite
  assert best["trial"] not in diverged and sorted(best["diverged"]) == sorted(diverged)
  rows = list(csv.DictReader(open(os.path.join(workdir, "results.csv"))))
  assert {r["trial"] for r in rows if r["status"] == "diverged"} == diverged
  assert "Diverged (stopped unsaved, never best)" in open(os.path.join(workdir, "results.md")).read()
  return diverged


def test_one_by_one_sigterm_and_a_diverging_trial(one_by_one, reference_run, task_dir, tmp_path):
  ref_dir = one_by_one[0]
  workdir = str(tmp_path / "sweep")
  config = sweep_config(reference_run[0], task_dir, [1e-3, DIVERGING_LR], side_by_side=False)
  with pytest.MonkeyPatch.context() as mp:
    sent = sigterm_at_first_save(mp, 4)
    stopped = sweep_lib.run_sweep(config, workdir, DEVICES)
  assert sent == [4] and stopped["preempted"] and len(stopped["unfinished"]) == 4
  assert trial_records(workdir) == {}  # the preempted trial is not recorded as finished
  first = sorted(os.listdir(os.path.join(workdir, "trials")))
  assert [t for t in first if os.path.isdir(os.path.join(workdir, "trials", t, "checkpoints"))]

  best = sweep_lib.run_sweep(config, workdir, DEVICES)
  assert not best["preempted"] and not best["unfinished"]
  records = trial_records(workdir)
  assert len(records) == 4
  diverged = check_diverged(workdir, records, best)
  for t in set(records) - diverged:
    assert records[t]["status"] == "finished"
    assert_bitwise(workdir, ref_dir, t)
  with pytest.MonkeyPatch.context() as mp:  # a restart retries nothing, diverged included
    mp.setattr(sweep_lib, "run_trials", lambda *a, **k: pytest.fail("a trial ran again"))
    assert sweep_lib.run_sweep(config, workdir, DEVICES) == best


@pytest.fixture(scope="module")
def side_by_side_ref(reference_run, task_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("sweep_side_by_side"))
  config = sweep_config(reference_run[0], task_dir, [1e-3, 3e-3], side_by_side=True)
  return workdir, sweep_lib.run_sweep(config, workdir, DEVICES)


def test_side_by_side_sigterm_and_a_diverging_trial(side_by_side_ref, reference_run, task_dir,
                                                    tmp_path):
  ref_dir, ref_best = side_by_side_ref
  workdir = str(tmp_path / "sweep")
  config = sweep_config(reference_run[0], task_dir, [1e-3, 3e-3, DIVERGING_LR], side_by_side=True)
  with pytest.MonkeyPatch.context() as mp:
    sent = sigterm_at_first_save(mp, 8)
    stopped = sweep_lib.run_sweep(config, workdir, DEVICES)
  # Every trial saved at step 8 or 9 of 12 (the diverging ones too: their steps are still
  # finite there) and none is recorded as finished.
  assert sent == [8] and stopped["preempted"] and len(stopped["unfinished"]) == 6
  assert trial_records(workdir) == {}

  best = sweep_lib.run_sweep(config, workdir, DEVICES)
  records = trial_records(workdir)
  assert len(records) == 6 and not best["unfinished"]
  diverged = check_diverged(workdir, records, best)
  assert best["trial"] == ref_best["trial"]
  for t in set(records) - diverged:
    assert records[t]["status"] == "finished" and records[t]["mode"] == "side_by_side"
    assert records[t]["metrics"] == trial_records(ref_dir)[t]["metrics"]
    assert_bitwise(workdir, ref_dir, t)
