"""Pre-training's heads: the masked-LM head (the tied word embeddings, at the masked
positions only) and next-sentence prediction on each example's [CLS]. The model is
jaxbert.model.BertForPreTraining; its FLOPs are jaxbert.flops.pretraining_flops_per_sequence
(the MLM decoder counted at the masked positions, the work the step really does)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy_and_hits(logits, labels):
  """Per-row cross-entropy and top-1 hit (the label's logit is the largest; ties count).

  Equal to optax's integer-label cross-entropy and `argmax == label`, written with a
  one-hot compare instead of a gather and a max instead of an argmax: over a 30k
  vocabulary the gather's gradient is a scatter plus a transposed copy and the argmax
  a slow two-output reduction, while these fuse into the softmax's own loops.
  """
  shifted = logits - jax.lax.stop_gradient(logits.max(-1, keepdims=True))
  one_hot = labels[..., None] == jnp.arange(logits.shape[-1])
  label_logit = jnp.where(one_hot, shifted, 0.0).sum(-1)
  ce = jnp.log(jnp.exp(shifted).sum(-1)) - label_logit
  return ce, label_logit >= 0.0


def mlm_nsp_loss(outputs, batch):
  """(loss, metrics): mean MLM cross-entropy over real predictions + NSP cross-entropy.

  Both are means over the batch's examples, packed rows included: the MLM loss over
  every real prediction, the NSP loss over every example's [CLS] (`nsp_weights`).
  """
  w = batch["masked_weights"]
  mlm_ce, mlm_hit = cross_entropy_and_hits(outputs["mlm_logits"], batch["masked_ids"])
  denom = jnp.maximum(w.sum(), 1.0)
  mlm_loss = (mlm_ce * w).sum() / denom
  mlm_acc = (mlm_hit * w).sum() / denom
  nsp_loss, nsp_acc = _nsp_loss_and_accuracy(outputs["nsp_logits"], batch)
  metrics = {"mlm_loss": mlm_loss, "mlm_accuracy": mlm_acc, "nsp_loss": nsp_loss,
             "nsp_accuracy": nsp_acc}
  return mlm_loss + nsp_loss, metrics


def _nsp_loss_and_accuracy(logits, batch):
  if "nsp_weights" in batch:  # packed rows: logits (B, S, 2), one per example
    labels, w = batch["nsp_labels"], batch["nsp_weights"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    denom = jnp.maximum(w.sum(), 1.0)
    return (ce * w).sum() / denom, ((logits.argmax(-1) == labels) * w).sum() / denom
  labels = batch["next_sentence_label"]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return ce.mean(), (logits.argmax(-1) == labels).mean()
