"""`jaxbert embed` (jaxbert/embed.py): sentence vectors from a bundle, against a plain forward."""

import os

import jax
import numpy as np
import pytest

from hf_fakes import H, POS, hf_checkpoint
from jaxbert import model as model_lib
from jaxbert.checkpoint import load_bundle
from jaxbert.embed import bucket_lengths, embed_lines
from jaxbert.errors import UserError
from jaxbert.hf import import_hf

def test_bucket_lengths():
  assert bucket_lengths(128) == [16, 32, 64, 128]
  assert bucket_lengths(100) == [16, 32, 64, 100]
  assert bucket_lengths(8) == [8]


@pytest.fixture
def tiny_bundle(tmp_path):
  src, _ = hf_checkpoint(tmp_path, "BertModel", "")
  import_hf(src, str(tmp_path / "bundle"))
  return str(tmp_path / "bundle")


def _reference(bundle, texts, length=POS):
  """Per text, (sequence output (T, H) over its real tokens, pooled (H,)), from one batch
  padded to `length`: another padding than embed's buckets, and no sorting."""
  params, cfg, tok, _ = load_bundle(bundle)
  rows = [[tok.cls_id] + tok.encode(text)[:30] + [tok.sep_id] for text in texts]
  ids = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    ids[i, :len(r)] = r
  o = jax.jit(model_lib.BertEncoderOnly(cfg).apply)(
      {"params": params}, {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int32)})
  return [(np.asarray(o["sequence_output"][i, :len(r)]), np.asarray(o["pooled_output"][i]))
          for i, r in enumerate(rows)]


def test_embed_lines_matches_reference_forward(tiny_bundle, tmp_path):
  long_line = " ".join(["the cat sat on the mat ."] * 10)  # > 32 pieces: truncated
  lines = ["the cat sat on the mat .", "", "hello world", "a dog is running in the park !",
           long_line, "hello world", "cat"]
  data = "\n".join(lines).encode() + b"\nbad \xff\xfe bytes\r\n"
  (tmp_path / "in.txt").write_bytes(data)
  texts = lines + ["bad \ufffd\ufffd bytes"]
  ref = _reference(tiny_bundle, texts)
  for pooling in ("mean", "cls", "pooler"):
    out = tmp_path / f"{pooling}.npy"
    report = embed_lines(tiny_bundle, str(tmp_path / "in.txt"), str(out), pooling=pooling,
                         batch_size=3, max_seq_len=32, progress=False)
    vectors = np.load(out)
    assert vectors.shape == (len(texts), H) and vectors.dtype == np.float32
    assert (report.num_lines, report.empty_lines, report.truncated_lines,
            report.undecodable_lines) == (8, 1, 1, 1)
    want = np.stack([seq.mean(0) if pooling == "mean" else seq[0] if pooling == "cls" else pooled
                     for seq, pooled in ref])
    np.testing.assert_allclose(vectors, want, atol=1e-5)
    # The same line in another batch (and another row position) gives the same vector.
    np.testing.assert_allclose(vectors[2], vectors[5], atol=1e-5)


def test_embed_mean_pooling_ignores_padding_across_buckets(tiny_bundle, tmp_path):
  (tmp_path / "a.txt").write_text("hello world\n")
  (tmp_path / "b.txt").write_text("\n".join(["hello world", "the cat sat on the mat"] * 5) + "\n")
  embed_lines(tiny_bundle, str(tmp_path / "a.txt"), str(tmp_path / "a.npy"), pooling="mean",
              batch_size=2, max_seq_len=16, progress=False)
  embed_lines(tiny_bundle, str(tmp_path / "b.txt"), str(tmp_path / "b.npy"), pooling="mean",
              batch_size=4, max_seq_len=64, progress=False)
  a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
  np.testing.assert_allclose(a[0], b[0], atol=1e-5)
  np.testing.assert_allclose(b[::2], np.repeat(a, 5, axis=0), atol=1e-5)


def test_embed_errors(tiny_bundle, tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    embed_lines(tiny_bundle, str(tmp_path / "missing.txt"), str(tmp_path / "o.npy"))
  (tmp_path / "in.txt").write_text("hello\n")
  with pytest.raises(UserError, match="max_position_embeddings"):
    embed_lines(tiny_bundle, str(tmp_path / "in.txt"), str(tmp_path / "o.npy"),
                max_seq_len=POS + 1)
  with pytest.raises(UserError, match="pooling"):
    embed_lines(tiny_bundle, str(tmp_path / "in.txt"), str(tmp_path / "o.npy"), pooling="max")
  assert not os.path.exists(tmp_path / "o.npy")
