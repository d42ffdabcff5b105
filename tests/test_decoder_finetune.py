"""Fine-tuning a decoder (issue 23): the selector language over decoder parameter names
(freeze, reinit, layer-wise rates, LoRA targets)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbert import decoder as decoder_lib
from jaxbert import lora, optim
from jaxbert import params as P
from jaxbert.errors import UserError


@pytest.fixture(scope="module", params=["gpt-tiny", "llama-tiny"])
def tree(request):
  """(preset, parameter shapes) of a tiny decoder, from shapes alone."""
  cfg = decoder_lib.decoder_preset(request.param)
  model = decoder_lib.DecoderLM(cfg)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
  return cfg, shapes["params"]


def pick(text, names, allowed=P.FREEZE, key="optim.freeze"):
  return P.parse(text, key, allowed).select(names)


def under(names, *prefixes):
  return {n for n in names if n.startswith(prefixes)}


def test_layout_and_shorthands_name_decoder_parts(tree):
  cfg, shapes = tree
  names = P.tree_names(shapes)
  L = cfg.num_layers
  assert P.layout(names) == P.Layout("decoder", "decoder", L)
  embeddings = under(names, "decoder/embeddings/")
  assert {n.split("/")[2] for n in embeddings} == (
      {"tokens", "positions"} if cfg.arch == "gpt2" else {"tokens"})
  assert pick("embeddings", names) == embeddings
  assert pick("decoder", names) == under(names, "decoder/")
  assert not any(n.startswith("lm_head") for n in pick("decoder", names))
  assert pick("bottom:1", names) == embeddings | under(names, "decoder/layer_0/")
  assert pick("layers:1", names) == under(names, "decoder/layer_1/")
  assert pick("pooler", names) == under(names, "decoder/final_norm/")
  reinit = pick("pooler, top:1", names, P.REINIT, "config.reinit")
  assert reinit == under(names, "decoder/final_norm/", f"decoder/layer_{L - 1}/")
  assert pick(r"decoder/layer_\d+/attn/(query|value)/kernel", names) == {
      f"decoder/layer_{i}/attn/{p}/kernel" for i in range(L) for p in ("query", "value")}


def test_family_words_are_refused_on_the_other_family(tree):
  _, shapes = tree
  names = P.tree_names(shapes)
  with pytest.raises(UserError, match="optim.freeze='encoder'.*backbone is 'decoder': use decoder"):
    pick("encoder", names)
  bert = ["bert/embeddings/word_embeddings/embedding", "bert/encoder/layer_0/output/dense/kernel",
          "classifier/kernel"]
  with pytest.raises(UserError, match="backbone is 'bert': use encoder"):
    pick("decoder", bert)


def test_depths_and_layer_rates(tree):
  cfg, shapes = tree
  names = P.tree_names(shapes)
  L = cfg.num_layers
  lay = P.layout(names)
  for n in names:
    want = (0 if "/embeddings/" in n else L + 1 if n.startswith(("decoder/final_norm/", "lm_head"))
            else int(n.split("/")[1].split("_")[1]) + 1)
    assert P.depth(n, lay) == want, n
  labels = optim.param_labels(shapes, {"freeze": "bottom:1"})
  flat = dict(zip(names, jax.tree.leaves(labels)))
  assert {n for n, l in flat.items() if l == optim.FROZEN} == pick("bottom:1", names)
  # Layer-wise rates: an update of ones comes out scaled by decay ** (L + 1 - depth).
  decay = 0.5
  tx, _ = optim.make_optimizer({"lr": 1.0, "decay": "constant", "warmup_steps": 0,
                                "layer_lr_decay": decay, "clip_norm": 0.0,
                                "weight_decay": 0.0}, shapes, 4)
  params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  for n, u in zip(names, jax.tree.leaves(updates)):
    factor = decay ** (L + 1 - P.depth(n, lay))
    np.testing.assert_allclose(np.abs(np.asarray(u)).max(), factor, rtol=1e-3, err_msg=n)


def test_lora_targets_every_projection_and_freezes_the_rest(tree):
  cfg, shapes = tree
  names = P.tree_names(shapes)
  flat = dict(zip(names, (tuple(s.shape) for s in jax.tree.leaves(shapes))))
  kernels = lora.targets(flat, lora.DEFAULT_TARGETS)
  per_layer = {"attn/query", "attn/key", "attn/value", "attn/out", "mlp/up", "mlp/down"} | (
      {"mlp/gate"} if cfg.arch == "llama" else set())
  assert kernels == sorted(f"decoder/layer_{i}/{p}/kernel"
                           for i in range(cfg.num_layers) for p in per_layer)
  assert lora.targets(flat, "top:1") == [k for k in kernels
                                         if k.startswith(f"decoder/layer_{cfg.num_layers - 1}/")]
  with_adapters = names + [k.replace("/kernel", f"/{ab}") for k in kernels for ab in (lora.A, lora.B)]
  frozen = lora.frozen_base(with_adapters)
  # Everything pre-trained, the untied lm_head included; nothing else is left to train.
  assert frozen == set(names)
