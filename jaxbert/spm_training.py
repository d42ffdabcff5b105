"""Training a SentencePiece model for pre-training (`jaxbert.tokenizer.train_sentencepiece`)."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable

import sentencepiece as spm

from jaxbert.errors import UserError
from jaxbert.tokenizer import CLS, MASK, PAD, SEP, SPM_MODEL_FILE, UNK, SentencePieceTokenizer


def train_sentencepiece(texts: Iterable[str], out_dir: str, vocab_size: int, *,
                        model_type: str = "unigram", lowercase: bool = False,
                        input_sentence_size: int = 2_000_000, seed: int = 0,
                        num_threads: int | None = None,
                        source: str = "", options: dict | None = None,
                        tokenizer_cls=SentencePieceTokenizer):
  """Trains a SentencePiece model on `texts` (one sentence each); writes out_dir/spm.model.

  Ids: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4, then 256 byte pieces (byte
  fallback: no character is ever [UNK]), then the learned pieces. `vocab_size` is a
  soft limit: a corpus too small to support it yields fewer pieces (tests, toy runs);
  it must still exceed 261 + the number of distinct characters kept.
  At most `input_sentence_size` sentences, sampled with `seed`, reach the trainer.
  `source` names where the texts come from (the corpus files), for the messages.
  The same texts, settings and seed give a byte-identical model.
  `options` replace trainer settings (another special-token layout: a decoder's,
  jaxbert/decoder_tokenizer.py) and `tokenizer_cls(proto, source=...)` wraps the model.
  """
  if model_type not in ("unigram", "bpe"):
    raise UserError(f"tokenizer model_type must be 'unigram' or 'bpe', got {model_type!r}.")
  spm.set_random_generator_seed(seed)
  writer = io.BytesIO()
  try:
    settings = dict(
        vocab_size=vocab_size, model_type=model_type,
        pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, pad_piece=PAD, unk_piece=UNK,
        control_symbols=[CLS, SEP, MASK], byte_fallback=True,
        character_coverage=0.9999, hard_vocab_limit=False,
        normalization_rule_name="nmt_nfkc_cf" if lowercase else "nmt_nfkc",
        input_sentence_size=input_sentence_size, shuffle_input_sentence=True,
        num_threads=num_threads or os.cpu_count() or 1, minloglevel=2)
    settings.update(options or {})
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=writer, **settings)
  except RuntimeError as e:
    msg = str(e)
    if "sentences_.empty()" in msg:
      msg = "no training sentences (the corpus is empty)"
    chars = re.search(r"required_chars\. \d+ vs (\d+)", msg)
    if chars:
      need = int(chars.group(1))
      # The requirement counts the 261 meta pieces (5 specials, 256 bytes) too.
      msg = (f"the training text holds {need - 261} distinct characters (after "
             f"character_coverage), unusually many for text in a language or two: is a file "
             f"of the corpus{f' {source}' if source else ''} binary, or in an unexpected "
             "encoding? If the text is right, set tokenizer.vocab_size above "
             f"{need}")
    raise UserError(f"SentencePiece training for {out_dir} failed "
                    f"(vocab_size={vocab_size}): {msg}") from None
  tok = tokenizer_cls(writer.getvalue(), source=os.path.join(out_dir, SPM_MODEL_FILE))
  tok.save(out_dir)
  return tok
