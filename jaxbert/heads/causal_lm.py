"""Causal-LM pre-training's head: next-token cross-entropy over the decoder's logits.

`CausalLM` runs jaxbert.decoder.DecoderLM on a packed batch (jaxbert/data/clm_data.py:
input_ids, positions, segment_ids, targets, loss_weights) in the decoder's own parameter
scope, so its parameter tree is DecoderLM's (decoder/..., lm_head/...) and checkpoints,
selectors and imported weights need no renaming. Besides the logits it returns every
position's negative log-likelihood and top-1 hit of its target, which the loss and the
held-out evaluation sum. Padding (loss_weights 0) counts nowhere, and no target lies
across a document boundary: the rows put each document's targets beside its own inputs.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbert.decoder import DecoderConfig, DecoderLM
from jaxbert.heads.mlm_nsp import cross_entropy_and_hits


class CausalLM(nn.Module):
  config: DecoderConfig

  def setup(self):
    self.lm = DecoderLM(self.config)
    nn.share_scope(self, self.lm)

  def __call__(self, batch, deterministic: bool = True):
    logits = self.lm(batch["input_ids"], positions=batch["positions"],
                     segment_ids=batch["segment_ids"], deterministic=deterministic)
    nll, hits = cross_entropy_and_hits(logits, batch["targets"])
    return {"logits": logits, "nll": nll, "hits": hits}


def causal_lm_loss(outputs, batch):
  """(mean next-token cross-entropy over real targets, metrics)."""
  w = batch["loss_weights"]
  denom = jnp.maximum(w.sum(), 1.0)
  loss = (outputs["nll"] * w).sum() / denom
  accuracy = (outputs["hits"] * w).sum() / denom
  return loss, {"lm_loss": loss, "accuracy": accuracy}


def dummy_batch(seq_len: int, batch: int = 1) -> dict[str, jax.Array]:
  """A batch of the right shapes and dtypes (shapes of parameters, selectors)."""
  ids = jnp.zeros((batch, seq_len), jnp.int32)
  return {"input_ids": ids, "targets": ids, "positions": ids, "segment_ids": ids + 1,
          "loss_weights": jnp.ones((batch, seq_len), jnp.float32),
          "attention_mask": ids + 1}
