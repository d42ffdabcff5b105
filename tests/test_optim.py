"""Tests for jaxbert.optim on a small fake BERT parameter tree (no model needed)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxbert import optim
from jaxbert.errors import UserError

H, FF, V, L = 4, 8, 11, 2


def _dense(rng, n_in, n_out):
  return {"kernel": rng.normal(size=(n_in, n_out)).astype(np.float32),
          "bias": rng.normal(size=(n_out,)).astype(np.float32)}


def _ln(rng):
  return {"scale": (1 + 0.1 * rng.normal(size=(H,))).astype(np.float32),
          "bias": (0.1 * rng.normal(size=(H,))).astype(np.float32)}


def fake_params(seed=0, num_layers=L):
  """A BERT-shaped parameter tree: embeddings, `num_layers` layers, pooler, heads."""
  rng = np.random.default_rng(seed)
  emb = lambda n: {"embedding": rng.normal(size=(n, H)).astype(np.float32)}
  layers = {
      f"layer_{i}": {
          "attention": {
              "query": _dense(rng, H, H), "key": _dense(rng, H, H), "value": _dense(rng, H, H),
              "output": {"dense": _dense(rng, H, H), "LayerNorm": _ln(rng)},
          },
          "intermediate": {"dense": _dense(rng, H, FF)},
          "output": {"dense": _dense(rng, FF, H), "LayerNorm": _ln(rng)},
      } for i in range(num_layers)
  }
  params = {
      "bert": {
          "embeddings": {"word_embeddings": emb(V), "position_embeddings": emb(6),
                         "token_type_embeddings": emb(2), "LayerNorm": _ln(rng)},
          "encoder": layers,
          "pooler": {"dense": _dense(rng, H, H)},
      },
      "mlm": {"transform": {"dense": _dense(rng, H, H), "LayerNorm": _ln(rng)},
              "bias": rng.normal(size=(V,)).astype(np.float32)},
      "nsp": {"dense": _dense(rng, H, 2)},
  }
  return jax.tree.map(jnp.asarray, params)


def fake_grads(params, seed):
  keys = jax.random.split(jax.random.key(seed), len(jax.tree.leaves(params)))
  leaves, treedef = jax.tree.flatten(params)
  return treedef.unflatten([jax.random.normal(k, p.shape) for k, p in zip(keys, leaves)])


def flat(tree):
  """{"a/b/c": leaf} for readable assertions."""
  return {"/".join(optim._names(p)): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def cfg(**kw):
  c = optim.default_optim_config()
  c.update(kw)
  return c


def run_steps(config, params, grads_list, total_steps=10):
  """Applies one jitted optimizer update per gradient tree; returns (params, state)."""
  tx, _ = optim.make_optimizer(config, params, total_steps)

  @jax.jit
  def step(p, s, g):
    updates, s = tx.update(g, s, p)
    return optax.apply_updates(p, updates), s

  state = tx.init(params)
  for g in grads_list:
    params, state = step(params, state, g)
  return params, state


# ----------------------------------------------------------------------------- decay mask


def test_weight_decay_mask_excludes_exactly_layernorm_and_bias():
  mask = flat(optim.weight_decay_mask(fake_params()))
  decayed = {k for k, v in mask.items() if v}
  expected = {k for k in mask if k.endswith("/kernel") or k.endswith("/embedding")}
  assert decayed == expected
  assert "bert/embeddings/word_embeddings/embedding" in decayed
  assert not mask["mlm/bias"]
  assert not mask["bert/encoder/layer_1/output/LayerNorm/scale"]
  assert not mask["bert/encoder/layer_0/attention/query/bias"]


# ----------------------------------------------------------------------------- schedule


def test_linear_schedule_warmup_and_end():
  s = optim.make_schedule(cfg(lr=1e-3, warmup_steps=10, decay="linear"), 110)
  np.testing.assert_allclose([s(0), s(5), s(10), s(60), s(110), s(200)],
                             [0, 5e-4, 1e-3, 5e-4, 0, 0], atol=1e-9)


def test_cosine_schedule_and_end_fraction_and_warmup_fraction():
  c = cfg(lr=1.0, warmup_steps=0, warmup_fraction=0.1, decay="cosine", end_lr_fraction=0.1)
  s = optim.make_schedule(c, 100)
  np.testing.assert_allclose([s(0), s(10), s(55), s(100), s(150)], [0, 1, 0.55, 0.1, 0.1], atol=1e-6)
  lin = optim.make_schedule(cfg(lr=1.0, warmup_fraction=0.1, decay="linear", end_lr_fraction=0.1), 100)
  # Cosine stays above linear in the first half of the decay and below it in the second.
  assert s(30) > lin(30) and s(80) < lin(80)
  np.testing.assert_allclose(lin(55), s(55), atol=1e-6)


def test_constant_schedule_and_warmup_steps_override_fraction():
  s = optim.make_schedule(cfg(lr=2.0, warmup_steps=4, warmup_fraction=0.5, decay="constant"), 100)
  np.testing.assert_allclose([s(0), s(2), s(4), s(99), s(1000)], [0, 1, 2, 2, 2])


def test_schedule_rejects_warmup_past_end():
  with pytest.raises(UserError, match="warm-up"):
    optim.make_schedule(cfg(warmup_steps=100), 50)


@pytest.mark.parametrize("key,value", [("name", "sgd"), ("decay", "step"), ("lr", 0.0),
                                       ("accum_steps", 0), ("layer_lr_decay", 1.5)])
def test_bad_config_values_name_the_key(key, value):
  with pytest.raises(UserError, match=f"optim.{key}"):
    optim.make_optimizer(cfg(**{key: value}), fake_params(), 10)


def test_unknown_key_is_a_user_error():
  with pytest.raises(UserError, match="optim.learning_rate"):
    optim.make_optimizer({"learning_rate": 1.0}, fake_params(), 10)


# ----------------------------------------------------------------------------- freezing


def test_labels_and_trainable_count():
  params = fake_params()
  labels = flat(optim.param_labels(params, cfg(freeze="bottom:1")))
  assert labels["bert/embeddings/LayerNorm/scale"] == "frozen"
  assert labels["bert/encoder/layer_0/intermediate/dense/kernel"] == "frozen"
  assert labels["bert/encoder/layer_1/intermediate/dense/kernel"] == "depth_2"
  assert labels["bert/pooler/dense/kernel"] == "depth_3"
  assert labels["nsp/dense/bias"] == "depth_3"

  sizes = {k: v.size for k, v in flat(params).items()}
  total = sum(sizes.values())
  heads = sum(n for k, n in sizes.items() if not k.startswith("bert/"))
  assert optim.trainable_count(params, "none") == (total, total)
  assert optim.trainable_count(params, "encoder") == (heads, total)
  shapes = jax.eval_shape(lambda: params)
  emb = sum(n for k, n in sizes.items() if k.startswith("bert/embeddings/"))
  assert optim.trainable_count(shapes, "embeddings") == (total - emb, total)


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_freeze_encoder_keeps_bert_bitwise_and_trains_heads(name):
  params = fake_params()
  c = cfg(name=name, lr=1e-2, warmup_steps=1, weight_decay=0.1, freeze="encoder", layer_lr_decay=0.8)
  new, state = run_steps(c, params, [fake_grads(params, s) for s in range(3)])
  before, after = flat(params), flat(new)
  for k in before:
    if k.startswith("bert/"):
      assert np.array_equal(before[k], after[k]), k
    else:
      assert not np.allclose(before[k], after[k]), k
  # Frozen leaves keep no optimizer state: Adam's mu and nu cover the heads only.
  trainable, total = optim.trainable_count(params, "encoder")
  state_floats = sum(x.size for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating))
  assert state_floats == 2 * trainable < 2 * total


def test_freeze_bottom_1_and_layers_list():
  params = fake_params()
  grads = [fake_grads(params, s) for s in range(2)]
  for freeze, frozen_prefixes in [("bottom:1", ("bert/embeddings/", "bert/encoder/layer_0/")),
                                  ("layers:1", ("bert/encoder/layer_1/",)),
                                  ("embeddings", ("bert/embeddings/",))]:
    new, _ = run_steps(cfg(lr=1e-2, warmup_steps=1, freeze=freeze), params, grads)
    before, after = flat(params), flat(new)
    for k in before:
      assert np.array_equal(before[k], after[k]) == k.startswith(frozen_prefixes), (freeze, k)


@pytest.mark.parametrize("bad", ["bottom", "bottom:3", "bottom:x", "layers:", "layers:0,2",
                                 "layers:a", "decoder", "top:1"])
def test_bad_freeze_string_is_a_user_error(bad):
  with pytest.raises(UserError, match=r"optim\.freeze.*bottom:K.*layers:I,J"):
    optim.make_optimizer(cfg(freeze=bad), fake_params(), 10)
  with pytest.raises(UserError, match=r"optim\.freeze"):
    optim.trainable_count(fake_params(), bad)


def test_freeze_needs_the_bert_params_tree():
  # The whole `variables` dict instead of `variables["params"]` would freeze nothing.
  with pytest.raises(ValueError, match=r"variables\['params'\]"):
    optim.make_optimizer(cfg(freeze="encoder"), {"params": fake_params()}, 10)
  # Without freezing or layer decay any tree works.
  tx, _ = optim.make_optimizer(cfg(), {"w": jnp.ones((2, 2))}, 10)
  tx.init({"w": jnp.ones((2, 2))})


# ----------------------------------------------------------------------------- chain equivalence


@pytest.mark.parametrize("name,reference", [
    ("adamw", lambda lr, m: optax.adamw(lr, 0.9, 0.999, 1e-6, weight_decay=0.01, mask=m)),
    ("lamb", lambda lr, m: optax.lamb(lr, 0.9, 0.999, 1e-6, weight_decay=0.01, mask=m)),
])
def test_matches_clipped_optax_reference_optimizer(name, reference):
  params = fake_params()
  # Gradient norms ~20x, 0.2x and 60x the clip norm, so clipping changes the moments.
  grads = [jax.tree.map(lambda x: f * x, fake_grads(params, s)) for s, f in enumerate([1, 0.01, 3])]
  c = cfg(name=name, lr=1e-2, warmup_steps=2, clip_norm=1.0)
  ours, _ = run_steps(c, params, grads)

  def run_reference(tx):
    p, state, update = params, tx.init(params), jax.jit(tx.update)
    for g in grads:
      u, state = update(g, state, p)
      p = optax.apply_updates(p, u)
    return p

  base = reference(optim.make_schedule(c, 10), optim.weight_decay_mask)
  theirs = run_reference(optax.chain(optax.clip_by_global_norm(1.0), base))
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  unclipped = run_reference(base)
  assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(unclipped)))


def test_clipping_ignores_frozen_gradients():
  params = fake_params()
  grads = [fake_grads(params, s) for s in range(2)]
  loud = [{**g, "bert": jax.tree.map(lambda x: 1e3 * x, g["bert"])} for g in grads]
  c = cfg(lr=1e-2, warmup_steps=1, clip_norm=0.1, freeze="encoder")
  quiet_run, _ = run_steps(c, params, grads)
  loud_run, _ = run_steps(c, params, loud)
  for a, b in zip(jax.tree.leaves(quiet_run), jax.tree.leaves(loud_run)):
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- accumulation


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_accumulation_equals_one_step_on_the_mean_gradient(name):
  params = fake_params()
  grads = [jax.tree.map(lambda x: f * x, fake_grads(params, s)) for s, f in enumerate([1, 1, 3, 3])]
  mean = [jax.tree.map(lambda a, b: (a + b) / 2, grads[0], grads[1]),
          jax.tree.map(lambda a, b: (a + b) / 2, grads[2], grads[3])]
  # Clipping must see the mean gradient, as with one big batch: the first mean is just
  # under the clip norm (a summed gradient would be clipped), the second is well over it.
  trainable = {**mean[0], "bert": {k: v for k, v in mean[0]["bert"].items() if k != "embeddings"}}
  clip = 1.2 * float(optax.tree.norm(trainable))
  common = dict(name=name, lr=1e-2, warmup_steps=2, weight_decay=0.1, clip_norm=clip,
                freeze="embeddings", layer_lr_decay=0.7)
  tx, schedule = optim.make_optimizer(cfg(accum_steps=2, **common), params, 10)
  update = jax.jit(tx.update)
  state = tx.init(params)
  accumulated = params
  for i, g in enumerate(grads):
    updates, state = update(g, state, accumulated)
    if i % 2 == 0:  # Micro-steps between optimizer updates change nothing.
      assert all(not np.any(u) for u in jax.tree.leaves(updates))
    accumulated = optax.apply_updates(accumulated, updates)
  # Two optimizer updates in both runs: the schedule counts updates, not micro-steps.
  single, _ = run_steps(cfg(accum_steps=1, **common), params, mean)
  for a, b in zip(jax.tree.leaves(accumulated), jax.tree.leaves(single)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert schedule(1) > 0  # The second update had a nonzero rate, so the check is not vacuous.
  # The counters are int32 scalars (a plain, jit-able, shardable state).
  counters = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.integer)]
  assert counters and all(x.dtype == jnp.int32 and x.shape == () for x in counters)


# ----------------------------------------------------------------------------- layer lr decay


def test_layer_lr_decay_orders_updates_by_depth():
  params = fake_params()
  g = jax.tree.map(jnp.ones_like, params)
  decay, lr = 0.5, 1e-2
  c = cfg(lr=lr, warmup_fraction=0.0, decay="constant", weight_decay=0.0, clip_norm=0,
          layer_lr_decay=decay, eps=1e-12)
  tx, _ = optim.make_optimizer(c, params, 10)
  updates, _ = tx.update(g, tx.init(params), params)
  # Adam's first bias-corrected step is -lr * sign(g): the magnitude is the per-depth rate.
  expected = {"bert/embeddings/": lr * decay**3, "bert/encoder/layer_0/": lr * decay**2,
              "bert/encoder/layer_1/": lr * decay, "bert/pooler/": lr, "mlm/": lr, "nsp/": lr}
  for k, u in flat(updates).items():
    (want,) = [v for prefix, v in expected.items() if k.startswith(prefix)]
    np.testing.assert_allclose(np.abs(u), want, rtol=1e-5, err_msg=k)


def test_layer_lr_decay_rejects_unknown_bert_subtree():
  params = fake_params()
  params["bert"]["extra"] = {"kernel": jnp.ones((2, 2))}
  with pytest.raises(ValueError, match="bert/extra/kernel"):
    optim.make_optimizer(cfg(layer_lr_decay=0.9), params, 10)


# ----------------------------------------------------------------------------- jit


def test_jitted_step_with_donated_state_matches_eager():
  params = fake_params()
  grads = [fake_grads(params, s) for s in range(4)]
  c = cfg(lr=1e-2, warmup_steps=1, accum_steps=2, freeze="bottom:1", layer_lr_decay=0.9)
  tx, _ = optim.make_optimizer(c, params, 10)

  @jax.jit
  def init(p):
    return tx.init(p)

  def step(p, s, g):
    updates, s = tx.update(g, s, p)
    return optax.apply_updates(p, updates), s

  jitted = jax.jit(step, donate_argnums=(0, 1))
  p, s = jax.tree.map(jnp.copy, params), init(params)
  for g in grads:
    old_state = s
    p, s = jitted(p, s, g)
  assert all(x.is_deleted() for x in jax.tree.leaves(old_state))
  eager, _ = run_steps(c, params, grads)
  for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(eager)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
