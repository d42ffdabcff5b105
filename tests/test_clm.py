"""Causal-LM pre-training (issue 22, points 3-4): the decoder tokenizer, packed document
rows, per-document attention, determinism, learning and resume."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbert import decoder_tokenizer as dtok
from jaxbert.data.clm_data import LMRows, targets_of, unigram_log_probs
from jaxbert.data.docstore import DocumentStore
from jaxbert.decoder import decoder_preset
from jaxbert.heads.causal_lm import CausalLM
from jaxbert.pretrain import StepBatches

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 160


def _store(seed=0, num_docs=12, vocab=60, longest=40):
  rng = np.random.default_rng(seed)
  docs = [[list(rng.integers(3, vocab, rng.integers(1, longest)))] for _ in range(num_docs)]
  return DocumentStore.from_documents(docs)


def test_tokenizer_round_trips_text_and_loads_back(tmp_path):
  texts = ["The cat sat on the mat.", "A dog ran  after it,\n twice.", "Naïve café 😀"] * 50
  tok = dtok.train(texts, str(tmp_path), 300)
  assert tok.id_to_piece(tok.eos_id) == dtok.EOD and tok.bos_id is None
  for text in ("Hello  world,\n  ünïcödé 😀 text. <|endoftext|>", "x\ty"):
    ids = tok.encode(text)
    assert tok.decode(ids) == text and tok.eos_id not in ids  # the marker is never typed in
  again = dtok.load(str(tmp_path))
  assert again.encode(texts[1]) == tok.encode(texts[1]) and again.fingerprint() == tok.fingerprint()


def test_rows_hold_each_item_once_with_targets_inside_its_document():
  store, t, eod = _store(), 32, 2
  rows = LMRows(store, t, eod, 0, seed=5)
  seen, real = [], 0
  for i in range(rows.num_examples()):
    ex = rows.example(0, i)
    seen += list(rows.row_items(0, i))
    real += int(ex["loss_weights"].sum())
    seg, inp, tgt = ex["segment_ids"], ex["input_ids"], ex["targets"]
    for s in range(1, seg.max() + 1):
      at = np.flatnonzero(seg == s)
      assert (ex["positions"][at] == np.arange(len(at))).all()
      # Within a segment a target is the next input: nothing is predicted across documents.
      assert (tgt[at[:-1]] == inp[at[1:]]).all()
  assert sorted(seen) == list(range(len(rows.item_len)))
  assert real == store.num_tokens + store.num_docs  # every piece and each end of document


def test_batches_are_a_pure_function_of_seed_epoch_and_index():
  store = _store()
  a, b = LMRows(store, 16, 2, 0, seed=3), LMRows(store, 16, 2, 0, seed=3)
  n = a.num_examples()
  for pos in (0, 5, n + 2, 3 * n - 1):  # across epochs, in any order
    for k, v in a.example(*a.locate(pos)).items():
      assert (v == b.example(*b.locate(pos))[k]).all()
  assert not np.array_equal(a.order(0), a.order(1))
  assert not np.array_equal(a.order(0), LMRows(store, 16, 2, 0, seed=4).order(0))
  whole = StepBatches(a, 4, 0, 6)
  resumed = StepBatches(b, 4, 3, 3)
  for k, v in whole[4].items():
    assert (v == resumed[1][k]).all()


@pytest.mark.parametrize("preset", ["gpt-tiny", "llama-tiny"])
def test_each_document_in_a_packed_row_computes_as_alone(preset):
  cfg = decoder_preset(preset, vocab_size=64, hidden_size=32, num_heads=4, num_kv_heads=2
                       if preset == "llama-tiny" else 4, intermediate_size=64)
  rows = LMRows(_store(seed=1, longest=16), 48, 2, 0, seed=0)
  model = CausalLM(cfg)
  first = {k: v[None] for k, v in rows.example(0, 0).items()}
  params = model.init(jax.random.key(0), first)["params"]
  packed = next(rows.example(0, i) for i in range(rows.num_examples())
                if len(rows.row_items(0, i)) >= 3)
  batch = {k: jnp.asarray(v)[None] for k, v in packed.items()}
  logits = model.apply({"params": params}, batch)["logits"][0]
  for s in range(1, int(packed["segment_ids"].max()) + 1):
    at = np.flatnonzero(packed["segment_ids"] == s)
    alone = {k: jnp.asarray(v[at])[None] for k, v in packed.items()}
    alone["segment_ids"] = jnp.ones_like(alone["segment_ids"])
    single = model.apply({"params": params}, alone)["logits"][0]
    np.testing.assert_allclose(logits[at], single, atol=2e-5, rtol=1e-5)


def _phrase_corpus(path, num_docs=160, seed=0):
  """Documents of fixed three-word phrases: the second and third words follow the first."""
  rng = np.random.default_rng(seed)
  syll = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "be", "da", "fe", "go"]
  words = sorted({"".join(rng.choice(syll, 2)) for _ in range(200)})[:60]
  table = [" ".join(words[i:i + 3]) for i in range(0, 60, 3)]
  docs = []
  for _ in range(num_docs):
    topic = rng.choice(len(table), 5, replace=False)
    docs.append("\n".join(" ".join(table[p] for p in rng.choice(topic, rng.integers(3, 7)))
                          + "." for _ in range(rng.integers(2, 5))))
  with open(path, "w") as f:
    f.write("\n\n".join(docs))
  return path


def _config(corpus, steps, **optim):
  from jaxbert.config import load
  return load(os.path.join(REPO, "configs/pretrain/gpt_tiny.py"), [
      f"--config.data.corpus={corpus}", "--config.tokenizer.vocab_size=300",
      "--config.model.hidden_size=64", "--config.model.intermediate_size=128",
      "--config.data.max_seq_len=64", "--config.data.num_workers=0",
      "--config.data.heldout_fraction=0.1", f"--config.train.steps={steps}",
      "--config.train.progress=False", "--config.train.peak_flops=1e12",
      f"--config.train.eval_every={STEPS}", f"--config.train.checkpoint_every={STEPS // 2}",
      "--config.optim.decay=constant", "--config.optim.warmup_steps=10",
      *[f"--config.optim.{k}={v}" for k, v in optim.items()]])


def _final_state(workdir):
  from tools.kill_resume import final_state
  return final_state(workdir)


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
  from jaxbert.run import run
  root = tmp_path_factory.mktemp("clm")
  corpus = _phrase_corpus(str(root / "corpus.txt"))
  workdir = str(root / "run")
  metrics = run(_config(corpus, STEPS), workdir, devices=jax.devices()[:1])
  return corpus, workdir, metrics


def test_tiny_run_learns_far_below_the_unigram(learned):
  _, workdir, metrics = learned
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    train = [r for r in map(json.loads, f) if r.get("split") == "train"]
  assert train[-1]["loss"] < 0.6 * train[0]["loss"]
  # A gradient step taken uphill (a flipped sign) leaves the model near or above the unigram.
  assert metrics["perplexity"] < 0.5 * metrics["unigram_perplexity"]
  assert metrics["bits_per_byte"] > 0 and 0 < metrics["accuracy"] <= 1


def test_interrupted_run_resumes_bitwise(learned, tmp_path):
  from jaxbert.run import run
  corpus, ref_dir, _ = learned
  workdir = str(tmp_path / "resumed")
  run(_config(corpus, STEPS // 2), workdir, devices=jax.devices()[:1])  # stops at a checkpoint
  run(_config(corpus, STEPS), workdir, devices=jax.devices()[:1])       # the same run, resumed
  step, state = _final_state(workdir)
  ref_step, ref = _final_state(ref_dir)
  assert step == ref_step == STEPS
  assert [k for k in ref if ref[k].tobytes() != state[k].tobytes()] == []


def test_unigram_baseline_is_add_one_smoothed_on_training_documents():
  store = DocumentStore.from_documents([[[3, 3, 4]], [[4]]])
  logp = unigram_log_probs(store, 6, 2)
  counts = np.array([0, 0, 2, 2, 2, 0]) + 1.0  # two documents end, two 3s, two 4s
  np.testing.assert_allclose(np.exp(logp), counts / counts.sum())
  rows = LMRows(store, 8, 2, 0, seed=0, shuffle=False)
  assert sorted(targets_of(rows, range(rows.num_examples())).tolist()) == [2, 2, 3, 3, 4, 4]


def test_continued_pretraining_from_an_imported_decoder_at_another_length(tmp_path):
  """--config.init=<import-hf bundle>: the bundle's architecture, weights and tokenizer
  (not config.model's gpt-tiny nor a trained BPE), at a sequence length of the run's."""
  pytest.importorskip("torch")
  import sys
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import test_decoder_hf as hf_tests
  import transformers
  from jaxbert import decoder_weights
  from jaxbert.hf import import_hf
  from jaxbert.run import run
  bpe = hf_tests.bpe_dir.__wrapped__(tmp_path_factory=_Factory(tmp_path))
  tok = transformers.AutoTokenizer.from_pretrained(bpe)
  hf = hf_tests._hf_model("llama", len(tok))  # pylint: disable=protected-access
  hf.save_pretrained(str(tmp_path / "hf"))
  tok.save_pretrained(str(tmp_path / "hf"))
  bundle = str(tmp_path / "bundle")
  import_hf(str(tmp_path / "hf"), bundle)
  cfg, params, bundle_tok = decoder_weights.load(bundle)
  corpus = _phrase_corpus(str(tmp_path / "corpus.txt"), num_docs=40)
  workdir = str(tmp_path / "cont")
  lr = 1e-4
  config = _config(corpus, 2, lr=lr)
  config.init = bundle
  config.data.max_seq_len = 48
  config.optim.warmup_steps = 0
  config.train.checkpoint_every = 2
  metrics = run(config, workdir, devices=jax.devices()[:1])
  # The run keeps the bundle's byte-level BPE (no SentencePiece trained on the corpus).
  saved = dtok.load(os.path.join(workdir, "tokenizer"))
  assert not os.path.exists(os.path.join(workdir, "tokenizer", dtok.SPM_LM_FILE))
  assert saved.encode("the cat sat on the mat") == bundle_tok.encode("the cat sat on the mat")
  step, state = _final_state(workdir)
  assert step == 2 and np.isfinite(metrics["lm_loss"])
  flat = {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  trained = {k: v for k, v in state.items() if k.startswith(".params") or "'params'" in k[:12]}
  assert len(trained) == len(flat)
  for key, value in flat.items():
    (got,) = [v for k, v in trained.items() if k.endswith(key)]
    assert got.shape == value.shape
    # Two Adam steps move a weight by at most ~2 lr: the run started from the bundle.
    assert np.abs(got - value).max() <= 3 * lr, key
  assert cfg.arch == "llama" and bundle_tok.vocab_size == len(tok)


class _Factory:
  """tmp_path_factory's mktemp on a plain folder (bpe_dir wants a factory)."""

  def __init__(self, root):
    self.root = root

  def mktemp(self, name):
    path = self.root / name
    path.mkdir()
    return path
