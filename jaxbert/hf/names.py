"""Hugging Face names for jaxbert's parameters, configs and heads.

Linear weights are (out, in) in PyTorch and (in, out) Flax kernels, LayerNorm `weight`
is Flax `scale`, embeddings are not transposed.
"""

from __future__ import annotations

import dataclasses

from jaxbert.errors import UserError
from jaxbert.model import BertConfig

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
HF_CONFIG = "config.json"
# Buffers Hugging Face keeps in some state dicts; they are not parameters.
BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")

_ACT_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                "relu": "relu"}
_ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}

# Hugging Face class -> (jaxbert heads it holds, whether it has a pooler, bundle head name).
ARCHITECTURES = {
    "BertModel": ((), True, "encoder"),
    "BertForPreTraining": (("mlm", "nsp"), True, "pretraining"),
    "BertForMaskedLM": (("mlm",), False, "masked_lm"),
    "BertForNextSentencePrediction": (("nsp",), True, "next_sentence"),
    "BertForSequenceClassification": (("classifier",), True, "sequence_classification"),
    "BertForTokenClassification": (("classifier",), False, "token_classification"),
    "BertForQuestionAnswering": (("qa_outputs",), False, "question_answering"),
}
HEAD_DESCRIPTIONS = {"mlm": "masked-LM head (cls.predictions)",
                      "nsp": "next-sentence head (cls.seq_relationship)",
                      "classifier": "classifier", "qa_outputs": "QA span head (qa_outputs)"}


@dataclasses.dataclass(frozen=True)
class _Tensor:
  hf: str                 # Hugging Face name; encoder names without the "bert." prefix
  path: tuple[str, ...]   # Flax parameter path
  shape: tuple[int, ...]  # Flax shape
  transpose: bool         # a Linear weight: HF (out, in) <-> Flax kernel (in, out)

  @property
  def hf_shape(self) -> tuple[int, ...]:
    return self.shape[::-1] if self.transpose else self.shape


def _linear(hf: str, path: tuple[str, ...], n_in: int, n_out: int) -> list[_Tensor]:
  return [_Tensor(f"{hf}.weight", path + ("kernel",), (n_in, n_out), True),
          _Tensor(f"{hf}.bias", path + ("bias",), (n_out,), False)]


def _layer_norm(hf: str, path: tuple[str, ...], n: int) -> list[_Tensor]:
  return [_Tensor(f"{hf}.weight", path + ("scale",), (n,), False),
          _Tensor(f"{hf}.bias", path + ("bias",), (n,), False)]


def encoder_tensors(cfg: BertConfig) -> list[_Tensor]:
  """Embeddings and transformer layers (no pooler), under Flax "bert/"."""
  h, inter = cfg.hidden_size, cfg.intermediate_size
  rows = [_Tensor(f"embeddings.{name}.weight", ("bert", "embeddings", name, "embedding"),
                  (n, h), False)
          for name, n in (("word_embeddings", cfg.vocab_size),
                          ("position_embeddings", cfg.max_position_embeddings),
                          ("token_type_embeddings", cfg.type_vocab_size))]
  rows += _layer_norm("embeddings.LayerNorm", ("bert", "embeddings", "LayerNorm"), h)
  for i in range(cfg.num_layers):
    hf, fx = f"encoder.layer.{i}", ("bert", "encoder", f"layer_{i}")
    for name in ("query", "key", "value"):
      rows += _linear(f"{hf}.attention.self.{name}", fx + ("attention", name), h, h)
    rows += _linear(f"{hf}.attention.output.dense", fx + ("attention", "output", "dense"), h, h)
    rows += _layer_norm(f"{hf}.attention.output.LayerNorm",
                        fx + ("attention", "output", "LayerNorm"), h)
    rows += _linear(f"{hf}.intermediate.dense", fx + ("intermediate", "dense"), h, inter)
    rows += _linear(f"{hf}.output.dense", fx + ("output", "dense"), inter, h)
    rows += _layer_norm(f"{hf}.output.LayerNorm", fx + ("output", "LayerNorm"), h)
  return rows


def pooler_tensors(cfg: BertConfig) -> list[_Tensor]:
  return _linear("pooler.dense", ("bert", "pooler", "dense"), cfg.hidden_size, cfg.hidden_size)


def head_tensors(head: str, cfg: BertConfig, num_labels: int = 0) -> list[_Tensor]:
  """A head's tensors; its HF names are full names (never "bert."-prefixed)."""
  h = cfg.hidden_size
  if head == "mlm":
    # The decoder weight is tied to the word embeddings, so it has no row here.
    return (_linear("cls.predictions.transform.dense", ("mlm", "dense"), h, h)
            + _layer_norm("cls.predictions.transform.LayerNorm", ("mlm", "LayerNorm"), h)
            + [_Tensor("cls.predictions.bias", ("mlm", "bias"), (cfg.vocab_size,), False)])
  if head == "nsp":
    return _linear("cls.seq_relationship", ("nsp",), h, 2)
  if head == "classifier":
    return _linear("classifier", ("classifier",), h, num_labels)
  if head == "qa_outputs":
    return _linear("qa_outputs", ("qa_outputs",), h, 2)
  raise ValueError(f"unknown head {head!r}")


# --- config ----------------------------------------------------------------------

def config_from_hf(d: dict, where: str) -> BertConfig:
  """BertConfig from a Hugging Face config.json dict; absent keys take HF's defaults."""
  if d.get("model_type", "bert") != "bert":
    raise UserError(f"{where}: model_type is {d['model_type']!r}; jaxbert imports only BERT "
                    "(model_type 'bert') checkpoints")
  if d.get("position_embedding_type", "absolute") != "absolute":
    raise UserError(f"{where}: position_embedding_type={d['position_embedding_type']!r} is not "
                    "supported; jaxbert's BERT has absolute (learned) position embeddings only")
  act = d.get("hidden_act", "gelu")
  if act not in _ACT_FROM_HF:
    raise UserError(f"{where}: hidden_act={act!r} is not supported; use one of "
                    f"{sorted(_ACT_FROM_HF)}")
  default = BertConfig()
  try:
    return BertConfig(
        vocab_size=int(d.get("vocab_size", default.vocab_size)),
        hidden_size=int(d.get("hidden_size", default.hidden_size)),
        num_layers=int(d.get("num_hidden_layers", default.num_layers)),
        num_heads=int(d.get("num_attention_heads", default.num_heads)),
        intermediate_size=int(d.get("intermediate_size", default.intermediate_size)),
        hidden_act=_ACT_FROM_HF[act],
        hidden_dropout=float(d.get("hidden_dropout_prob", default.hidden_dropout)),
        attention_dropout=float(d.get("attention_probs_dropout_prob", default.attention_dropout)),
        max_position_embeddings=int(d.get("max_position_embeddings",
                                          default.max_position_embeddings)),
        type_vocab_size=int(d.get("type_vocab_size", default.type_vocab_size)),
        layer_norm_eps=float(d.get("layer_norm_eps", default.layer_norm_eps)),
        initializer_range=float(d.get("initializer_range", default.initializer_range)))
  except (TypeError, ValueError) as e:
    raise UserError(f"{where}: {e}") from None


def config_to_hf(cfg: BertConfig) -> dict:
  return {
      "model_type": "bert",
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "intermediate_size": cfg.intermediate_size,
      "hidden_act": _ACT_TO_HF[cfg.hidden_act],
      "hidden_dropout_prob": cfg.hidden_dropout,
      "attention_probs_dropout_prob": cfg.attention_dropout,
      "max_position_embeddings": cfg.max_position_embeddings,
      "type_vocab_size": cfg.type_vocab_size,
      "layer_norm_eps": cfg.layer_norm_eps,
      "initializer_range": cfg.initializer_range,
      "position_embedding_type": "absolute",
      "torch_dtype": "float32",
  }


def bundle_head(heads: list[str], architectures: list[str]) -> str:
  """The bundle head name for a checkpoint holding `heads`."""
  if "mlm" in heads and "nsp" in heads:
    return "pretraining"
  if "mlm" in heads:
    return "masked_lm"
  if "classifier" in heads:
    token = "BertForTokenClassification" in architectures
    return "token_classification" if token else "sequence_classification"
  if "qa_outputs" in heads:
    return "question_answering"
  if "nsp" in heads:
    return "next_sentence"
  return "encoder"

