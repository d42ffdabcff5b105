"""Text -> sentences: the rule-based splitter and the tokenizer's training sample.

Pre-training pairs sentences for next-sentence prediction, so every corpus line (a
sentence or a paragraph) is split into sentences before it is tokenized.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

# A run of terminators, optional closing quotes/brackets, then whitespace.
_CANDIDATE = re.compile(r"[.!?]+[\"')\]\u2019\u201d\u00bb]*\s+")
_OPENERS = frozenset("\"'([\u2018\u201c\u00ab")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc cf fig figs no nos vol vols ch sec eq eqs "
    "approx ca inc ltd co corp dept est gen gov jan feb mar apr jun jul aug sep sept oct "
    "nov dec mt ft op ed eds p pp viz al".split())


def split_sentences(paragraph: str) -> list[str]:
  """Rule-based sentence split of one paragraph.

  Splits after ".", "!" or "?" (plus closing quotes/brackets) followed by whitespace
  and an uppercase letter, digit, quote or opening bracket. A "." does not split
  after a known abbreviation ("Mr.", "etc."), an initial ("J. Smith") or dotted
  single letters ("e.g.", "U.S."). Returns stripped, non-empty sentences.
  """
  if "." not in paragraph and "!" not in paragraph and "?" not in paragraph:
    s = paragraph.strip()
    return [s] if s else []
  out = []
  begin = 0
  for m in _CANDIDATE.finditer(paragraph):
    end = m.end()
    if end >= len(paragraph):
      break
    nxt = paragraph[end]
    if not (nxt.isupper() or nxt.isdigit() or nxt in _OPENERS):
      continue
    if paragraph[m.start()] == "." and m.group().count(".") == 1:
      space = max(paragraph.rfind(" ", begin, m.start()), paragraph.rfind("\t", begin, m.start()))
      word = paragraph[max(space + 1, begin):m.start()].lstrip("\"'([\u2018\u201c").lower()
      # Known abbreviations, initials ("J."), and dotted letters ("e.g.", "U.S.").
      if word in _ABBREVIATIONS or all(len(p) == 1 and p.isalpha() for p in word.split(".")):
        continue
    s = paragraph[begin:m.end()].strip()
    if s:
      out.append(s)
    begin = end
  s = paragraph[begin:].strip()
  if s:
    out.append(s)
  return out


def sentences_for_tokenizer_training(documents: Iterable[list[str]], *,
                                     max_sentences: int = 2_000_000,
                                     seed: int = 0) -> list[str]:
  """A uniform sample of at most `max_sentences` sentences (reservoir sampling).

  Reads the corpus once and keeps memory bounded by the sample, so a tokenizer can
  be trained on a corpus far larger than the trainer should hold.
  """
  rng = random.Random(seed)
  sample: list[str] = []
  seen = 0
  for doc in documents:
    for line in doc:
      for sent in split_sentences(line):
        if seen < max_sentences:
          sample.append(sent)
        else:
          j = rng.randrange(seen + 1)
          if j < max_sentences:
            sample[j] = sent
        seen += 1
  return sample
