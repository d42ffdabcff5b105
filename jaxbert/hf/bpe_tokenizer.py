"""An imported decoder's own byte-level BPE tokenizer (a `tokenizers` tokenizer.json).

Saved as Hugging Face saves one: `tokenizer.json` plus `tokenizer_config.json` (special
tokens, add_bos_token / add_eos_token, chat_template), so an import keeps the files a
model came with and an export hands them back unchanged. Ids are transformers' ids:
its fast tokenizers run tokenizer.json as it is, except that explicit add_bos_token /
add_eos_token flags (or a tokenizer.json without a post-processor) replace the
post-processor with "[bos] $A [eos]" as the flags say; `load` does the same.

GGUF files carry no tokenizer.json; `from_gguf_metadata` builds one from the file's
vocabulary, merges, token types and special ids the way transformers does when it
loads a GGUF (its integrations/gguf tokenizer mapping): tokens outside the byte
alphabet respelled in it, control tokens added as special tokens (those spelled in the
byte alphabet only), user-defined ones as plain added tokens.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors

from jaxbert.errors import UserError

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
# Token types in a GGUF vocabulary (llama.cpp's numbering).
_CONTROL, _USER_DEFINED = 3, 4
# The end-of-text piece of GPT-2 style vocabularies: what separates documents in pre-training.
EOT = "<|endoftext|>"


def _token_text(value) -> str | None:
  if isinstance(value, dict):  # an AddedToken written out in full
    return value.get("content")
  return value


class BPETokenizer:
  """encode/decode as transformers does, with the model's special ids and chat template."""

  def __init__(self, tokenizer: tokenizers.Tokenizer, config: dict, source: str = "<in memory>"):
    self._tok = tokenizer
    self.config = dict(config)
    self.source = source
    self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    ids = {name: self._id(self.config.get(f"{name}_token"), f"{name}_token")
           for name in ("bos", "eos", "pad", "unk")}
    self.bos_id, self.eos_id, self.unk_id = ids["bos"], ids["eos"], ids["unk"]
    if self.eos_id is None:
      raise UserError(f"{source}: the tokenizer names no eos_token (end of sequence) in "
                      f"{CONFIG_FILE}; a decoder needs one to stop generating")
    self.pad_id = ids["pad"] if ids["pad"] is not None else self.eos_id
    self.eod_id = tokenizer.token_to_id(EOT)
    self.chat_template = self.config.get("chat_template") or None
    if self.config.get("add_bos_token") is not None or self.config.get("add_eos_token") is not None \
        or tokenizer.post_processor is None:
      self._set_post_processor(bool(self.config.get("add_bos_token")),
                               bool(self.config.get("add_eos_token")))

  def _id(self, token, key: str) -> int | None:
    token = _token_text(token)
    if token is None:
      return None
    i = self._tok.token_to_id(token)
    if i is None:
      raise UserError(f"{self.source}: {CONFIG_FILE} {key}={token!r} is not in the vocabulary")
    return i

  def _set_post_processor(self, add_bos: bool, add_eos: bool) -> None:
    bos = _token_text(self.config.get("bos_token"))
    eos = _token_text(self.config.get("eos_token"))
    add_bos = add_bos and bos is not None
    single = (f"{bos}:0 " if add_bos else "") + "$A:0" + (f" {eos}:0" if add_eos else "")
    pair = single + (f" {bos}:1" if add_bos else "") + " $B:1" + (f" {eos}:1" if add_eos else "")
    special = [(t, self._tok.token_to_id(t)) for t, on in ((bos, add_bos), (eos, add_eos)) if on]
    self._tok.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                             special_tokens=special)

  # --- the decoder tokenizer interface (decoder_api.md) ---------------------------

  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

  def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
    return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def id_to_piece(self, i: int) -> str:
    return self._tok.id_to_token(int(i))

  def token_to_id(self, token: str) -> int | None:
    return self._tok.token_to_id(token)

  def save(self, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    self._tok.save(os.path.join(directory, TOKENIZER_FILE))
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:
      json.dump(self.config, f, indent=2, ensure_ascii=False)


def load(directory: str) -> BPETokenizer:
  """The tokenizer of a Hugging Face folder or of a jaxbert checkpoint's tokenizer/."""
  path = os.path.join(directory, TOKENIZER_FILE)
  try:
    tok = tokenizers.Tokenizer.from_file(path)
  except FileNotFoundError:
    raise UserError(f"{path} is missing; an imported decoder needs its tokenizer.json") from None
  except Exception as e:  # tokenizers raises a bare Exception on a malformed file
    raise UserError(f"cannot read {path}: {e}") from None
  config = {}
  for name in (CONFIG_FILE, "special_tokens_map.json"):
    p = os.path.join(directory, name)
    if os.path.isfile(p):
      try:
        with open(p) as f:
          config = {**json.load(f), **config}
      except (OSError, ValueError) as e:
        raise UserError(f"cannot parse {p}: {e}") from None
  if "chat_template" not in config and os.path.isfile(os.path.join(directory, "chat_template.jinja")):
    with open(os.path.join(directory, "chat_template.jinja")) as f:
      config["chat_template"] = f.read()
  keep = ("bos_token", "eos_token", "pad_token", "unk_token", "add_bos_token", "add_eos_token",
          "chat_template", "model_max_length", "clean_up_tokenization_spaces")
  return BPETokenizer(tok, {k: config[k] for k in keep if k in config}, source=directory)


def _byte_alphabet() -> dict[int, str]:
  """GPT-2's printable spelling of the 256 byte values (its byte-level BPE alphabet)."""
  printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
               + list(range(ord("®"), ord("ÿ") + 1)))
  spelling, extra = {}, 0
  for b in range(256):
    if b in printable:
      spelling[b] = chr(b)
    else:
      spelling[b] = chr(256 + extra)
      extra += 1
  return spelling


def from_gguf_metadata(meta: dict, source: str) -> BPETokenizer:
  """The byte-level BPE a GGUF file describes (tokenizer.ggml.model == "gpt2").

  `meta` holds the file's tokenizer.* keys with their values (strings, lists, ints).
  """
  kind = meta.get("tokenizer.ggml.model")
  if kind != "gpt2":
    raise UserError(f"{source}: tokenizer.ggml.model is {kind!r}; jaxbert reads GGUF files with "
                    "a byte-level BPE tokenizer ('gpt2') only")
  tokens = list(meta["tokenizer.ggml.tokens"])
  types = list(meta.get("tokenizer.ggml.token_type") or [])
  spelling = _byte_alphabet()
  alphabet = set(spelling.values())
  vocab = {}
  for i, t in enumerate(tokens):
    spelled = t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8"))
    vocab[spelled] = i
  merges = [tuple(m.split(" ")) for m in meta.get("tokenizer.ggml.merges") or []]
  if not merges:
    raise UserError(f"{source}: the GGUF tokenizer has no merges (tokenizer.ggml.merges)")
  pre = meta.get("tokenizer.ggml.pre")
  if pre not in (None, "default", "gpt2", "smollm"):
    raise UserError(f"{source}: tokenizer.ggml.pre={pre!r} (its own pre-tokenizer split) is not "
                    "supported; jaxbert reads GPT-2-style byte-level BPE vocabularies")
  tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None,
                                        continuing_subword_prefix="", end_of_word_suffix="",
                                        fuse_unk=False))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(
      meta.get("tokenizer.ggml.add_space_prefix", False)))
  tok.decoder = decoders.ByteLevel()
  control = [AddedToken(t, normalized=False, special=True)
             for t, ty in zip(tokens, types) if ty == _CONTROL and set(t) <= alphabet]
  if control:
    tok.add_special_tokens(control)
  user = [AddedToken(t, normalized=False, special=False)
          for t, ty in zip(tokens, types) if ty == _USER_DEFINED and t in vocab]
  if user:
    tok.add_tokens(user)
  special = lambda key: (tokens[meta[key]] if meta.get(key) is not None else None)
  config = {"bos_token": special("tokenizer.ggml.bos_token_id"),
            "eos_token": special("tokenizer.ggml.eos_token_id"),
            "unk_token": special("tokenizer.ggml.unknown_token_id"),
            "pad_token": special("tokenizer.ggml.padding_token_id"),
            "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
            "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
            "tokenizer_class": "PreTrainedTokenizerFast"}
  if meta.get("tokenizer.chat_template"):
    config["chat_template"] = meta["tokenizer.chat_template"]
  return BPETokenizer(tok, {k: v for k, v in config.items() if v is not None}, source=source)
