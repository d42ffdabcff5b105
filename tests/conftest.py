"""Test session setup: 8 fake CPU devices (for mesh tests) and small shared fixtures.

XLA_FLAGS must be set before jax is imported anywhere, hence here.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent XLA compilation cache per test session, shared by the xdist workers
# and every CLI subprocess a test starts (they inherit the environment): the same tiny
# programs recur across tests, and compiling them is most of a test's time. The
# controller (or a serial run) creates it before the workers start and removes it at
# the end; a cache directory set by the caller is used as is and kept.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile
  _OWN_CACHE = tempfile.mkdtemp(prefix="jaxbert-tests-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
else:
  _OWN_CACHE = None
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


def pytest_unconfigure(config):
  if _OWN_CACHE and not hasattr(config, "workerinput"):  # the controller, or a serial run
    import shutil
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


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


def tiny_pretrain_config(corpus, **train):
  """A 2-layer, 32-wide BERT on the synthetic corpus: compiles in seconds."""
  from jaxbert.defaults import pretrain_config
  c = pretrain_config("tiny")
  c.model.override_preset_sizes = True
  c.model.update(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                 max_position_embeddings=64)
  c.data.update(corpus=corpus, max_seq_len=32, max_predictions_per_seq=5, num_workers=0,
                eval_examples=16, heldout_fraction=0.1)
  c.tokenizer.update(vocab_size=400, train_sentences=5000)
  c.optim.update(lr=1e-3, warmup_steps=2)
  c.train.update(steps=6, batch_size=8, log_every=2, eval_every=3, checkpoint_every=2,
                 progress=False)
  c.train.update(train)
  return c


def final_params(workdir):
  """(step, flat params) of a workdir's newest checkpoint."""
  import orbax.checkpoint as ocp
  from flax import traverse_util
  ckpt = os.path.join(workdir, "checkpoints")
  step = max(int(s) for s in os.listdir(ckpt) if s.isdigit())
  with ocp.StandardCheckpointer() as c:
    state = c.restore(os.path.join(ckpt, str(step), "default"))
  return step, traverse_util.flatten_dict(state["params"])


@pytest.fixture(scope="session")
def reference_run(corpus_file, tmp_path_factory):
  """One uninterrupted tiny pre-training run, shared by the tests that compare against it."""
  import jax
  from jaxbert.run import run
  workdir = str(tmp_path_factory.mktemp("pretrain_ref"))
  metrics = run(tiny_pretrain_config(corpus_file), workdir, devices=jax.devices()[:1])
  return workdir, metrics


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
  """Reliability tests' corpus, task, configs, shared compilation cache and pre-training
  reference (tools/kill_resume.py prepares them), made once for all their files."""
  from reliability_lab import kr  # pylint: disable=g-import-not-at-top
  root = str(tmp_path_factory.mktemp("reliability"))
  env = kr.child_env(os.path.join(root, "jax_cache"))
  paths = kr.prepare(root, env)
  return {"root": root, "env": env, **paths}


@pytest.fixture(scope="session")
def finetune_ref(lab):
  from reliability_lab import kr  # pylint: disable=g-import-not-at-top
  return kr.reference("finetune", lab, lab["root"], lab["env"])
