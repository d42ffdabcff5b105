"""A SentencePiece model as a Hugging Face `tokenizer.json` that encodes to the same ids.

SentencePiece encodes in four steps, each rebuilt with a `tokenizers` component:
  1. normalization by the model's precompiled character map (NFKC, plus case folding
     for a lowercasing model; `normalizers.Precompiled` reads the same map), then
     dropping leading, trailing and repeated spaces (`remove_extra_whitespaces`);
  2. spaces become "▁", one "▁" is put in front (`add_dummy_prefix`) and, with
     `split_by_whitespace`, pieces never cross a "▁" inside: `pre_tokenizers.Metaspace`;
  3. segmentation: unigram (Viterbi over the pieces' scores) or BPE (merging the pair
     whose merged piece scores highest; here a merge list ranked by that score);
  4. characters with no piece become their UTF-8 byte pieces `<0xNN>` (byte fallback).
Special ([CLS], [SEP], ...) and byte pieces are never matched in text by SentencePiece,
so they get scores that no segmentation picks; specials are added tokens instead, and a
TemplateProcessing post-processor places [CLS] A [SEP] (B [SEP]) as jaxbert does.
"""

from __future__ import annotations

import tokenizers
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors

from jaxbert.errors import UserError

# sentencepiece_model.proto enums.
_UNIGRAM, _BPE = 1, 2
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_SPACE = "\u2581"
# Below any real piece's log-probability: such pieces are only reachable as added tokens.
_NEVER = -1e9


def _proto(model_bytes: bytes):
  from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top
  m = sentencepiece_model_pb2.ModelProto()
  m.ParseFromString(model_bytes)
  return m


def _bpe_merges(pieces) -> list[tuple[str, str]]:
  """Every (left, right) whose concatenation is a piece, ranked by that piece's score.

  SentencePiece's BPE merges the adjacent pair whose merged piece scores highest
  (leftmost on ties), as `tokenizers` BPE merges the lowest-ranked pair.
  """
  normal = {p.piece: i for i, p in enumerate(pieces) if p.type in (_NORMAL, _USER_DEFINED)}
  ranked = sorted(normal, key=lambda s: (-pieces[normal[s]].score, normal[s]))
  merges = []
  for piece in ranked:
    splits = [(piece[:k], piece[k:]) for k in range(1, len(piece))]
    splits = [(a, b) for a, b in splits if a in normal and b in normal]
    merges += sorted(splits, key=lambda ab: (normal[ab[0]], normal[ab[1]]))
  return merges


def spm_to_tokenizers(model_bytes: bytes, cls: str, sep: str,
                      specials: list[str]) -> tokenizers.Tokenizer:
  """The `tokenizers.Tokenizer` for a SentencePiece model (serialized ModelProto)."""
  m = _proto(model_bytes)
  ts, ns = m.trainer_spec, m.normalizer_spec
  pieces = list(m.pieces)
  if ts.treat_whitespace_as_suffix or not ns.escape_whitespaces:
    raise UserError("the SentencePiece model puts spaces after pieces or keeps them "
                    "unescaped; only models trained the usual way (jaxbert's) can be "
                    "written as tokenizer.json")
  unk = next((i for i, p in enumerate(pieces) if p.type == _UNKNOWN), None)
  if unk is None:
    raise UserError("the SentencePiece model has no unknown piece")
  if ts.model_type == _UNIGRAM:
    vocab = [(p.piece, p.score if p.type in (_NORMAL, _USER_DEFINED) else _NEVER)
             for p in pieces]
    model = models.Unigram(vocab, unk_id=unk, byte_fallback=ts.byte_fallback)
  elif ts.model_type == _BPE:
    model = models.BPE({p.piece: i for i, p in enumerate(pieces)}, _bpe_merges(pieces),
                       unk_token=pieces[unk].piece, fuse_unk=True,
                       byte_fallback=ts.byte_fallback)
  else:
    raise UserError(f"SentencePiece model type {ts.model_type} (word or char) cannot be "
                    "written as tokenizer.json; only unigram and bpe models")
  tok = tokenizers.Tokenizer(model)
  steps = []
  if ns.precompiled_charsmap:
    steps.append(normalizers.Precompiled(ns.precompiled_charsmap))
  if ns.remove_extra_whitespaces:
    steps += [normalizers.Replace(Regex(" {2,}"), " "), normalizers.Strip(left=True, right=True)]
  if steps:
    tok.normalizer = normalizers.Sequence(steps)
  tok.pre_tokenizer = pre_tokenizers.Metaspace(
      replacement=_SPACE, prepend_scheme="always" if ns.add_dummy_prefix else "never",
      split=bool(ts.split_by_whitespace))
  tok.decoder = decoders.Sequence([
      decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse(),
      decoders.Strip(" ", 1 if ns.add_dummy_prefix else 0, 0)])
  tok.add_special_tokens([tokenizers.AddedToken(s, special=True, normalized=False)
                          for s in specials])
  ids = {p.piece: i for i, p in enumerate(pieces)}
  tok.post_processor = template(cls, ids[cls], sep, ids[sep])
  return tok


def template(cls: str, cls_id: int, sep: str, sep_id: int) -> processors.TemplateProcessing:
  """[CLS] A [SEP] with token type 0, then B [SEP] with token type 1, as jaxbert encodes."""
  return processors.TemplateProcessing(
      single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
      special_tokens=[(cls, cls_id), (sep, sep_id)])
