"""LoRA (jaxbert/lora.py) on a tiny encoder: adapters through the freeze partition."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from conftest import final_params
from jaxbert import lora, optim
from jaxbert import model as model_lib
from jaxbert.config import ConfigDict
from jaxbert.errors import UserError
from jaxbert.run import run
from jaxbert.step import new_state
from test_finetune_e2e import tiny_finetune_config, write_task

DEVICES = jax.devices()[:1]
RANK = 4


def _tiny_classifier():
  cfg = model_lib.BertConfig(vocab_size=64, hidden_size=16, num_layers=2, num_heads=2,
                             intermediate_size=32, max_position_embeddings=16)
  return model_lib.BertForSequenceClassification(cfg, 2), model_lib.dummy_batch(cfg, 2, 8)


def _lora_config(rank=RANK, targets=lora.DEFAULT_TARGETS, alpha=8.0):
  return ConfigDict({"lora": {"rank": rank, "alpha": alpha, "targets": targets}})


def _names(tree):
  return ["/".join(k) for k in traverse_util.flatten_dict(tree)]


def test_without_rank_the_model_is_untouched():
  model, _ = _tiny_classifier()
  assert lora.wrap(model, _lora_config(rank=0)) is model
  assert lora.wrap(model, ConfigDict({"task": "finetune"})) is model


def test_optimizer_state_only_for_adapters_and_the_new_head():
  model, batch = _tiny_classifier()
  wrapped = lora.wrap(model, _lora_config())
  shapes = jax.eval_shape(lambda: wrapped.init({"params": jax.random.key(0)}, batch))["params"]
  names = _names(shapes)
  adapters = [n for n in names if lora.is_adapter(n)]
  # One A and one B beside each of the 6 projection kernels of each of the 2 layers.
  assert len(adapters) == 2 * 6 * 2
  assert all(n.startswith("bert/encoder/layer_") for n in adapters)
  tx, _ = optim.make_optimizer({"lr": 1e-3}, shapes, 10)
  state = jax.eval_shape(lambda: new_state(jax.tree.map(jnp.zeros_like, shapes), tx))
  tensors = [("/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path), leaf.shape)
             for path, leaf in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]]
  held = {p for p, shape in tensors if shape}  # scalars are counters
  trainable = set(adapters) | {"classifier/kernel", "classifier/bias"}
  # Adam's mu and nu for exactly the adapters and the head, nothing for the base model.
  assert held and all(any(p.endswith(t) for t in trainable) for p in held), sorted(held)
  for t in trainable:
    assert sum(p.endswith(t) for p in held) == 2, t
  n, total = optim.trainable_count(shapes)
  sizes = {name: int(np.prod(leaf.shape)) for name, leaf in
           zip(names, jax.tree.leaves(shapes))}
  assert n == sum(sizes[t] for t in trainable) and total == sum(sizes.values())


def test_merge_starts_at_the_base_and_agrees_between_numpy_and_jax():
  model, batch = _tiny_classifier()
  wrapped = lora.wrap(model, _lora_config())
  params = wrapped.init({"params": jax.random.key(1)}, batch)["params"]
  base = {k: v for k, v in traverse_util.flatten_dict(params).items()
          if k[-1] not in (lora.A, lora.B)}
  merged = traverse_util.flatten_dict(lora.merge(params, 2.0))
  assert merged.keys() == base.keys()
  for k in base:  # B starts at zero: the adapted model starts as the pre-trained one
    np.testing.assert_array_equal(np.asarray(merged[k]), np.asarray(base[k]))
  flat = traverse_util.flatten_dict(params)
  key = ("bert", "encoder", "layer_1", "attention", "query")
  flat[key + (lora.B,)] = jax.random.normal(jax.random.key(2), flat[key + (lora.B,)].shape)
  params = traverse_util.unflatten_dict(flat)
  on_jax = traverse_util.flatten_dict(lora.merge(params, 2.0))
  on_numpy = traverse_util.flatten_dict(lora.merge(jax.tree.map(np.asarray, params), 2.0))
  want = np.asarray(flat[key + ("kernel",)]) + 2.0 * (
      np.asarray(flat[key + (lora.A,)]) @ np.asarray(flat[key + (lora.B,)]))
  np.testing.assert_allclose(np.asarray(on_jax[key + ("kernel",)]), want, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(on_numpy[key + ("kernel",)], want, rtol=1e-6, atol=1e-6)
  out = wrapped.apply({"params": params}, batch)["logits"]
  ref = model.apply({"params": lora.merge(params, wrapped.factor)}, batch)["logits"]
  np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))


@pytest.mark.parametrize("targets, problem", [
    ("none", "at least one kernel"),
    (r"bert/embeddings/.*", "no 2-D kernel"),
    (r".*/attention/querry/kernel", "matches no parameter"),
    ("pooler", "does not apply here"),
])
def test_targets_must_select_a_kernel(targets, problem):
  model, batch = _tiny_classifier()
  wrapped = lora.wrap(model, _lora_config(targets=targets))
  with pytest.raises(UserError, match=f"config.lora.targets=.*{problem}"):
    jax.eval_shape(lambda: wrapped.init({"params": jax.random.key(0)}, batch))


def test_config_checks_at_load(tmp_path):
  from jaxbert.validate import validate
  c = tiny_finetune_config("", str(tmp_path))
  c.tokenizer.path = str(tmp_path)
  c.lora.rank = 8
  with pytest.raises(UserError, match="config.lora.rank=8 adapts a pre-trained model"):
    validate(c)
  c.lora.rank = -1
  with pytest.raises(UserError, match="lora.rank=-1 is invalid"):
    validate(c)


# --- end to end: a LoRA fine-tuning run from a tiny pre-training run -----------------


@pytest.fixture(scope="module")
def lora_run(reference_run, tmp_path_factory):
  pre_dir, _ = reference_run
  task = write_task(str(tmp_path_factory.mktemp("lora_task")))
  config = tiny_finetune_config(pre_dir, task, lora__rank=RANK, lora__alpha=8.0,
                                optim__lr=3e-3)
  workdir = str(tmp_path_factory.mktemp("lora") / "run")
  metrics = run(config, workdir, devices=DEVICES)
  return pre_dir, config, workdir, metrics


def test_base_weights_bitwise_unchanged_and_adapters_trained(lora_run):
  pre_dir, _, workdir, _ = lora_run
  _, before = final_params(pre_dir)
  step, after = final_params(workdir)
  assert step == 12
  base = [k for k in after if k[0] == "bert" and k[-1] not in (lora.A, lora.B)]
  assert len(base) == len([k for k in before if k[0] == "bert"])
  for k in base:
    np.testing.assert_array_equal(after[k], before[k], err_msg="/".join(k))
  bs = [k for k in after if k[-1] == lora.B]
  assert len(bs) == 12 and all(np.abs(after[k]).max() > 0 for k in bs)


def test_trainable_fraction_is_reported(lora_run):
  _, _, workdir, _ = lora_run
  _, params = final_params(workdir)
  size = lambda keys: sum(int(np.prod(params[k].shape)) for k in keys)
  trainable = [k for k in params if k[-1] in (lora.A, lora.B) or k[0] == "classifier"]
  report = json.load(open(os.path.join(workdir, "handover.json")))
  assert report["trainable"]["parameters"] == size(trainable)
  assert report["trainable"]["of"] == size(params)
  assert 0 < report["trainable"]["fraction"] < 0.5
  assert any(p.endswith("/lora_a") for p in report["new"]["paths"])


def test_adapters_alone_lower_the_loss():
  """With the head frozen too, only the adapters can fit a batch: they must."""
  from jaxbert import heads
  from jaxbert.step import skip_nonfinite, train_step
  model, batch = _tiny_classifier()
  rng = np.random.default_rng(0)
  batch = dict(batch, input_ids=jnp.asarray(rng.integers(1, 64, (8, 8)), jnp.int32),
               token_type_ids=jnp.zeros((8, 8), jnp.int32),
               attention_mask=jnp.ones((8, 8), jnp.int32),
               label=jnp.asarray(rng.integers(0, 2, 8), jnp.int32))
  wrapped = lora.wrap(model, _lora_config())
  params = wrapped.init({"params": jax.random.key(0)}, batch)["params"]
  # A frozen head of unit scale (not the 0.02 of a fresh one), so the adapters' changes show.
  params["classifier"]["kernel"] = params["classifier"]["kernel"] * 50.0
  head = heads.get("classification")
  loss_fn = lambda p, b, r: head.loss(wrapped.apply({"params": p}, b, deterministic=False,
                                                    rngs={"dropout": r}), b)
  tx, _ = optim.make_optimizer({"lr": 1e-2, "warmup_steps": 1, "freeze": "classifier/.*"},
                               params, 60)
  step = jax.jit(lambda s, r: train_step(s, batch, r, loss_fn=loss_fn, tx=skip_nonfinite(tx)))
  state, losses = new_state(params, tx), []
  for _ in range(60):
    state, metrics = step(state, jax.random.key(1))
    losses.append(float(metrics["loss"]))
  assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses
  flat, start = traverse_util.flatten_dict(state.params), traverse_util.flatten_dict(params)
  for k in flat:  # everything but the adapters kept bitwise
    if k[-1] not in (lora.A, lora.B):
      np.testing.assert_array_equal(np.asarray(flat[k]), np.asarray(start[k]), err_msg="/".join(k))


def test_export_and_predict_use_the_merged_weights(lora_run, tmp_path):
  from safetensors.numpy import load_file
  from jaxbert.handover import read_checkpoint
  from jaxbert.hf import export_hf
  _, config, workdir, _ = lora_run
  _, params = final_params(workdir)
  params = {k: np.asarray(v) for k, v in params.items()}  # merged on the host, as exports are
  merged = traverse_util.flatten_dict(lora.merge(traverse_util.unflatten_dict(params),
                                                 config.lora.alpha / config.lora.rank))
  ckpt = read_checkpoint(workdir)
  got = traverse_util.flatten_dict(ckpt.params)
  assert got.keys() == merged.keys()
  for k in merged:
    np.testing.assert_array_equal(got[k], merged[k], err_msg="/".join(k))
  query = ("bert", "encoder", "layer_0", "attention", "query", "kernel")
  assert np.abs(merged[query] - params[query]).max() > 0  # the adapter moved it
  export_hf(workdir, str(tmp_path / "hf"))
  tensors = load_file(str(tmp_path / "hf" / "model.safetensors"))
  np.testing.assert_array_equal(tensors["bert.encoder.layer.0.attention.self.query.weight"],
                                merged[query].T)
  assert not any("lora" in name for name in tensors)


def test_resume_is_bitwise(lora_run, tmp_path):
  _, config, workdir, _ = lora_run
  copy = str(tmp_path / "resumed")
  shutil.copytree(workdir, copy)
  ckpts = os.path.join(copy, "checkpoints")
  steps = sorted(int(s) for s in os.listdir(ckpts) if s.isdigit())
  shutil.rmtree(os.path.join(ckpts, str(steps[-1])))  # back to the one before the end
  run(config, copy, devices=DEVICES)
  _, want = final_params(workdir)
  step, got = final_params(copy)
  assert step == 12 and got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg="/".join(k))
