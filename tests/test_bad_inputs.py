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


def _squad_task(folder):
  """SQuAD files whose second answer is not where its answer_start says."""
  os.makedirs(folder)
  context = "The sky is blue and the grass is green."
  qas = [{"id": "q1", "question": "What is blue?", "answers": [{"text": "sky",
                                                               "answer_start": 4}]},
         {"id": "q2", "question": "What colour is the grass?",
          "answers": [{"text": "green", "answer_start": 4}]}]
  for split in ("train", "dev"):
    with open(os.path.join(folder, f"{split}.json"), "w") as f:
      json.dump({"data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}, f)
  return str(folder)


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
  empty_label = _bad_task(lab, tmp / "empty_label", "train", 6, "ka lo mi\t")
  squad = _squad_task(tmp / "squad")
  binary = tmp / "array.npy"  # a header, then little-endian numbers: NUL bytes
  binary.write_bytes(b"\x93NUMPY\x01\x00v\x00" + bytes(range(256)) * 16)
  empty_model = tmp / "empty_model"
  os.makedirs(empty_model)
  (empty_model / "spm.model").write_bytes(b"")
  many_chars = tmp / "many_chars.txt"  # text, but 600 distinct characters
  many_chars.write_text("".join("".join(chr(0x4E00 + (i * 7 + j) % 600) for j in range(30))
                                + ("\n\n" if i % 5 == 4 else "\n") for i in range(400)))
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
      "TSV row with an empty label": (
          "finetune", fin, None, [f"--config.data.task={empty_label}"],
          "train.tsv:6: the label is empty"),
      "SQuAD answer not at answer_start": (
          "finetune", fin, None, [f"--config.data.task={squad}"],
          "train.json: data[0].paragraphs[0].qas[1].answers[0] of question id 'q2': answer "
          "text 'green' is not at answer_start=4"),
      "binary file as corpus": (
          "pretrain", pre, None, [f"--config.data.corpus={binary}"],
          f"corpus file {binary} is not text: it holds NUL bytes"),
      "empty sentencepiece model": (
          "pretrain", pre, None, [f"--config.tokenizer.path={empty_model}"],
          f"{empty_model}/spm.model is empty (0 bytes), not a SentencePiece model"),
      "a text file as sentencepiece model": (
          "pretrain", pre, None, [f"--config.tokenizer.path={lab['corpus']}"],
          f"{lab['corpus']} is not a SentencePiece model"),
      "corpus of unusually many characters": (
          "pretrain", pre, None, [f"--config.data.corpus={many_chars}"],
          "distinct characters (after character_coverage), unusually many for text in a "
          f"language or two: is a file of the corpus {many_chars} binary"),
      "batch size of zero (pre-training)": (
          "pretrain", pre, None, ["--config.train.batch_size=0"],
          "train.batch_size=0 is invalid: must be an integer >= 1"),
      "negative batch size (fine-tuning)": (
          "finetune", fin, None, ["--config.train.batch_size=-8"],
          "train.batch_size=-8 is invalid: must be an integer >= 1"),
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
    left = set(os.listdir(workdir)) - set(before)
    if source is None and name != "diverging run" and left:  # it failed before training
      problems.append(f"the failed run left {sorted(left)} in the fresh workdir")
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
