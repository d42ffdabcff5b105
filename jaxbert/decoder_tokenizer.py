"""Decoder tokenizers: one small interface over own pre-training's SentencePiece BPE and
an imported model's byte-level BPE (jaxbert/hf/bpe_tokenizer.py, a tokenizer.json).

The interface (docs: /work/notes/decoder_api.md, the decoder family's shared API):
`encode(text) -> list[int]`, `decode(ids) -> str`, `vocab_size`, `eos_id`, `bos_id`
(or None), `pad_id`, `chat_template` (or None), `save(dir)`. `load(dir)` returns
whichever kind is saved in `dir`.

Own pre-training's tokenizer is a SentencePiece BPE with byte fallback (no character
is ever unknown) and no normalization, so `decode(encode(text)) == text` and the bytes
a model is scored on (bits per byte) are the text's own. Its end-of-document piece
`<|endoftext|>` (the eos id) separates documents in packed rows.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Sequence

import sentencepiece as spm

from jaxbert.errors import UserError

SPM_LM_FILE = "spm_lm.model"
HF_TOKENIZER_FILE = "tokenizer.json"
EOD, PAD, UNK = "<|endoftext|>", "<pad>", "<unk>"


class SentencePieceLM:
  """A SentencePiece BPE trained for a decoder: pad 0, unk 1, end-of-document 2, bytes."""

  bos_id = None
  chat_template = None

  def __init__(self, model_proto: bytes, source: str = "<in memory>"):
    self._proto = bytes(model_proto)
    try:
      self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
    except RuntimeError:
      raise UserError(f"{source} is not a SentencePiece model (it does not parse as one)") from None
    sp = self._sp
    self.vocab_size = sp.get_piece_size()
    self.pad_id, self.unk_id, self.eos_id = sp.pad_id(), sp.unk_id(), sp.eos_id()
    if self.vocab_size == 0 or self.eos_id < 0 or sp.id_to_piece(self.eos_id) != EOD:
      raise UserError(f"{source} is not a decoder SentencePiece model (no {EOD} piece); "
                      "train one with jaxbert pretrain on a decoder config")

  @classmethod
  def load(cls, directory: str) -> "SentencePieceLM":
    path = os.path.join(directory, SPM_LM_FILE)
    try:
      with open(path, "rb") as f:
        proto = f.read()
    except OSError as e:
      raise UserError(f"cannot read the SentencePiece model {path}: {e}") from None
    return cls(proto, source=path)

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self._sp.encode(list(texts), num_threads=-1)

  def decode(self, ids: Iterable[int]) -> str:
    return self._sp.decode([int(i) for i in ids])

  def id_to_piece(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))

  def fingerprint(self) -> str:
    return hashlib.sha256(self._proto).hexdigest()

  def save(self, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, SPM_LM_FILE + ".tmp")
    with open(tmp, "wb") as f:
      f.write(self._proto)
    os.replace(tmp, os.path.join(directory, SPM_LM_FILE))


def train(texts: Iterable[str], out_dir: str, vocab_size: int, *, seed: int = 0,
          source: str = "") -> SentencePieceLM:
  """Trains the BPE on `texts` (paragraphs or sentences) and saves it in `out_dir`."""
  from jaxbert import spm_training  # pylint: disable=g-import-not-at-top
  options = dict(pad_id=0, unk_id=1, eos_id=2, bos_id=-1, pad_piece=PAD, unk_piece=UNK,
                 eos_piece=EOD, control_symbols=[],
                 # No normalization: the model is scored on the text's own bytes.
                 normalization_rule_name="identity", remove_extra_whitespaces=False)
  return spm_training.train_sentencepiece(texts, out_dir, vocab_size, model_type="bpe",
                                          seed=seed, source=source, options=options,
                                          tokenizer_cls=SentencePieceLM)


def load(directory: str):
  """The decoder tokenizer saved in `directory`: SentencePiece (spm_lm.model) or an
  imported model's byte-level BPE (tokenizer.json)."""
  if os.path.isfile(os.path.join(directory, SPM_LM_FILE)):
    return SentencePieceLM.load(directory)
  if os.path.isfile(os.path.join(directory, HF_TOKENIZER_FILE)):
    from jaxbert.hf import bpe_tokenizer  # pylint: disable=g-import-not-at-top
    return bpe_tokenizer.load(directory)
  raise UserError(f"no decoder tokenizer in {directory}: expected {SPM_LM_FILE} (trained by "
                  f"jaxbert pretrain) or {HF_TOKENIZER_FILE} (an imported model's)")


def encode_batch(tokenizer, texts: Sequence[str]) -> list[list[int]]:
  batch = getattr(tokenizer, "encode_batch", None)
  return batch(list(texts)) if batch is not None else [tokenizer.encode(t) for t in texts]


def fingerprint(tokenizer) -> str:
  """A digest of what the tokenizer maps text to (its saved files), for cache keys."""
  own = getattr(tokenizer, "fingerprint", None)
  if own is not None:
    return own()
  h = hashlib.sha256()
  with tempfile.TemporaryDirectory() as tmp:
    tokenizer.save(tmp)
    for name in sorted(os.listdir(tmp)):
      h.update(name.encode() + b"\0")
      with open(os.path.join(tmp, name), "rb") as f:
        h.update(f.read())
  return h.hexdigest()


def document_separator(tokenizer) -> int:
  """The id that ends a document in packed rows: the end-of-text token when the
  tokenizer has one apart from its chat end-of-turn, else its eos."""
  eod = getattr(tokenizer, "eod_id", None)
  return int(tokenizer.eos_id if eod is None else eod)
