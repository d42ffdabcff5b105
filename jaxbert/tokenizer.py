"""Tokenizers: one interface over SentencePiece models and Hugging Face WordPiece.

Pre-training trains its own SentencePiece model (`train_sentencepiece`); fine-tuning a
Hugging Face BERT checkpoint reads that checkpoint's WordPiece vocabulary. Everything
downstream (corpus building, masking, task heads) sees only the `Tokenizer` interface:
piece ids without specials, the five special ids, and a per-piece "starts a word" table
for whole-word masking and token-level labels.
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece as spm
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers

from jaxbert.errors import UserError

SPM_MODEL_FILE = "spm.model"
HF_TOKENIZER_FILE = "tokenizer.json"
HF_VOCAB_FILE = "vocab.txt"
HF_CONFIG_FILE = "tokenizer_config.json"

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
# SentencePiece marks a preceding space with U+2581 ("lower one eighth block").
_SPM_SPACE = "\u2581"


class Tokenizer(abc.ABC):
  """Text <-> piece ids. No method adds special tokens; callers place them.

  Attributes every implementation sets:
    vocab_size: number of ids the tokenizer can produce (specials included).
    pad_id, unk_id, cls_id, sep_id, mask_id: the special ids.
    lowercase: whether encoding lowercases the text first.
  """

  vocab_size: int
  pad_id: int
  unk_id: int
  cls_id: int
  sep_id: int
  mask_id: int
  lowercase: bool

  @abc.abstractmethod
  def encode(self, text: str) -> list[int]:
    """Piece ids of `text`, no specials added."""

  @abc.abstractmethod
  def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Piece ids and, per piece, the (start, end) character span in `text`."""

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """`encode` over many texts (implementations run this in parallel)."""
    return [self.encode(t) for t in texts]

  @abc.abstractmethod
  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids`; special pieces are dropped."""

  @abc.abstractmethod
  def id_to_piece(self, i: int) -> str:
    """The vocabulary entry of id `i`."""

  @abc.abstractmethod
  def word_start_table(self) -> np.ndarray:
    """bool[vocab_size]: piece begins a new word. Specials are True."""

  @abc.abstractmethod
  def save(self, directory: str) -> None:
    """Writes the files `load_tokenizer(directory)` reads back."""

  @property
  def special_ids(self) -> tuple[int, int, int, int, int]:
    return (self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id)

  def fingerprint(self) -> str:
    """sha256 of the vocabulary (pieces in id order) and the lowercase flag.

    Two tokenizers with equal fingerprints map text to the same ids, so a tokenized
    corpus or a checkpoint can be checked against the tokenizer it is used with.
    """
    h = hashlib.sha256(f"{type(self).__name__}\nlowercase={int(self.lowercase)}\n".encode())
    for i in range(self.vocab_size):
      h.update(self.id_to_piece(i).encode("utf-8", "surrogatepass"))
      h.update(b"\n")
    return h.hexdigest()


def _write_atomic(path: str, data: bytes) -> None:
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model (`spm.model`) with BERT's specials as control symbols.

  Required layout (what `train_sentencepiece` writes): a pad piece and an unk piece,
  and control symbols [CLS], [SEP], [MASK]. Control symbols are never produced from
  text: a literal "[CLS]" in the input is split into ordinary pieces.

  Lowercasing is part of the model: `train_sentencepiece(lowercase=True)` uses the
  `nmt_nfkc_cf` normalization rule (NFKC + case folding), so the model file alone
  decides it and offsets still point into the original, un-lowercased text.
  """

  def __init__(self, model_proto: bytes, source: str = "<in memory>"):
    self._proto = bytes(model_proto)
    self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
    self._source = source
    sp = self._sp
    self.vocab_size = sp.get_piece_size()
    if self.vocab_size == 0:  # an empty protobuf parses, as a model with nothing in it
      raise UserError(f"{source} is not a SentencePiece model (it holds no pieces)")
    self.pad_id, self.unk_id = sp.pad_id(), sp.unk_id()
    if self.pad_id < 0:
      raise UserError(f"SentencePiece model {source} has no pad piece (pad_id=-1); "
                      "train it with pad_id=0, e.g. via jaxbert's train_sentencepiece.")
    ids = {}
    for piece in (CLS, SEP, MASK):
      i = sp.piece_to_id(piece)
      if sp.id_to_piece(i) != piece or not sp.is_control(i):
        raise UserError(f"SentencePiece model {source} lacks the control symbol {piece}; "
                        "train it with control_symbols=[CLS],[SEP],[MASK] "
                        "(jaxbert's train_sentencepiece does).")
      ids[piece] = i
    self.cls_id, self.sep_id, self.mask_id = ids[CLS], ids[SEP], ids[MASK]
    # The model's normalizer decides casing; probe it rather than trusting a side file.
    probe = sp.normalize("ABC")
    self.lowercase = probe == probe.lower()
    self._byte_ids = np.array([sp.is_byte(i) for i in range(self.vocab_size)], bool)

  @classmethod
  def load(cls, directory: str) -> "SentencePieceTokenizer":
    """From DIRECTORY/spm.model, or from `directory` itself if it is the model file."""
    path = directory if os.path.isfile(directory) else os.path.join(directory, SPM_MODEL_FILE)
    try:
      with open(path, "rb") as f:
        proto = f.read()
    except OSError as e:
      raise UserError(f"cannot read SentencePiece model {path}: {e}") from e
    if not proto:
      raise UserError(f"{path} is empty (0 bytes), not a SentencePiece model; an interrupted "
                      "copy? Copy the model file again (a run's tokenizer is in "
                      "WORKDIR/tokenizer/spm.model)")
    try:
      return cls(proto, source=path)
    except RuntimeError:  # sentencepiece's parse errors
      raise UserError(f"{path} is not a SentencePiece model (it does not parse as one); "
                      "give the spm.model a jaxbert run wrote, or a folder with a Hugging "
                      "Face tokenizer.json / vocab.txt") from None

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
    """Batch encode; num_threads=-1 lets SentencePiece use every core."""
    return self._sp.encode(list(texts), num_threads=num_threads)

  def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids and character spans into `text`.

    A piece's span covers the whitespace it absorbed ("▁the" spans " the"); the
    dummy-prefix "▁" at the start of the text is the empty span (0, 0). A character
    written as several byte pieces gives each of them that character's span.
    """
    out = self._sp.encode(text, return_type="offset_mapping")
    ids = list(out["ids"])
    spans = [tuple(s) for s in out["offsets"]]
    # SentencePiece gives all but the last byte piece of a character an empty span;
    # copy the character's span back so every piece maps to the text it came from.
    for k in range(len(ids) - 2, -1, -1):
      start, end = spans[k]
      if start == end and self._byte_ids[ids[k]] and self._byte_ids[ids[k + 1]] \
          and spans[k + 1][0] == start:
        spans[k] = spans[k + 1]
    return ids, spans

  def decode(self, ids: Iterable[int]) -> str:
    return self._sp.decode([int(i) for i in ids])

  def id_to_piece(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))

  def word_start_table(self) -> np.ndarray:
    """Pieces starting with "▁" begin a word; specials (pad/unk/controls) are True.

    Byte-fallback pieces are False: an unusual character after a space is encoded as
    a lone "▁" piece followed by its bytes, so the "▁" piece carries the word start
    and the bytes continue that word (whole-word masking then masks them together).
    """
    sp = self._sp
    table = np.zeros(self.vocab_size, bool)
    for i in range(self.vocab_size):
      if sp.is_control(i) or sp.is_unknown(i):
        table[i] = True
      elif not sp.is_byte(i):
        table[i] = sp.id_to_piece(i).startswith(_SPM_SPACE)
    return table

  def save(self, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    _write_atomic(os.path.join(directory, SPM_MODEL_FILE), self._proto)


def _normalizer_lowercases(spec) -> bool:
  """Whether a tokenizer.json normalizer spec (dict/list/None) lowercases."""
  if isinstance(spec, dict):
    if spec.get("type") == "Lowercase" or spec.get("lowercase") is True:
      return True
    return any(_normalizer_lowercases(v) for v in spec.values() if isinstance(v, (dict, list)))
  if isinstance(spec, list):
    return any(_normalizer_lowercases(v) for v in spec)
  return False


class WordPieceTokenizer(Tokenizer):
  """A Hugging Face WordPiece tokenizer (BERT checkpoints), via `tokenizers`.

  Encodes exactly as `tokenizers.Tokenizer.encode(text, add_special_tokens=False)`
  with the checkpoint's padding and truncation switched off. As in transformers, a
  literal special token in the text (e.g. "[SEP]") is matched as that special id.
  """

  def __init__(self, tok: tokenizers.Tokenizer, lowercase: bool, source: str = "<in memory>"):
    spec = json.loads(tok.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "WordPiece":
      raise UserError(f"{source}: tokenizer model type is {model.get('type')!r}; jaxbert reads "
                      "only WordPiece tokenizer.json files (BERT checkpoints) or spm.model.")
    tok.no_padding()
    tok.no_truncation()
    self._tok = tok
    self._source = source
    self._prefix = model.get("continuing_subword_prefix") or "##"
    self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
    self.lowercase = bool(lowercase)
    ids = []
    for piece in (PAD, UNK, CLS, SEP, MASK):
      i = tok.token_to_id(piece)
      if i is None:
        raise UserError(f"{source}: vocabulary has no {piece} token; BERT vocabularies need "
                        "[PAD], [UNK], [CLS], [SEP] and [MASK].")
      ids.append(i)
    self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = ids

  @classmethod
  def from_vocab(cls, vocab_file: str, *, lowercase: bool = True,
                 strip_accents: bool | None = None,
                 tokenize_chinese_chars: bool = True) -> "WordPieceTokenizer":
    """BERT's tokenizer from a `vocab.txt` (one piece per line, id = line number)."""
    try:
      vocab = models.WordPiece.read_file(vocab_file)
    except Exception as e:  # tokenizers raises plain Exception on I/O errors
      raise UserError(f"cannot read WordPiece vocabulary {vocab_file}: {e}") from e
    missing = [p for p in (PAD, UNK, CLS, SEP, MASK) if p not in vocab]
    if missing:
      raise UserError(f"{vocab_file} lacks {', '.join(missing)}; BERT vocabularies need "
                      "[PAD], [UNK], [CLS], [SEP] and [MASK].")
    tok = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token=UNK, max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=tokenize_chinese_chars,
        strip_accents=strip_accents, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    # Marked special so decode(skip_special_tokens) drops them, as transformers does.
    tok.add_special_tokens([PAD, UNK, CLS, SEP, MASK])
    return cls(tok, lowercase, source=vocab_file)

  @classmethod
  def load(cls, directory: str) -> "WordPieceTokenizer":
    """From `tokenizer.json` if present, else from `vocab.txt` + `tokenizer_config.json`."""
    config = {}
    config_path = os.path.join(directory, HF_CONFIG_FILE)
    if os.path.exists(config_path):
      try:
        with open(config_path, encoding="utf-8") as f:
          config = json.load(f)
      except (OSError, ValueError) as e:
        raise UserError(f"cannot parse {config_path}: {e}") from e
    json_path = os.path.join(directory, HF_TOKENIZER_FILE)
    if os.path.exists(json_path):
      try:
        tok = tokenizers.Tokenizer.from_file(json_path)
      except Exception as e:  # tokenizers raises plain Exception on parse errors
        raise UserError(f"cannot load {json_path}: {e}") from e
      lowercase = config.get("do_lower_case")
      if lowercase is None:
        lowercase = _normalizer_lowercases(json.loads(tok.to_str()).get("normalizer"))
      return cls(tok, lowercase, source=json_path)
    lowercase = config.get("do_lower_case", True)
    return cls.from_vocab(os.path.join(directory, HF_VOCAB_FILE), lowercase=lowercase,
                          strip_accents=config.get("strip_accents"),
                          tokenize_chinese_chars=config.get("tokenize_chinese_chars", True))

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    enc = self._tok.encode(text, add_special_tokens=False)
    return enc.ids, [tuple(o) for o in enc.offsets]

  def decode(self, ids: Iterable[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

  def id_to_piece(self, i: int) -> str:
    piece = self._tok.id_to_token(int(i))
    return "" if piece is None else piece

  def word_start_table(self) -> np.ndarray:
    """Pieces not starting with "##" begin a word (specials included)."""
    table = np.ones(self.vocab_size, bool)
    for piece, i in self._tok.get_vocab(with_added_tokens=True).items():
      if piece.startswith(self._prefix) and i not in self.special_ids:
        table[i] = False
    return table

  def save(self, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    _write_atomic(os.path.join(directory, HF_TOKENIZER_FILE), self._tok.to_str().encode())
    vocab = "".join(self.id_to_piece(i) + "\n" for i in range(self.vocab_size))
    _write_atomic(os.path.join(directory, HF_VOCAB_FILE), vocab.encode("utf-8"))


def load_tokenizer(directory: str) -> Tokenizer:
  """`spm.model` -> SentencePieceTokenizer; `tokenizer.json`/`vocab.txt` -> WordPiece.

  `directory` is the folder holding them, or one of those files itself (any other file
  is read as a SentencePiece model).
  """
  expected = (f"{SPM_MODEL_FILE} (SentencePiece) or {HF_TOKENIZER_FILE} / {HF_VOCAB_FILE} "
              "(Hugging Face WordPiece)")
  if os.path.isfile(directory):  # the model file itself, e.g. tokenizer.path=.../spm.model
    if os.path.basename(directory) in (HF_TOKENIZER_FILE, HF_VOCAB_FILE):
      return WordPieceTokenizer.load(os.path.dirname(directory))
    return SentencePieceTokenizer.load(directory)
  if not os.path.isdir(directory):
    raise UserError(f"tokenizer directory {directory} does not exist; expected a folder "
                    f"holding {expected}.")
  if os.path.exists(os.path.join(directory, SPM_MODEL_FILE)):
    return SentencePieceTokenizer.load(directory)
  if any(os.path.exists(os.path.join(directory, f)) for f in (HF_TOKENIZER_FILE, HF_VOCAB_FILE)):
    return WordPieceTokenizer.load(directory)
  raise UserError(f"no tokenizer in {directory}: expected {expected}.")


def train_sentencepiece(texts: Iterable[str], out_dir: str, vocab_size: int,
                        **options) -> SentencePieceTokenizer:
  """Trains a SentencePiece model on `texts` (one sentence each); writes out_dir/spm.model.
  The options and ids: jaxbert/spm_training.py."""
  from jaxbert import spm_training  # pylint: disable=g-import-not-at-top (it imports this module)
  return spm_training.train_sentencepiece(texts, out_dir, vocab_size, **options)


def padded_vocab_size(n: int, multiple: int = 128) -> int:
  """`n` rounded up to a multiple (embedding tables shard and tile better)."""
  return -(-n // multiple) * multiple


def check_vocab(tokenizer: Tokenizer, model_vocab_size: int, where: str) -> None:
  """UserError if the tokenizer can emit ids the model has no embedding for."""
  if tokenizer.vocab_size > model_vocab_size:
    raise UserError(
        f"{where}: the tokenizer has {tokenizer.vocab_size} pieces but the model's vocab_size "
        f"is {model_vocab_size}; set the model's vocab_size to at least "
        f"{padded_vocab_size(tokenizer.vocab_size)} or use the tokenizer the model was built with.")
