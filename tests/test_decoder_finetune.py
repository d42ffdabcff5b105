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
  with_adapters = names + [k.replace("/kernel", f"/{ab}")
                           for k in kernels for ab in (lora.A, lora.B)]
  frozen = lora.frozen_base(with_adapters)
  # Everything pre-trained, the untied lm_head included; nothing else is left to train.
  assert frozen == set(names)


# --- last-token classification vs transformers' *ForSequenceClassification ----------


def _hf_classifier(arch, num_labels):
  """A random tiny transformers classifier of the family, and its DecoderConfig."""
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  from jaxbert.hf import decoder_names
  cfg = decoder_lib.decoder_preset("gpt-tiny" if arch == "gpt2" else "llama-tiny",
                                   vocab_size=96, num_layers=2, max_position_embeddings=32)
  hf_cfg = dict(decoder_names.arch_of(cfg).config_to_hf(cfg), num_labels=num_labels,
                pad_token_id=0)
  hf_cfg.pop("architectures")
  cls = (transformers.GPT2ForSequenceClassification if arch == "gpt2"
         else transformers.LlamaForSequenceClassification)
  config_cls = transformers.GPT2Config if arch == "gpt2" else transformers.LlamaConfig
  torch.manual_seed(0)
  hf = cls(config_cls(**hf_cfg)).eval()
  return cfg, hf


def _ours_from_hf(cfg, hf):
  from flax import traverse_util
  from jaxbert.hf import decoder_names
  tensors = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
  rows = decoder_names.arch_of(cfg).rows(cfg)
  flat = decoder_names.to_flax([r for r in rows if r.hf in tensors], tensors)
  flat[("score", "kernel")] = tensors["score.weight"].T.copy()
  return traverse_util.unflatten_dict(flat)


def _padded_batch():
  """Rows of 3..8 tokens, right- and left-padded to 8 (pad id 0 never in the text)."""
  rng = np.random.default_rng(0)
  lengths = [8, 3, 5, 6]
  ids = np.zeros((2 * len(lengths), 8), np.int32)
  mask = np.zeros_like(ids)
  for i, n in enumerate(lengths):
    toks = rng.integers(1, 96, n)
    ids[i, :n], mask[i, :n] = toks, 1            # right padding
    ids[i + 4, 8 - n:], mask[i + 4, 8 - n:] = toks, 1  # the same text, left padding
  return ids, mask


@pytest.mark.parametrize("arch, num_labels", [("gpt2", 3), ("llama", 2), ("llama", 1)])
def test_last_token_classifier_matches_transformers(arch, num_labels, tmp_path):
  import torch
  import transformers
  from safetensors import numpy as st_numpy
  from jaxbert.heads import last_token
  cfg, hf = _hf_classifier(arch, num_labels)
  params = _ours_from_hf(cfg, hf)
  ids, mask = _padded_batch()
  model = last_token.DecoderForSequenceClassification(cfg, num_labels)
  names = set(P.tree_names(jax.eval_shape(
      lambda: model.init(jax.random.key(0), {"input_ids": ids, "attention_mask": mask}))["params"]))
  assert names == set(P.tree_names(params)) and "score/kernel" in names
  assert not any(n.startswith("lm_head") for n in names)
  batch = {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask)}
  ours = np.asarray(model.apply({"params": params}, batch)["logits"])
  positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
  hf_logits = lambda m, **kw: m(input_ids=torch.tensor(ids, dtype=torch.long),
                                attention_mask=torch.tensor(mask, dtype=torch.long),
                                **kw).logits.detach().numpy()
  theirs = hf_logits(hf, position_ids=torch.tensor(positions, dtype=torch.long))
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)
  # Right-padded rows: transformers' own numbering gives the same.
  np.testing.assert_allclose(ours[:4], hf_logits(hf)[:4], atol=1e-4, rtol=1e-4)
  # The same text padded on either side is classified alike.
  np.testing.assert_allclose(ours[:4], ours[4:], atol=1e-4)
  # Written as a folder, transformers' class loads it with equal logits.
  hf_config, tensors = last_token.hf_state(cfg, jax.tree.map(np.asarray, params), num_labels,
                                           pad_id=0)
  folder = tmp_path / "hf"
  folder.mkdir()
  (folder / "config.json").write_text(__import__("json").dumps(hf_config))
  (folder / "model.safetensors").write_bytes(st_numpy.save(tensors, metadata={"format": "pt"}))
  loaded = transformers.AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
  assert type(loaded).__name__ == last_token.HF_ARCHITECTURES[arch]
  again = hf_logits(loaded, position_ids=torch.tensor(positions, dtype=torch.long))
  np.testing.assert_allclose(again, ours, atol=1e-4, rtol=1e-4)


# --- jaxbert finetune from a decoder bundle, with LoRA ------------------------------


@pytest.fixture(scope="module")
def llama_bundle(tmp_path_factory):
  """import-hf of a random tiny Llama (untied lm_head) with a small byte-level BPE."""
  pytest.importorskip("torch")
  import test_decoder_hf as hf_tests
  from jaxbert.hf import import_hf
  import transformers
  root = tmp_path_factory.mktemp("llama_src")
  bpe = hf_tests.bpe_dir.__wrapped__(tmp_path_factory)
  tok = transformers.AutoTokenizer.from_pretrained(bpe)
  model = hf_tests._hf_model("llama", len(tok))  # pylint: disable=protected-access
  model.save_pretrained(str(root / "hf"))
  tok.save_pretrained(str(root / "hf"))
  import_hf(str(root / "hf"), str(root / "bundle"))
  return str(root / "bundle")


@pytest.fixture(scope="module")
def decoder_lora_run(llama_bundle, tmp_path_factory):
  from conftest import final_params  # noqa: F401
  from jaxbert.run import run
  from test_finetune_e2e import tiny_finetune_config, write_task
  task = write_task(str(tmp_path_factory.mktemp("dec_task")))
  config = tiny_finetune_config(llama_bundle, task, lora__rank=4, optim__lr=3e-3)
  workdir = str(tmp_path_factory.mktemp("dec_lora") / "run")
  metrics = run(config, workdir, devices=jax.devices()[:1])
  return config, workdir, metrics


def test_finetune_from_a_decoder_with_lora(llama_bundle, decoder_lora_run):
  import json
  import os
  from flax import traverse_util
  from conftest import final_params
  from jaxbert import decoder_weights
  _, workdir, metrics = decoder_lora_run
  assert 0.0 <= metrics["accuracy"] <= 1.0
  assert len(open(os.path.join(workdir, "predictions.jsonl")).read().splitlines()) == 37
  report = json.load(open(os.path.join(workdir, "handover.json")))
  assert all(p.startswith("decoder/") for p in report["loaded"]["paths"])
  assert "lm_head/kernel" in report["dropped"]["paths"]
  assert {p for p in report["new"]["paths"] if not lora.is_adapter(p)} == {"score/kernel"}
  _, source, _ = decoder_weights.load(llama_bundle)
  source = traverse_util.flatten_dict(source)
  _, after = final_params(workdir)
  base = [k for k in after if k[0] == "decoder" and k[-1] not in (lora.A, lora.B)]
  assert len(base) == len([k for k in source if k[0] == "decoder"])
  for k in base:  # LoRA: the decoder's own weights bitwise as imported
    np.testing.assert_array_equal(np.asarray(after[k]), np.asarray(source[k]), err_msg="/".join(k))
  adapters = [k for k in after if k[-1] == lora.B]
  assert len(adapters) == 2 * 7 and all(np.abs(np.asarray(after[k])).max() > 0 for k in adapters)
  n, total = report["trainable"]["parameters"], report["trainable"]["of"]
  size = lambda keys: sum(int(np.prod(after[k].shape)) for k in keys)
  assert n == size([k for k in after if lora.is_adapter("/".join(k)) or k[0] == "score"])
  assert total == size(after)


def test_exported_classifier_gives_the_runs_predictions(decoder_lora_run, tmp_path):
  import json
  import os
  import torch
  import transformers
  from jaxbert import decoder_weights
  from jaxbert.heads import last_token
  from jaxbert.hf import export_hf
  from jaxbert.run_task import load_run_split, read_run_config
  config, workdir, _ = decoder_lora_run
  report = export_hf(workdir, str(tmp_path / "hf"))
  assert report.architecture == "LlamaForSequenceClassification"
  model = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "hf"))
  assert type(model).__name__ == "LlamaForSequenceClassification"
  assert model.config.id2label == {0: "no", 1: "yes"}
  _, _, tok = decoder_weights.load(config.init)
  dev = load_run_split(workdir, read_run_config(workdir), "dev", last_token.TaskTokenizer(tok))
  ids, mask = dev.arrays["input_ids"], dev.arrays["attention_mask"]
  last = ids[np.arange(len(ids)), mask.sum(1) - 1]
  assert (last != tok.pad_id).all()  # the head reads the text's own last piece
  want = [tok.encode(ex["texts"][0], add_special_tokens=False) for ex in dev.examples]
  assert [list(r[m > 0]) for r, m in zip(ids, mask)] == want
  with torch.no_grad():
    logits = model(input_ids=torch.tensor(ids, dtype=torch.long),
                   attention_mask=torch.tensor(mask, dtype=torch.long)).logits.double().numpy()
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  preds = [json.loads(l) for l in open(os.path.join(workdir, "predictions.jsonl"))]
  np.testing.assert_allclose(probs, [p["probabilities"] for p in preds], atol=2e-4)
