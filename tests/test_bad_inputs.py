"""Bad inputs through the real command: one clear message, exit 2, earlier outputs intact."""

import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys

from reliability_lab import REPO, all_finite_arrays, copy_tree, error_lines, file_hashes, kr


# ----------------------------------------------------------------------------- bad inputs


def _wordpiece_tokenizer(folder, n=700):
  os.makedirs(folder)
  pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz")
  pieces += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + [f"w{i}" for i in range(n)]
  with open(os.path.join(folder, "vocab.txt"), "w") as f:
    f.write("\n".join(pieces) + "\n")
  return str(folder)


def _bad_task(lab, folder, split, line, row):
  folder = copy_tree(lab["task"], folder)
  path = os.path.join(folder, f"{split}.tsv")
  with open(path, "rb") as f:
    rows = f.read().split(b"\n")
  rows[line - 1] = row.encode()
  with open(path, "wb") as f:
    f.write(b"\n".join(rows))
  return folder


def _cases(lab, tmp):
  """name -> (command, config, workdir source or None, overrides, expected in the message)."""
  pre, fin = lab["pretrain_config"], lab["finetune_config"]
  empty = tmp / "empty.txt"
  empty.write_text("\n\n")
  wrong_vocab = _wordpiece_tokenizer(tmp / "other_tokenizer")
  edited = copy_tree(lab["pretrain_ref"], tmp / "edited_pretrain")
  with open(os.path.join(edited, "config.json")) as f:
    cfg = json.load(f)
  cfg["model"]["intermediate_size"] = 128
  with open(os.path.join(edited, "config.json"), "w") as f:
    json.dump(cfg, f)
  stray_tab = _bad_task(lab, tmp / "tab", "train", 5, "ka lo\tmi\tyes")
  bad_label = _bad_task(lab, tmp / "label", "dev", 7, "ka lo mi\tmaybe")
  return {
      "missing corpus": ("pretrain", pre, None, [f"--config.data.corpus={tmp}/no_corpus.txt"],
                         "no_corpus.txt does not exist"),
      "empty corpus": ("pretrain", pre, None, [f"--config.data.corpus={empty}"],
                       "has no text"),
      "unknown config key": ("pretrain", pre, "pretrain", ["--config.train.stpes=3"],
                             "did you mean --config.train.steps?"),
      "workdir of another config": ("pretrain", pre, "pretrain", ["--config.optim.lr=0.5"],
                                    "holds a run with a different config (optim.lr: 0.001 -> 0.5)"),
      "config file that does not exist": ("pretrain", str(tmp / "no_config.py"), "pretrain", [],
                                          "no_config.py does not exist"),
      "tokenizer that does not fit the checkpoint": (
          "pretrain", pre, "pretrain+tokenizer", [],
          "params/bert/embeddings/word_embeddings/embedding is float32[512, 32] there but "
          "float32[768, 32] here"),
      "model config that does not fit the checkpoint": (
          "finetune", fin, None, [f"--config.init={edited}"], "but the model expects"),
      "tokenizer given with a checkpoint": (
          "finetune", fin, None, [f"--config.tokenizer.path={wrong_vocab}"],
          "set either config.init"),
      "init that does not exist": ("finetune", fin, None, [f"--config.init={tmp}/no_run"],
                                   "no_run: no such file or directory"),
      "task that does not exist": ("finetune", fin, None, [f"--config.data.task={tmp}/no_task"],
                                   "no_task: no such file or directory"),
      "TSV row with a stray tab": (
          "finetune", fin, None,
          [f"--config.data.task={stray_tab}"],
          "train.tsv:5: 3 tab-separated columns but the header has 2"),
      "label outside the label set": (
          "finetune", fin, None,
          [f"--config.data.task={bad_label}"],
          "dev.tsv:7: label 'maybe' is not in the label set ['no', 'yes']"),
      "diverging run": ("pretrain", pre, None,
                        ["--config.optim.lr=1e30", "--config.train.max_nonfinite=2"],
                        "(train.max_nonfinite=2)"),
  }, wrong_vocab


def test_bad_inputs_give_one_clear_message_and_exit_2(lab, tmp_path):
  cases, wrong_vocab = _cases(lab, tmp_path)

  def attempt(item):
    name, (command, config, source, overrides, expected) = item
    workdir = tmp_path / name.replace(" ", "_")
    if source is None:  # a fresh workdir, holding only a file of the user's
      os.makedirs(workdir)
      (workdir / "notes.txt").write_text("mine")
    else:
      copy_tree(lab["pretrain_ref"], workdir)
      if source.endswith("+tokenizer"):
        shutil.rmtree(workdir / "tokenizer")
        shutil.copytree(wrong_vocab, workdir / "tokenizer")
    before = file_hashes(workdir)
    proc = subprocess.run([sys.executable, "-m", "jaxbert.cli", command, "--config", config,
                           "--workdir", str(workdir), *overrides], env=lab["env"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    after = file_hashes(workdir)
    problems = []
    if proc.returncode != 2:
      problems.append(f"exit status {proc.returncode}")
    errors = error_lines(proc.stderr)
    if len(errors) != 1 or expected not in errors[0]:
      problems.append(f"message {errors}, expected one with {expected!r}")
    if "Traceback" in proc.stderr:
      problems.append("a traceback")
    if {k: after.get(k) for k in before} != before:
      problems.append("earlier files changed: "
                      f"{[k for k in before if after.get(k) != before[k]][:5]}")
    claimed = {"config.json", "checkpoints"} & set(os.listdir(workdir))
    if source is None and name != "diverging run" and claimed:  # it failed before training
      problems.append(f"the failed run claimed the workdir: {claimed}")
    return name, problems, proc.stderr[-1500:]

  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = list(pool.map(attempt, cases.items()))
  failed = {name: (problems, tail) for name, problems, tail in results if problems}
  assert not failed, json.dumps(failed, indent=1)
  diverged = str(tmp_path / "diverging_run")
  for step in os.listdir(os.path.join(diverged, "checkpoints")):  # saved before it stopped
    assert all_finite_arrays(kr.final_state(diverged, int(step))[1])


def test_undecodable_bytes_and_long_lines_are_reported(lab, finetune_ref):
  pre = open(lab["pretrain_ref"] + ".log").read()
  assert pre.count("corpus.txt: 1 undecodable byte sequence(s) replaced with U+FFFD") == 1
  assert "sentences are longer than data.max_seq_len=32 allows" in pre
  fin = open(finetune_ref + ".log").read()
  assert fin.count("train.tsv: 1 undecodable byte sequence(s) replaced with U+FFFD") == 1
  assert re.search(r"split 'train': \d+ of 96 examples are longer than data.max_seq_len=32 "
                   "pieces and were truncated", fin)
