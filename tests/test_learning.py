"""Tests that would catch a broken trainer: tiny runs that must learn, not only run.

The other end-to-end tests train a few steps and check plumbing (files, resume, shapes);
a gradient with the wrong sign passes them. Here a tiny pre-training runs long enough for
its held-out masked-LM accuracy to clearly beat always guessing the most frequent piece,
and a fine-tuning from it must clearly beat the majority class. The pre-training is the
real command in a child process with the default loader (`data.num_workers=2` worker
processes), so it is also the reference for a kill -9 resume with worker processes.

Its corpus is made of fixed three-word phrases, so a masked word follows from its
neighbours: a 2-layer, 32-wide model learns that in a few hundred steps, where the topic
words of the other tests' corpora take it thousands.
"""

import json
import os

import jax
import numpy as np
import pytest

from reliability_lab import kr

STEPS, CKPT = 600, 200
# On top of the lab's tiny pre-training config (tools/kill_resume.py): long enough to learn,
# no dropout (it only slows learning this short), more held-out documents, the default
# loader with worker processes.
LEARNING = ("--config.data.num_workers=2", f"--config.train.steps={STEPS}",
            f"--config.train.checkpoint_every={CKPT}", f"--config.train.eval_every={STEPS}",
            "--config.train.log_every=100", "--config.optim.lr=5e-3",
            f"--config.optim.warmup_steps={STEPS // 10}", "--config.model.hidden_dropout=0",
            "--config.model.attention_dropout=0", "--config.data.heldout_fraction=0.2",
            "--config.data.eval_examples=256")


def phrases(seed=0):
  """24 fixed three-word phrases of 72 distinct made-up words."""
  rng = np.random.default_rng(seed)
  syll = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "be", "da", "fe", "go", "hu", "ji"]
  words = []
  while len(words) < 72:
    word = "".join(rng.choice(syll, rng.integers(1, 3)))
    if word not in words:
      words.append(word)
  return [" ".join(words[i:i + 3]) for i in range(0, len(words), 3)]


def write_phrase_corpus(path, num_docs=120, seed=0):
  """Documents of 3-7 sentences, each 2-4 of the document's 6 phrases."""
  rng, table = np.random.default_rng(seed), phrases()
  lines = []
  for _ in range(num_docs):
    topic = rng.choice(len(table), 6, replace=False)
    for _ in range(rng.integers(3, 8)):
      chosen = rng.choice(topic, rng.integers(2, 5))
      lines.append(" ".join(table[p] for p in chosen).capitalize() + ".")
    lines.append("")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path


def write_phrase_task(folder, seed=1):
  """A two-class TSV task: are the sentence's phrases from the first or the second half?"""
  rng, table = np.random.default_rng(seed), phrases()
  os.makedirs(folder, exist_ok=True)
  for split, n in (("train", 160), ("dev", 64)):
    rows = ["text\tlabel"]
    for _ in range(n):
      half = int(rng.integers(2))
      chosen = rng.integers(12, size=rng.integers(2, 5)) + 12 * half
      rows.append(" ".join(table[p] for p in chosen) + "\t" + "ab"[half])
    with open(os.path.join(folder, f"{split}.tsv"), "w") as f:
      f.write("\n".join(rows) + "\n")
  return folder


def records(workdir, split):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["split"] == split]


@pytest.fixture(scope="module")
def learning(lab):
  """(workdir, overrides) of an uninterrupted tiny pre-training through `jaxbert pretrain`."""
  corpus = write_phrase_corpus(os.path.join(lab["root"], "phrases.txt"))
  overrides = (f"--config.data.corpus={corpus}",) + LEARNING
  workdir = os.path.join(lab["root"], "learning_ref")
  out = kr.run_child("pretrain", lab["pretrain_config"], workdir, env=lab["env"],
                     overrides=overrides)
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir, overrides


def test_pretraining_loss_falls_and_heldout_mlm_beats_the_majority_guess(learning):
  learned, _ = learning
  train = records(learned, "train")
  assert [r["step"] for r in train] == list(range(100, STEPS + 1, 100))
  assert train[-1]["loss"] < train[0]["loss"] - 0.5, [r["loss"] for r in train]
  (heldout,) = records(learned, "eval")
  assert heldout["step"] == STEPS
  assert heldout["mlm_accuracy"] > 2 * heldout["mlm_majority_baseline"], heldout


def test_finetuning_loss_falls_and_dev_accuracy_beats_the_majority_class(learning, tmp_path):
  from jaxbert.defaults import finetune_config
  from jaxbert.run import run
  task = write_phrase_task(str(tmp_path / "task"))
  config = finetune_config(task)
  config.init = learning[0]
  config.data.update(train_split="train", eval_split="dev", max_seq_len=32)
  # 6 epochs (120 steps): the loss stays flat for 30-60 steps before it falls, and where
  # it starts falling moves with the pre-trained reference's last bits (3 epochs failed
  # once after a change that only reordered floating-point work in the step).
  config.train.update(batch_size=8, epochs=6.0, log_every=10, checkpoint_every=60,
                      progress=False)
  config.optim.update(lr=1e-3, warmup_fraction=0.1)
  workdir = str(tmp_path / "ft")
  metrics = run(config, workdir, devices=jax.devices()[:1])
  train = records(workdir, "train")
  assert train[-1]["loss"] < 0.8 * train[0]["loss"], [r["loss"] for r in train]
  with open(os.path.join(task, "dev.tsv")) as f:
    labels = [line.rstrip("\n").split("\t")[1] for line in f][1:]
  majority = max(labels.count(l) for l in set(labels)) / len(labels)
  assert metrics["accuracy"] >= majority + 0.25, (metrics, majority)


def test_kill_9_with_loader_worker_processes_resumes_bitwise(learning, lab, tmp_path):
  """Killed between checkpoints, the restart rebuilds the worker processes' position from
  the step alone and ends bitwise equal to the uninterrupted run. The killed run's workers
  end with it (jaxbert/data/workers.py): orphans would keep its output open, and waiting
  for the killed run would time out."""
  learned, overrides = learning
  workdir = str(tmp_path / "killed")
  killed = kr.run_child("pretrain", lab["pretrain_config"], workdir, env=lab["env"],
                        kill=f"step:{CKPT + CKPT // 2}", overrides=overrides)
  assert killed.returncode == -9, killed.stderr[-3000:]
  again = kr.run_child("pretrain", lab["pretrain_config"], workdir, env=lab["env"],
                       overrides=overrides)
  assert again.returncode == 0, again.stderr[-3000:]
  assert kr.resumed_step(again.stderr) == CKPT
  step, state = kr.final_state(workdir)
  ref_step, ref = kr.final_state(learned)
  assert step == ref_step == STEPS and not kr.differing_leaves(state, ref)
