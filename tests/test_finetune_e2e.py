"""Fine-tuning end to end, small: a pre-training run's encoder -> a local TSV task."""

import json
import os

import jax
import numpy as np
import pytest
from flax import traverse_util

from conftest import final_params
from jaxbert.defaults import finetune_config
from jaxbert.errors import UserError
from jaxbert.run import run


def write_task(folder, seed=0):
  """A two-class TSV task: does the sentence contain the word 'kalo'?"""
  rng = np.random.default_rng(seed)
  words = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "the", "of", "and"]
  os.makedirs(folder, exist_ok=True)
  for split, n in (("train", 96), ("dev", 37)):
    rows = ["text\tlabel"]
    for _ in range(n):
      toks = list(rng.choice(words, rng.integers(4, 10)))
      label = rng.random() < 0.5
      if label:
        toks.insert(rng.integers(len(toks)), "kalo")
      rows.append(" ".join(toks) + "\t" + ("yes" if label else "no"))
    with open(os.path.join(folder, f"{split}.tsv"), "w") as f:
      f.write("\n".join(rows) + "\n")
  return folder


def tiny_finetune_config(init, task, **kw):
  c = finetune_config(task)
  c.init = init
  c.data.update(train_split="train", eval_split="dev", max_seq_len=32)
  c.train.update(batch_size=8, epochs=1.0, log_every=4, checkpoint_every=4, progress=False)
  c.optim.update(lr=1e-3, warmup_fraction=0.1)
  for k, v in kw.items():
    group, key = k.split("__")
    c[group][key] = v
  return c


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
  return write_task(str(tmp_path_factory.mktemp("task")))


def test_finetune_from_pretraining_run(reference_run, task_dir, tmp_path, capsys):
  pre_dir, _ = reference_run
  workdir = str(tmp_path / "ft")
  metrics = run(tiny_finetune_config(pre_dir, task_dir), workdir, devices=jax.devices()[:1])
  assert 0.0 <= metrics["accuracy"] <= 1.0
  results = json.load(open(os.path.join(workdir, "results.json")))
  assert results["metrics"] == pytest.approx(metrics)
  # Every dev example predicted, none dropped to fill the last batch (37 = 4 * 8 + 5).
  preds = open(os.path.join(workdir, "predictions.jsonl")).read().strip().splitlines()
  assert len(preds) == 37
  report = json.load(open(os.path.join(workdir, "handover.json")))
  assert report["new"]["paths"] == ["classifier/bias", "classifier/kernel"]
  assert {"mlm/bias", "nsp/kernel"} <= set(report["dropped"]["paths"])
  assert all(p.startswith("bert/") for p in report["loaded"]["paths"])
  assert "hand-over from run" in capsys.readouterr().out


def test_encoder_freeze_leaves_every_encoder_leaf_bitwise_unchanged(reference_run, task_dir, tmp_path):
  pre_dir, _ = reference_run
  workdir = str(tmp_path / "frozen")
  run(tiny_finetune_config(pre_dir, task_dir, optim__freeze="encoder"), workdir,
      devices=jax.devices()[:1])
  _, before = final_params(pre_dir)
  _, after = final_params(workdir)
  encoder = [k for k in after if k[0] == "bert"]
  assert len(encoder) == len([k for k in before if k[0] == "bert"])
  for k in encoder:
    np.testing.assert_array_equal(after[k], before[k], err_msg="/".join(k))
  head = traverse_util.flatten_dict(
      {"classifier": {"kernel": after[("classifier", "kernel")]}})
  assert np.abs(head[("classifier", "kernel")]).sum() > 0


def test_unknown_label_in_dev_is_a_user_error(reference_run, task_dir, tmp_path):
  pre_dir, _ = reference_run
  bad = str(tmp_path / "badtask")
  write_task(bad)
  with open(os.path.join(bad, "dev.tsv"), "a") as f:
    f.write("ka lo mi\tmaybe\n")
  with pytest.raises(UserError, match="maybe"):
    run(tiny_finetune_config(pre_dir, bad), str(tmp_path / "w"), devices=jax.devices()[:1])


def test_init_path_that_does_not_exist(task_dir, tmp_path):
  with pytest.raises(UserError, match="no such file"):
    run(tiny_finetune_config(str(tmp_path / "nope"), task_dir), str(tmp_path / "w"),
        devices=jax.devices()[:1])
