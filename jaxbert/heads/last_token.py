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


# --- fine-tuning from a decoder (jaxbert finetune with config.init a decoder) ---------


class TaskTokenizer:
  """A decoder's tokenizer as the sentence tasks' encoder (encoding.encode_texts) takes it:
  rows `a` or `a [eos] b`, the texts' pieces without special tokens, right-padded with the
  pad id. The last real token, which the head reads, is the text's own, never the pad
  token: transformers' classifiers find it as the last token that is not pad_token_id,
  and decoders often pad with eos. (transformers gives the same rows for
  tokenizer(text, add_special_tokens=False).) Everything else (save, vocab_size, decode,
  ...) is the decoder tokenizer's."""

  decoder_rows = True
  cls_id = None

  def __init__(self, tokenizer):
    self.tokenizer = tokenizer
    self.sep_id = tokenizer.eos_id
    self.pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id

  def encode_batch(self, texts):
    try:  # the imported BPE adds the model's own specials unless told not to
      return [self.tokenizer.encode(t, add_special_tokens=False) for t in texts]
    except TypeError:  # own SentencePiece BPE: plain pieces
      return [self.tokenizer.encode(t) for t in texts]

  def __getattr__(self, name):
    return getattr(self.tokenizer, name)


def is_decoder_init(init: str) -> bool:
  from jaxbert import decoder_weights  # pylint: disable=g-import-not-at-top
  return bool(init) and decoder_weights.is_decoder(init)


def open_decoder(init: str, key: str = "config.init"):
  """(DecoderConfig, numpy params, tokenizer) of a decoder bundle or run."""
  from jaxbert import decoder_weights  # pylint: disable=g-import-not-at-top
  return decoder_weights.load(init, key=key)


def run_setup(config):
  """(tokenizer, DecoderConfig with the run's dtype and remat, numpy params) of a
  fine-tuning run whose config.init is a decoder; None for other runs."""
  from jaxbert.errors import UserError  # pylint: disable=g-import-not-at-top
  if not is_decoder_init(config.get("init", "")):
    return None
  if config.tokenizer.get("path"):
    raise UserError("set either config.init (its tokenizer is used) or config.tokenizer.path")
  cfg, params, tokenizer = open_decoder(config.init)
  cfg = cfg.replace(dtype=config.model.dtype, remat=config.model.remat)
  return TaskTokenizer(tokenizer), cfg, params


def sentence_model(cfg: DecoderConfig, spec):
  from jaxbert.errors import UserError  # pylint: disable=g-import-not-at-top
  if spec.kind not in ("classification", "regression"):
    raise UserError(f"config.init is a decoder, which fine-tunes on sentence classification "
                    f"and regression tasks; {spec.name} is a {spec.kind} task")
  return model(cfg, spec)


def hand_over(init: str, source_params, params, shardings, workdir: str, *, reinit: str = "",
              trainable: tuple[int, int] | None = None, prefixes: tuple[str, ...] = ("decoder/",)):
  """`params` with every leaf under `prefixes` (decoder/...; instruction tuning adds
  lm_head/) that `source_params` has (same shape) put in its sharding, but those `reinit`
  selects; the report printed and written to WORKDIR/handover.json as the encoder's."""
  import os  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from jaxbert.checkpoint import write_json_atomic  # pylint: disable=g-import-not-at-top
  from jaxbert.errors import UserError  # pylint: disable=g-import-not-at-top
  flat = lambda t: {"/".join(k): v for k, v in traverse_util.flatten_dict(t).items()}
  from jaxbert import handover as handover_lib  # pylint: disable=g-import-not-at-top
  saved, target, where = flat(source_params), flat(params), flat(shardings)
  selector = handover_lib.reinit_selector(reinit)
  fresh = set() if selector.empty else selector.select(list(target))
  loaded = {}
  for k, v in target.items():
    if k.startswith(prefixes) and k in saved and k not in fresh:
      if tuple(saved[k].shape) != tuple(v.shape):
        raise UserError(f"config.init={init}: {k} has shape {tuple(saved[k].shape)}, the "
                        f"model expects {tuple(v.shape)}")
      loaded[k] = tuple(v.shape)
  if not loaded:
    raise UserError(f"config.init={init} holds no decoder (decoder/...) parameters")
  merged = {k: jax.device_put(saved[k].astype(v.dtype), where[k]) if k in loaded else v
            for k, v in target.items()}
  report = handover_lib.HandoverReport(
      source=f"decoder {os.path.abspath(init)}", loaded=loaded,
      new={k: tuple(v.shape) for k, v in target.items() if k not in loaded},
      dropped={k: tuple(v.shape) for k, v in saved.items() if k not in loaded and k not in fresh},
      reinitialised={k: tuple(saved[k].shape) for k in fresh if k in saved}, trainable=trainable)
  if jax.process_index() == 0:
    print(report.describe())
    write_json_atomic(os.path.join(workdir, "handover.json"), report.to_dict())
  return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in merged.items()})


def is_classifier_run(workdir: str | None) -> bool:
  """Whether `workdir` is a fine-tuning run started from a decoder."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  if workdir is None:
    return False
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      config = json.load(f)
  except (OSError, ValueError):
    return False
  return (config.get("task") == "finetune" and is_decoder_init(config.get("init") or "")
          and (config.get("data") or {}).get("task") != "instruct")  # jaxbert/instruct.py


def export(checkpoint: str, workdir: str, out_dir: str, architecture: str | None = None, *,
           overwrite: bool = False):
  """export-hf of a decoder classifier run: GPT2/LlamaForSequenceClassification (LoRA
  merged), its task's label names and the decoder's tokenizer."""
  import os  # pylint: disable=g-import-not-at-top
  from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
  from jaxbert import handover  # pylint: disable=g-import-not-at-top
  from jaxbert.checkpoint import integrity_problem, new_directory, write_json_atomic  # pylint: disable=g-import-not-at-top
  from jaxbert.errors import UserError  # pylint: disable=g-import-not-at-top
  from jaxbert.hf.decoder_export import DecoderExportReport, _write_tokenizer  # pylint: disable=g-import-not-at-top
  from jaxbert.run_task import read_run_config, run_task  # pylint: disable=g-import-not-at-top
  config = read_run_config(workdir)
  cfg, _, tokenizer = open_decoder(config.init, key=f"{workdir}/config.json init")
  path = os.path.abspath(checkpoint)
  if path == os.path.abspath(workdir):
    step_dir = handover._latest_step_dir(os.path.join(path, "checkpoints"), "checkpoint")  # pylint: disable=protected-access
  else:
    step_dir = path
    if (problem := integrity_problem(step_dir)) is not None:
      raise UserError(f"checkpoint={checkpoint}: the checkpoint is damaged ({problem})")
  params = handover._restore_params(os.path.join(step_dir, "default"), ("params",))  # pylint: disable=protected-access
  spec = run_task(workdir, TaskTokenizer(tokenizer), key="checkpoint").spec
  num_labels = int(params[SCORE]["kernel"].shape[1])
  name = HF_ARCHITECTURES[cfg.arch]
  if architecture not in (None, name):
    raise UserError(f"--architecture {architecture}: this {cfg.arch} classifier exports as {name}")
  labels = ({str(i): n for i, n in enumerate(spec.label_names)}
            if len(spec.label_names) == num_labels else None)
  hf_config, tensors = hf_state(cfg, params, num_labels, labels,
                                pad_id=TaskTokenizer(tokenizer).pad_id)
  for key in ("bos", "eos"):
    value = getattr(tokenizer, f"{key}_id", None)
    hf_config[f"{key}_token_id"] = None if value is None else int(value)
  hf_config["torch_dtype"] = "float32"
  out_dir = os.path.abspath(out_dir)
  with new_directory(out_dir, overwrite) as tmp:
    write_json_atomic(os.path.join(tmp, "config.json"), hf_config)
    with open(os.path.join(tmp, "model.safetensors"), "wb") as f:
      f.write(st_numpy.save(tensors, metadata={"format": "pt"}))
    notes = _write_tokenizer(tokenizer, tmp, cfg)
  notes.append("inputs as fine-tuned: the text's pieces without special tokens (a pair: "
               "a <eos> b), right-padded; the classifier reads the last real token")
  return DecoderExportReport(source=f"run {workdir} step {os.path.basename(step_dir)}",
                             out_dir=out_dir, architecture=name, num_tensors=len(tensors),
                             num_parameters=int(sum(t.size for t in tensors.values())),
                             notes=notes)
