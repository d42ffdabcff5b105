"""Sentence classification and regression from a decoder: the hidden state of each
sequence's last real token, through a `score` projection without bias.

This is Hugging Face's GPT2ForSequenceClassification / LlamaForSequenceClassification
convention, so an exported model loads in those classes with equal logits:

- the decoder runs over the whole row with padding masked out of attention (segment_ids
  = attention_mask: a real token attends to the real tokens at or before it) and each
  real token at its place in the text (positions = cumsum(attention_mask) - 1), so a
  text is read alike whichever side it is padded on. Right-padded rows (how jaxbert
  encodes tasks) give transformers' logits as they are; left-padded ones give the logits
  transformers gives with those position_ids (as its generate passes them; without
  position_ids it numbers pad slots too, which moves GPT-2's learned positions);
- the row's last real token is the rightmost one with attention_mask 1 (transformers
  takes the rightmost token that is not pad_token_id: the same token unless the text
  itself ends in the pad token, e.g. GPT-2 with pad = eos and a trailing eos);
- `score/kernel` (H, num_labels), no bias, in float32 logits under the "logits" key the
  sentence heads (jaxbert/heads/sentence.py) take their loss and predictions from.

The parameter tree is the decoder's own (decoder/..., no lm_head: the classifier never
calls it) plus `score`, so selectors, LoRA and imported weights need no renaming.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxbert.decoder import DecoderConfig, DecoderLM
from jaxbert.layers import RowDense

SCORE = "score"
HF_ARCHITECTURES = {"gpt2": "GPT2ForSequenceClassification",
                    "llama": "LlamaForSequenceClassification"}


def last_real_index(attention_mask):
  """(B,) index of each row's rightmost real token (0 for a row without one)."""
  t = attention_mask.shape[-1]
  return jnp.argmax(jnp.where(attention_mask > 0, jnp.arange(t), -1), axis=-1)


class DecoderForSequenceClassification(nn.Module):
  """A batch (input_ids, attention_mask) -> {"logits": (B, num_labels) float32}."""

  config: DecoderConfig
  num_labels: int

  def setup(self):
    self.lm = DecoderLM(self.config)
    nn.share_scope(self, self.lm)
    self.score = RowDense(self.num_labels, use_bias=False, dtype=self.config.compute_dtype,
                          param_dtype=jnp.float32, name=SCORE,
                          kernel_init=nn.initializers.normal(self.config.initializer_range))

  def __call__(self, batch, *, deterministic: bool = True):
    ids, mask = batch["input_ids"], batch["attention_mask"]
    real = (mask > 0).astype(jnp.int32)
    positions = jnp.maximum(jnp.cumsum(real, axis=-1) - 1, 0)
    h = self.lm(ids, positions=positions, segment_ids=real, deterministic=deterministic,
                return_hidden=True)
    last = h[jnp.arange(h.shape[0]), last_real_index(mask)]  # (B, H)
    return {"logits": self.score(last).astype(jnp.float32)}


def model(cfg: DecoderConfig, spec, pooling: str = "last") -> DecoderForSequenceClassification:
  """The classifier of a sentence task `spec` (regression: one output)."""
  del pooling  # a decoder reads the last real token
  return DecoderForSequenceClassification(cfg, 1 if spec.kind == "regression" else spec.num_labels)


def hf_state(cfg: DecoderConfig, params, num_labels: int, id2label: dict | None = None,
             pad_id: int | None = None) -> tuple[dict, dict[str, np.ndarray]]:
  """(config.json, tensors) of the transformers *ForSequenceClassification class of
  `cfg`'s family, from a classifier's parameters (numpy)."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from jaxbert.hf import decoder_names  # pylint: disable=g-import-not-at-top
  arch = decoder_names.arch_of(cfg)
  flat = traverse_util.flatten_dict(params)
  rows = [r for r in arch.rows(cfg) if all(p in flat for p in r.paths)]  # no lm_head
  tensors = decoder_names.to_hf(rows, flat)
  tensors["score.weight"] = np.ascontiguousarray(np.asarray(flat[(SCORE, "kernel")], np.float32).T)
  hf_config = dict(arch.config_to_hf(cfg), architectures=[HF_ARCHITECTURES[cfg.arch]],
                   num_labels=num_labels, pad_token_id=pad_id)
  id2label = id2label or {str(i): f"LABEL_{i}" for i in range(num_labels)}
  hf_config.update(id2label=id2label, label2id={v: int(k) for k, v in id2label.items()})
  if num_labels == 1:
    hf_config["problem_type"] = "regression"
  return hf_config, tensors
