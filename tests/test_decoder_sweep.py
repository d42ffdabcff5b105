"""`jaxbert sweep` over learning rate x seed for a decoder classifier (issue 23): the four
trials train side by side in one program, like the encoder's, and a trial equals the same
run trained alone through `jaxbert finetune`."""

import json
import os

import numpy as np

from test_finetune_e2e import write_task
from test_instruct import bundle  # noqa: F401 (a module-scoped fixture: a tiny random llama)

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "finetune", "local.py")


def test_decoder_sweep_runs_side_by_side(bundle, tmp_path, capsys):  # noqa: F811
  from jaxbert.cli import main  # pylint: disable=g-import-not-at-top
  task = write_task(str(tmp_path / "task"))
  common = ["--config", CONFIG, f"--config.init={bundle}", f"--config.data.task={task}",
            "--config.data.max_seq_len=32", "--config.train.batch_size=8",
            "--config.train.epochs=1.0", "--config.train.log_every=4",
            "--config.train.progress=False", "--config.optim.warmup_fraction=0.1"]
  sweep_dir = str(tmp_path / "sweep")
  assert main(["sweep", "--workdir", sweep_dir, "--config.sweep.space.optim.lr=[1e-3,3e-3]",
               "--config.sweep.space.train.seed=[0,1]"] + common) == 0
  out = capsys.readouterr().out
  assert "best trial" in out
  trials = sorted(os.listdir(os.path.join(sweep_dir, "trials")))
  records = [json.load(open(os.path.join(sweep_dir, "trials", t, "trial.json"))) for t in trials]
  assert len(records) == 4 and all(r["mode"] == "side_by_side" for r in records), records
  assert all(r["status"] == "finished" for r in records)
  settings = {(r["overrides"]["optim.lr"], r["overrides"]["train.seed"]) for r in records}
  assert settings == {(1e-3, 0), (1e-3, 1), (3e-3, 0), (3e-3, 1)}

  # One trial again, alone: the same metrics and predictions.
  trial = next(t for t, r in zip(trials, records) if r["overrides"]["optim.lr"] == 3e-3
               and r["overrides"]["train.seed"] == 1)
  alone = str(tmp_path / "alone")
  assert main(["finetune", "--workdir", alone, "--config.optim.lr=3e-3", "--config.train.seed=1"]
              + common) == 0
  want = json.load(open(os.path.join(alone, "results.json")))["metrics"]
  got = json.load(open(os.path.join(sweep_dir, "trials", trial, "results.json")))["metrics"]
  assert got.keys() == want.keys()
  for k in want:
    assert abs(got[k] - want[k]) < 1e-6, (k, got, want)
  probs = [[json.loads(l)["probabilities"] for l in open(os.path.join(d, "predictions.jsonl"))]
           for d in (alone, os.path.join(sweep_dir, "trials", trial))]
  np.testing.assert_allclose(probs[1], probs[0], atol=1e-4)
