"""Test session setup: 8 fake CPU devices (for mesh tests) and small shared fixtures.

XLA_FLAGS must be set before jax is imported anywhere, hence here.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


def write_corpus(path, num_docs=120, seed=0):
  """Synthetic English-like documents: each has a topic, so NSP is learnable."""
  rng = np.random.default_rng(seed)
  syll = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "be", "da", "fe", "go", "hu", "ji"]
  words = sorted({"".join(rng.choice(syll, rng.integers(1, 4))) for _ in range(400)})
  common = ["the", "a", "of", "and", "to", "is", "in", "it", "that", "was"]
  lines = []
  for _ in range(num_docs):
    topic = rng.choice(words, 12, replace=False)
    for _ in range(rng.integers(3, 9)):
      sents = []
      for _ in range(rng.integers(1, 4)):
        n = rng.integers(4, 14)
        toks = [rng.choice(common) if rng.random() < 0.4 else
                (rng.choice(topic) if rng.random() < 0.6 else rng.choice(words)) for _ in range(n)]
        sents.append(" ".join(toks).capitalize() + ".")
      lines.append(" ".join(sents))
    lines.append("")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory):
  return write_corpus(str(tmp_path_factory.mktemp("corpus") / "corpus.txt"))


def shared_data_or_skip(*parts):
  path = os.path.join(SHARED_DATA, *parts)
  if not os.path.exists(path):
    pytest.skip(f"{path} not present (real data lives in ../shared/data)")
  return path
