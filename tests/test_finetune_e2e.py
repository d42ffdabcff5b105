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


def test_reinit_keeps_fresh_values_for_the_pooler_and_top_layers(reference_run):
  from jaxbert import handover
  pre_dir, _ = reference_run
  source = handover.open_source(pre_dir)
  top = source.model_cfg.num_layers - 1
  _, saved = final_params(pre_dir)
  # A fine-tuning target: the pre-trained encoder's shapes, every value -7, and a head.
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = {k: np.full(v.shape, -7.0, v.dtype) for k, v in saved.items() if k[0] == "bert"}
  target[("classifier", "kernel")] = np.full((4, 2), -7.0, np.float32)
  unflat = lambda d: traverse_util.unflatten_dict(d)
  params, report = handover.load_encoder(
      source, unflat(target), unflat({k: sharding for k in target}), reinit="pooler, top:1")
  params = traverse_util.flatten_dict(params)
  fresh = lambda k: k[1] == "pooler" or k[1:3] == ("encoder", f"layer_{top}")
  assert any(fresh(k) for k in target) and any(not fresh(k) for k in target if k[0] == "bert")
  for k in target:
    expected = target[k] if fresh(k) or k[0] != "bert" else saved[k]
    np.testing.assert_array_equal(np.asarray(params[k]), expected, err_msg="/".join(k))
  assert sorted(report.reinitialised) == sorted("/".join(k) for k in target if fresh(k))
  assert set(report.reinitialised) <= set(report.new)
  assert not set(report.reinitialised) & set(report.dropped)
  assert "reinitialised" in report.describe() and "bert/encoder/layer_" in report.describe()
  for bad in ("pooler,top:0", f"top:{top + 2}", "poolr"):
    with pytest.raises(UserError, match="config.reinit=.*top:K"):
      handover.reinit_prefixes(bad, top + 1)


def test_reinit_without_init_is_a_user_error(task_dir, tmp_path):
  c = tiny_finetune_config("", task_dir)
  c.reinit = "pooler"
  with pytest.raises(UserError, match="config.init is empty"):
    run(c, str(tmp_path / "w"), devices=jax.devices()[:1])


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


def test_mean_pooled_classifier_trains_and_is_not_exported_as_a_cls_classifier(
    reference_run, task_dir, tmp_path):
  from jaxbert.hf import export_hf
  pre_dir, _ = reference_run
  workdir = str(tmp_path / "mean")
  metrics = run(tiny_finetune_config(pre_dir, task_dir, head__pooling="mean"), workdir,
                devices=jax.devices()[:1])
  assert 0.0 <= metrics["accuracy"] <= 1.0
  with pytest.raises(UserError, match="head.pooling='mean'"):
    export_hf(workdir, str(tmp_path / "hf"))
  assert not os.path.exists(tmp_path / "hf")
  export_hf(workdir, str(tmp_path / "hf_encoder"), architecture="BertModel")
  with pytest.raises(UserError, match="config.head.pooling='max'"):
    run(tiny_finetune_config(pre_dir, task_dir, head__pooling="max"), str(tmp_path / "max"),
        devices=jax.devices()[:1])
