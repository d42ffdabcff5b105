"""Length-bucketed fine-tuning (jaxbert/data/buckets.py): few shapes, every row once per
epoch, the same step lengths for every seed, results equal to padding to max_seq_len,
and a resumed run bitwise equal to an uninterrupted one."""

import itertools
import json
import os

import jax
import numpy as np
import pytest

from conftest import final_params
from jaxbert import finetune
from jaxbert.data import buckets
from jaxbert.defaults import finetune_config
from jaxbert.run import run

WORDS = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "the", "of", "and"]


def padded_pieces(lengths, chosen):
  return int(sum(chosen[i] for i in buckets.bucket_ids(lengths, chosen)))


def test_chosen_lengths_are_few_cover_every_row_and_pad_least():
  rng = np.random.default_rng(0)
  lengths = np.concatenate([rng.integers(3, 20, 300), rng.integers(30, 61, 40)])
  for count in (1, 2, 3, 4):
    chosen = buckets.choose_lengths(lengths, 64, count)
    assert 1 <= len(chosen) <= count and list(chosen) == sorted(set(chosen))
    assert chosen[-1] >= lengths.max() and chosen[-1] <= 64
    assert all(c % buckets.MULTIPLE == 0 for c in chosen)
    # No other set of as many multiples of 8 (the longest covering every row) pads less.
    cands = [c for c in range(8, 65, 8) if c < chosen[-1]]
    best = min(padded_pieces(lengths, tuple(sorted(c)) + (chosen[-1],))
               for k in range(count) for c in itertools.combinations(cands, k))
    assert padded_pieces(lengths, chosen) == best
  assert buckets.choose_lengths(np.array([5, 7, 100]), 64, 4)[-1] == 64  # capped


def make_schedule(n=103, batch=8, count=3, seed=0):
  lengths = np.random.default_rng(seed).integers(3, 60, n)
  chosen = buckets.choose_lengths(lengths, 64, count)
  return lengths, chosen, buckets.Schedule(lengths, chosen, batch)


def test_every_row_once_per_epoch_and_step_lengths_do_not_depend_on_the_seed():
  lengths, chosen, sched = make_schedule()
  n, batch = len(lengths), 8
  steps = -(-3 * n // batch)
  for seed in (0, 1):
    stream = np.concatenate([sched.step_rows(seed, s) for s in range(steps)])
    for e in range(3):  # batches straddle epochs where the unbucketed order's do
      assert sorted(stream[e * n:(e + 1) * n]) == list(range(n))
    for s in range(steps):
      assert lengths[sched.step_rows(seed, s)].max() <= sched.step_length(s)
  assert {sched.step_length(s) for s in range(steps)} <= set(chosen)
  assert not np.array_equal(sched.step_rows(0, 5), sched.step_rows(1, 5))
  # Grouping pays: fewer padded pieces than the same batches at their longest row's bucket
  # in a plain shuffled order.
  plain = buckets.Schedule(lengths, (64,), batch)
  grouped = sum(sched.step_length(s) for s in range(steps))
  random_order = sum(min(c for c in chosen if c >= lengths[plain.step_rows(0, s)].max())
                     for s in range(steps))
  assert grouped < random_order


def test_one_bucket_is_the_plain_shuffled_order():
  lengths, _, _ = make_schedule()
  sched = buckets.Schedule(lengths, (64,), 8)
  for step in (0, 12, 13, 25):  # 103 rows: step 12 straddles epochs 0 and 1
    positions = np.arange(step * 8, step * 8 + 8)
    want = [np.random.default_rng([7, p // 103]).permutation(103)[p % 103] for p in positions]
    np.testing.assert_array_equal(sched.step_rows(7, step), want)


def test_eval_batches_cover_each_row_once_within_one_bucket():
  ids = np.random.default_rng(1).integers(0, 3, 50)
  seen = []
  for b, idx in buckets.eval_batches(ids, 8):
    assert len(idx) == 8 and set(ids[idx]) == {b}
    seen += list(dict.fromkeys(idx))
  assert sorted(seen) == list(range(50))


# --- a tiny fine-tuning, random initialisation ------------------------------------------


def write_task(folder):
  """Sentences of 1 to 24 words (pieces: 3 to 26); label: does 'kalo' occur?"""
  rng = np.random.default_rng(3)
  os.makedirs(folder, exist_ok=True)
  for split, n in (("train", 70), ("dev", 29)):
    rows = ["text\tlabel"]
    for _ in range(n):
      toks = list(rng.choice(WORDS, int(rng.choice([2, 4, 6, 20, 23]))))
      if rng.random() < 0.5:
        toks.insert(rng.integers(len(toks)), "kalo")
      rows.append(" ".join(toks) + "\t" + ("yes" if "kalo" in toks else "no"))
    with open(os.path.join(folder, f"{split}.tsv"), "w") as f:
      f.write("\n".join(rows) + "\n")
  vocab = os.path.join(folder, "vocab")
  os.makedirs(vocab)
  with open(os.path.join(vocab, "vocab.txt"), "w") as f:
    f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "kalo"] + WORDS) + "\n")
  return folder


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
  return write_task(str(tmp_path_factory.mktemp("bucket_task")))


def config(task_dir, length_buckets=4):
  c = finetune_config(task_dir)
  c.tokenizer.path = os.path.join(task_dir, "vocab")
  c.model.override_preset_sizes = True
  c.model.update(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                 max_position_embeddings=64, hidden_dropout=0.0, attention_dropout=0.0)
  c.data.update(train_split="train", eval_split="dev", max_seq_len=32,
                length_buckets=length_buckets)
  c.train.update(batch_size=8, epochs=2.0, log_every=3, eval_every=9, checkpoint_every=4,
                 progress=False)
  c.optim.update(lr=1e-3, warmup_fraction=0.1)
  return c


def test_bucketed_batches_and_evaluation_equal_padding_to_max_seq_len(task_dir, tmp_path):
  from jaxbert import sharding as shd
  from jaxbert.step import make_predict
  mesh = shd.make_mesh(1, 1, jax.devices()[:1])
  cut = finetune.FinetuneTask(config(task_dir), str(tmp_path / "a"), mesh)
  full = finetune.FinetuneTask(config(task_dir, 1), str(tmp_path / "b"), mesh)
  assert len(cut.bucket_lengths) > 1 and full.bucket_lengths == (32,)
  steps = -(-2 * cut.num_train_examples // 8)
  assert len({b["input_ids"].shape for b in cut.batches(0, steps)}) == len(cut.bucket_lengths)
  params = jax.jit(cut.model.init)(jax.random.key(0), cut.example_batch())["params"]
  rows = cut.schedule.step_rows(0, 3)
  short = next(iter(cut.batches(3, 4)))
  assert short["input_ids"].shape[1] < 32
  padded = {k: v[rows] for k, v in cut.train_data.arrays.items()}
  loss = lambda b: cut.loss_fn(params, b, jax.random.key(1))[0]
  np.testing.assert_allclose(loss(short), loss(padded), rtol=1e-5)
  predict = make_predict(cut.model, mesh, None)
  a = cut.predict_all(params, predict, cut.eval_data)
  b = full.predict_all(params, predict, full.eval_data)
  np.testing.assert_allclose(a["logits"], b["logits"], rtol=1e-5, atol=1e-5)


def test_a_resumed_bucketed_run_is_bitwise_the_uninterrupted_one(task_dir, tmp_path, monkeypatch):
  ref = str(tmp_path / "ref")
  run(config(task_dir), ref, devices=jax.devices()[:1])
  real = finetune.FinetuneTask.batches

  def dying(self, start_step, stop_step):
    for i, b in enumerate(real(self, start_step, stop_step)):
      if start_step == 0 and i == 6:  # during step 7, after the step-4 checkpoint
        raise KeyboardInterrupt
      yield b

  workdir = str(tmp_path / "resumed")
  monkeypatch.setattr(finetune.FinetuneTask, "batches", dying)
  with pytest.raises(KeyboardInterrupt):
    run(config(task_dir), workdir, devices=jax.devices()[:1])
  assert final_params(workdir)[0] == 4
  monkeypatch.setattr(finetune.FinetuneTask, "batches", real)
  run(config(task_dir), workdir, devices=jax.devices()[:1])
  (step, want), (got_step, got) = final_params(ref), final_params(workdir)
  assert step == got_step == 18
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg="/".join(k))
  read = lambda d: [json.loads(l) for l in open(os.path.join(d, "predictions.jsonl"))]
  assert read(workdir) == read(ref)
