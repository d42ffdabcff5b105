"""Masked-LM accuracy of a pre-training checkpoint on other text: does it know this domain?

    python -m experiments.mlm_probe --init runs/mini --text ../shared/data/corpus/fortunes.txt
    python -m experiments.mlm_probe --init runs/mini --tfds glue/sst2 --split validation \
        --field sentence --data-dir ../shared/data/tfds

Each line (or tfds example) becomes one row `[CLS] text [SEP]`, truncated to --seq-len;
15 % of its pieces (at least one, at most --predictions) are replaced by [MASK] and
predicted. Prints the accuracy and that of always guessing the most frequent masked piece,
the same pair `jaxbert pretrain` reports on its held-out documents.
"""

from __future__ import annotations

import argparse
import sys

import jax
import numpy as np

from jaxbert.errors import UserError
from jaxbert.handover import read_checkpoint
from jaxbert.model import BertForPreTraining


def read_texts(args) -> list[str]:
  if args.text:
    try:
      with open(args.text, encoding="utf-8", errors="replace") as f:
        lines = [line.strip() for line in f]
    except OSError as e:
      raise UserError(f"cannot read --text {args.text}: {e}") from None
    lines = [l for l in lines if args.min_chars <= len(l) <= args.max_chars]
  else:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    ds = tfds.data_source(args.tfds, split=args.split, data_dir=args.data_dir or None)
    lines = [ds[i][args.field] for i in range(len(ds))]
    lines = [l.decode("utf-8", "replace") if isinstance(l, bytes) else str(l) for l in lines]
  order = np.random.default_rng(args.seed).permutation(len(lines))[:args.limit]
  return [lines[i].lower() if args.lowercase else lines[i] for i in order]


def masked_rows(texts, tokenizer, seq_len: int, predictions: int, seed: int):
  _, _, cls, sep, mask = tokenizer.special_ids
  n = len(texts)
  ids = np.zeros((n, seq_len), np.int32)
  attention = np.zeros_like(ids)
  positions = np.zeros((n, predictions), np.int32)
  labels = np.zeros_like(positions)
  weights = np.zeros((n, predictions), np.float32)
  rng = np.random.default_rng(seed)
  for i, text in enumerate(texts):
    row = [cls] + tokenizer.encode(text)[:seq_len - 2] + [sep]
    ids[i, :len(row)] = row
    attention[i, :len(row)] = 1
    k = int(np.clip(round(0.15 * (len(row) - 2)), 1, predictions))
    chosen = rng.permutation(np.arange(1, len(row) - 1))[:k]
    positions[i, :len(chosen)] = chosen
    labels[i, :len(chosen)] = ids[i, chosen]
    weights[i, :len(chosen)] = 1.0
    ids[i, chosen] = mask
  batch = {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": attention,
           "masked_positions": positions}
  return batch, labels, weights


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--init", required=True, help="a pre-training workdir or one of its checkpoints")
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--text", help="a UTF-8 text file, one example per line")
  src.add_argument("--tfds", help="a tfds dataset name, e.g. glue/sst2")
  p.add_argument("--split", default="validation")
  p.add_argument("--field", default="sentence")
  p.add_argument("--data-dir", default="")
  p.add_argument("--min-chars", type=int, default=40, help="--text lines shorter are skipped")
  p.add_argument("--max-chars", type=int, default=200, help="--text lines longer are skipped")
  p.add_argument("--limit", type=int, default=872, help="examples, drawn at random")
  p.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--seq-len", type=int, default=64)
  p.add_argument("--predictions", type=int, default=10)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  try:
    ckpt = read_checkpoint(args.init, key="--init")
    if "mlm" not in ckpt.params:
      raise UserError(f"--init {args.init} has no MLM head (use a pre-training run)")
    texts = read_texts(args)
    if not texts:
      raise UserError("no examples to probe (check --text and --min-chars/--max-chars)")
  except UserError as e:
    print(f"mlm_probe: error: {e}", file=sys.stderr)
    return 2
  batch, labels, weights = masked_rows(texts, ckpt.tokenizer, args.seq_len, args.predictions,
                                       args.seed)
  model = BertForPreTraining(ckpt.config)
  logits = jax.jit(lambda b: model.apply({"params": ckpt.params}, b)["mlm_logits"])(batch)
  hits = (np.asarray(logits).argmax(-1) == labels) * weights
  majority = np.bincount(labels[weights > 0]).argmax()
  print(f"{ckpt.description}: {len(texts)} examples, {int(weights.sum())} masked pieces; "
        f"MLM accuracy {hits.sum() / weights.sum():.4f}, most frequent piece "
        f"({ckpt.tokenizer.id_to_piece(int(majority))!r}) "
        f"{((labels == majority) * weights).sum() / weights.sum():.4f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
