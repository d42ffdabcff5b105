"""The decoder family (jaxbert/decoder.py): cache decoding, per-document masking, the tree."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbert import decoder, params as params_lib

ARCHS = ("gpt-tiny", "llama-tiny")


def small(name, **kw):
  kw = {"vocab_size": 97, "max_position_embeddings": 64, "hidden_size": 32,
        "intermediate_size": 48, **kw}
  return decoder.decoder_preset(name, **kw)


@functools.cache
def model_and_params(name, **kw):
  cfg = small(name, **kw)
  model = decoder.DecoderLM(cfg)
  ids = jnp.zeros((1, 8), jnp.int32)
  return model, model.init(jax.random.key(0), ids)["params"]


def random_ids(shape, seed=1, vocab=97):
  return jax.random.randint(jax.random.key(seed), shape, 1, vocab)


@pytest.mark.parametrize("name", ARCHS)
def test_cache_decode_equals_full_forward(name):
  """Prefill a left-padded batch, then decode token by token: the logits of every real
  token equal those of one full forward pass over that row alone (its own positions)."""
  model, params = model_and_params(name)
  cfg = model.config
  lengths, steps, width = [5, 3], 4, 5
  ids = np.asarray(random_ids((2, width + steps)))
  full = [np.asarray(model.apply({"params": params}, jnp.asarray(ids[i:i + 1, width - n:])))[0]
          for i, n in enumerate(lengths)]
  mask = np.zeros((2, width), bool)
  for i, n in enumerate(lengths):
    mask[i, width - n:] = True
  prompt = np.where(mask, ids[:, :width], 0)
  positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
  cache = decoder.init_cache(cfg, 2, width + steps)
  step = jax.jit(lambda c, x, p, m: model.apply({"params": params}, x, positions=p, token_mask=m,
                                                cache=c))
  logits, cache = step(cache, jnp.asarray(prompt), jnp.asarray(positions), jnp.asarray(mask))
  got = [[np.asarray(logits)[i, width - n:]] for i, n in enumerate(lengths)]
  for s in range(steps):
    pos = np.asarray(lengths)[:, None] + s
    logits, cache = step(cache, jnp.asarray(ids[:, width + s:width + s + 1]), jnp.asarray(pos),
                         jnp.ones((2, 1), bool))
    for i in range(2):
      got[i].append(np.asarray(logits)[i])
  assert int(cache.index) == width + steps
  for i in range(2):
    np.testing.assert_allclose(np.concatenate(got[i]), full[i], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ARCHS)
def test_packed_documents_equal_separate(name):
  """Three documents packed in one row (segment ids, positions restarting) and padding:
  each document's logits equal its logits alone."""
  model, params = model_and_params(name)
  lengths = [6, 3, 4]
  docs = [np.asarray(random_ids((1, n), seed=10 + i))[0] for i, n in enumerate(lengths)]
  row = np.zeros(16, np.int32)
  seg, pos = np.zeros(16, np.int32), np.zeros(16, np.int32)
  start = 0
  for i, d in enumerate(docs):
    row[start:start + len(d)] = d
    seg[start:start + len(d)] = i + 1
    pos[start:start + len(d)] = np.arange(len(d))
    start += len(d)
  packed = np.asarray(model.apply({"params": params}, jnp.asarray(row[None]),
                                  segment_ids=jnp.asarray(seg[None]),
                                  positions=jnp.asarray(pos[None])))[0]
  unmasked = np.asarray(model.apply({"params": params}, jnp.asarray(row[None])))[0]
  start = 0
  for d in docs:
    alone = np.asarray(model.apply({"params": params}, jnp.asarray(d[None])))[0]
    np.testing.assert_allclose(packed[start:start + len(d)], alone, atol=2e-5, rtol=1e-5)
    start += len(d)
  # Without the segment ids the later documents see the earlier ones: the check has teeth.
  assert np.abs(unmasked[lengths[0]:start] - packed[lengths[0]:start]).max() > 1e-3


@pytest.mark.parametrize("name", ARCHS)
def test_tree_names_and_selectors(name):
  model, params = model_and_params(name)
  names = params_lib.tree_names(params)
  lay = params_lib.layout(names)
  assert (lay.backbone, lay.layers, lay.num_layers) == ("decoder", "decoder", model.config.num_layers)
  assert "decoder/embeddings/tokens/embedding" in names
  assert ("lm_head/kernel" in names) == (not model.config.tie_word_embeddings)
  assert ("decoder/embeddings/positions/embedding" in names) == (model.config.arch == "gpt2")
  frozen = params_lib.parse("bottom:1", "optim.freeze", params_lib.FREEZE).select(names)
  assert frozen and all(n.startswith(("decoder/embeddings/", "decoder/layer_0/")) for n in frozen)
  depths = {n: params_lib.depth(n, lay) for n in names}
  assert depths["decoder/final_norm/scale"] == model.config.num_layers + 1
  assert depths["decoder/layer_1/attn/query/kernel"] == 2
  assert sum(np.prod(p.shape) for p in jax.tree.leaves(params)) > decoder.matmul_params(model.config)


def test_bfloat16_close_to_float32():
  model, params = model_and_params("llama-tiny")
  ids = random_ids((2, 12))
  f32 = model.apply({"params": params}, ids)
  bf16_model = decoder.DecoderLM(model.config.replace(dtype="bfloat16"))
  bf16 = jax.jit(bf16_model.apply)({"params": params}, ids)
  assert bf16.dtype == jnp.float32
  err = float(jnp.abs(bf16 - f32).max())
  assert 0 < err < 0.05 * float(jnp.abs(f32).max())


def test_flops_count():
  cfg = decoder.decoder_preset("gpt2")
  # GPT-2 124M: 85M block weights + the 38.6M tied output projection.
  n = decoder.matmul_params(cfg)
  assert n == 12 * (4 * 768 * 768 + 2 * 768 * 3072) + 768 * 50257
  assert decoder.flops_per_token(cfg, 1024) == 3 * (2 * n + 12 * 4 * 1024 * 768)
  llama = decoder.decoder_preset("smollm2-135m")
  assert llama.head_dim == 64 and decoder.matmul_params(llama) < 135e6


def test_config_errors():
  with pytest.raises(ValueError, match="num_kv_heads"):
    small("llama-tiny", num_kv_heads=3)
  with pytest.raises(ValueError, match="unknown decoder preset"):
    decoder.decoder_preset("gpt5")
  cfg = small("gpt-tiny")
  assert decoder.DecoderConfig.from_dict(cfg.to_dict()) == cfg


def test_gguf_rotary_permutation_undone():
  """llama.cpp's converter interleaves the halves of each head's rows (its rotary layout);
  gguf_reader._unpermute restores transformers' order, for query (9 heads) and key (3)."""
  from jaxbert import gguf_reader
  rng = np.random.default_rng(0)
  for heads in (9, 3):
    w = rng.normal(size=(heads * 8, 5)).astype(np.float32)
    # llama.cpp: rows of a head [first half, second half] -> pairs (first[i], second[i]).
    stored = w.reshape(heads, 2, 4, 5).swapaxes(1, 2).reshape(w.shape)
    assert not np.array_equal(stored, w)
    np.testing.assert_array_equal(gguf_reader._unpermute(stored, heads), w)  # pylint: disable=protected-access


def test_import_refuses_unknown_model_type(tmp_path):
  import json
  from jaxbert.errors import UserError
  from jaxbert.hf import import_hf
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "mistral"}))
  with pytest.raises(UserError, match="model_type 'mistral' is not one jaxbert imports"):
    import_hf(str(tmp_path), str(tmp_path / "out"))


def test_remat_same_loss_and_gradients_with_dropout():
  grads = []
  for remat in (False, True):
    model, params = model_and_params("gpt-tiny", remat=remat, dropout_rate=0.1)
    ids = random_ids((2, 8))
    loss = lambda p, m=model: m.apply({"params": p}, ids, deterministic=False,
                                      rngs={"dropout": jax.random.key(1)}).mean()
    grads.append(jax.jit(jax.value_and_grad(loss))(params))
  (v0, g0), (v1, g1) = grads
  np.testing.assert_allclose(v0, v1, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, atol=1e-6)
