"""Tiny random BERT checkpoints in Hugging Face's layout, for test_hf and test_embed.

Written with safetensors' numpy API and named by hand (not from jaxbert's own table), so
a wrong name or a missing transpose in the converter shows up as a failure.
"""

import json
import os

import numpy as np
from flax import traverse_util
from safetensors.numpy import save_file

from jaxbert import model as model_lib

H, LAYERS, HEADS, INTER, POS = 16, 2, 2, 32, 64
WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "is", "running", "in", "park", ".", ",",
         "!", "?", "hello", "world"]
VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
         + list("bcdefghjklmnopqrstuvwxyz") + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"])
V = len(VOCAB)
ARCH_HEADS = {"BertForPreTraining": ("mlm", "nsp"), "BertModel": (), "BertForMaskedLM": ("mlm",),
              "BertForSequenceClassification": ("classifier",),
              "BertForTokenClassification": ("classifier",),
              "BertForQuestionAnswering": ("qa",)}


def hf_tensors(prefix="bert.", heads=("mlm", "nsp"), pooler=True, seed=0):
  """A random state dict in Hugging Face's BERT layout (PyTorch (out, in) Linear weights)."""
  rng = np.random.default_rng(seed)
  rnd = lambda *shape: rng.normal(0, 0.2, shape).astype(np.float32)
  t = {}

  def linear(name, n_out, n_in):
    t[f"{name}.weight"], t[f"{name}.bias"] = rnd(n_out, n_in), rnd(n_out)

  def layer_norm(name, n=H):
    t[f"{name}.weight"], t[f"{name}.bias"] = 1 + rnd(n), rnd(n)

  p = prefix
  t[p + "embeddings.word_embeddings.weight"] = rnd(V, H)
  t[p + "embeddings.position_embeddings.weight"] = rnd(POS, H)
  t[p + "embeddings.token_type_embeddings.weight"] = rnd(2, H)
  layer_norm(p + "embeddings.LayerNorm")
  t[p + "embeddings.position_ids"] = np.arange(POS, dtype=np.int64)[None]
  for i in range(LAYERS):
    q = f"{p}encoder.layer.{i}."
    for name in ("query", "key", "value"):
      linear(q + "attention.self." + name, H, H)
    linear(q + "attention.output.dense", H, H)
    layer_norm(q + "attention.output.LayerNorm")
    linear(q + "intermediate.dense", INTER, H)
    linear(q + "output.dense", H, INTER)
    layer_norm(q + "output.LayerNorm")
  if pooler:
    linear(p + "pooler.dense", H, H)
  if "mlm" in heads:
    linear("cls.predictions.transform.dense", H, H)
    layer_norm("cls.predictions.transform.LayerNorm")
    t["cls.predictions.bias"] = rnd(V)
    t["cls.predictions.decoder.weight"] = t[p + "embeddings.word_embeddings.weight"].copy()
    t["cls.predictions.decoder.bias"] = t["cls.predictions.bias"].copy()
  if "nsp" in heads:
    linear("cls.seq_relationship", 2, H)
  if "classifier" in heads:
    linear("classifier", 3, H)
  if "qa" in heads:
    linear("qa_outputs", 2, H)
  return t


def write_hf_dir(path, tensors, architecture="BertForPreTraining", **config):
  os.makedirs(path, exist_ok=True)
  cfg = {"architectures": [architecture], "model_type": "bert", "vocab_size": V,
         "hidden_size": H, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
         "intermediate_size": INTER, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
         "attention_probs_dropout_prob": 0.1, "max_position_embeddings": POS,
         "type_vocab_size": 2, "layer_norm_eps": 1e-12, "initializer_range": 0.02,
         "pad_token_id": 0, **config}
  if "classifier.weight" in tensors:
    cfg["id2label"] = {"0": "neg", "1": "neutral", "2": "pos"}
    cfg["label2id"] = {"neg": 0, "neutral": 1, "pos": 2}
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(cfg, f)
  save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(path, "vocab.txt"), "w") as f:
    f.write("\n".join(VOCAB) + "\n")
  with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
    json.dump({"do_lower_case": True, "tokenizer_class": "BertTokenizer"}, f)
  return str(path)


def hf_checkpoint(tmp_path, architecture="BertForPreTraining", prefix="bert.", name="hf"):
  heads = ARCH_HEADS[architecture]
  pooler = architecture in ("BertForPreTraining", "BertModel", "BertForSequenceClassification")
  tensors = hf_tensors(prefix, heads, pooler)
  return write_hf_dir(tmp_path / name, tensors, architecture), tensors


def flat(params):
  return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}


def tiny_cfg():
  return model_lib.BertConfig(vocab_size=V, hidden_size=H, num_layers=LAYERS, num_heads=HEADS,
                              intermediate_size=INTER, max_position_embeddings=POS)
