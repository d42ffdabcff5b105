"""Instruction tuning (supervised fine-tuning) of a decoder: `jaxbert finetune` with
config.data.task = "instruct" (configs/finetune/instruct.py). See jaxbert/train.py for the
Task protocol.

config.init names the decoder (a `jaxbert import-hf` bundle or a causal-LM run); its
tokenizer, chat template and architecture are the run's (config.model's dropout_rate,
dtype and remat apply). The training examples (jaxbert/data/instruct_data.py) are packed
rows whose loss weights are 1 on the completion / assistant pieces only; the model and
loss are causal-LM pre-training's (jaxbert/heads/causal_lm.py), whose weighted mean
then counts the answers alone. LoRA (config.lora) wraps the model as for any run.

Evaluation: the held-out examples' loss on their completion pieces (and its perplexity
and next-piece accuracy), then a greedy generation pass (jaxbert/decoding.py) over the
first data.generate_examples held-out prompts, scored against the references by exact
match and token F1 (SQuAD's normalisation: case, punctuation, articles); each one is
written to WORKDIR/predictions.jsonl with its prompt, reference and prediction.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os

import jax
import numpy as np

from jaxbert import decoder as decoder_lib
from jaxbert import generate as generate_lib
from jaxbert import lora as lora_lib
from jaxbert import metrics as metrics_lib
from jaxbert import optim as optim_lib
from jaxbert import sharding as shd
from jaxbert.checkpoint import write_json_atomic
from jaxbert.config import ConfigDict
from jaxbert.data import instruct_data
from jaxbert.data.pretraining import batch_examples
from jaxbert.errors import UserError
from jaxbert.heads.causal_lm import CausalLM, causal_lm_loss

log = logging.getLogger("jaxbert")

GENERATE_BATCH = 16  # prompts per generation call


def build_task(config: ConfigDict, workdir: str, mesh) -> InstructTask:
  from jaxbert.heads import last_token  # pylint: disable=g-import-not-at-top
  if not last_token.is_decoder_init(config.init):
    raise UserError(f"config.init={config.init} is not a decoder; instruction tuning starts from "
                    "a decoder bundle (jaxbert import-hf) or a causal-LM run's workdir")
  return InstructTask(config, workdir, mesh, last_token.open_decoder(config.init))


class InstructTask:
  """Next-piece prediction on the answers of packed instruction examples."""

  def __init__(self, config: ConfigDict, workdir: str, mesh, source):
    from jaxbert.clm import run_decoder_config  # pylint: disable=g-import-not-at-top
    self.config, self.workdir = config, workdir
    self.batch_sharding = shd.batch_sharding(mesh)
    source_cfg, self.source_params, self.tokenizer = source
    self.model_cfg = run_decoder_config(config, self.tokenizer, source_cfg)
    self.model = lora_lib.wrap(CausalLM(self.model_cfg), config)
    d = config.data
    t = d.max_seq_len
    train_file, eval_file = instruct_data.resolve_files(d.train_file, d.eval_file)
    self.eval_file = eval_file
    self.stops = generate_lib.stop_ids(self.tokenizer)
    pad = getattr(self.tokenizer, "pad_id", None)
    self.pad_id = int(pad) if pad is not None and pad >= 0 else instruct_data.end_id(self.tokenizer)
    train_items, _, train_counts = instruct_data.items(
        instruct_data.read_jsonl(train_file, "config.data.train_file"), self.tokenizer, t,
        self.stops)
    self.eval_examples = instruct_data.read_jsonl(eval_file, "config.data.eval_file")
    eval_items, self.eval_prompts, eval_counts = instruct_data.items(
        self.eval_examples, self.tokenizer, t, self.stops)
    for path, its, counts in ((train_file, train_items, train_counts),
                              (eval_file, eval_items, eval_counts)):
      if not its:
        raise UserError(f"{path}: no example has a completion piece within data.max_seq_len={t} "
                        "pieces; raise data.max_seq_len or shorten the prompts")
      if counts["truncated"] or counts["skipped"]:
        log.warning("%s: %d of %d examples are longer than data.max_seq_len=%d pieces and were "
                    "cut (%d of them left nothing to learn and were skipped)", path,
                    counts["truncated"], counts["examples"], t, counts["skipped"])
    self.train_rows = instruct_data.InstructRows(train_items, t, self.pad_id, config.train.seed)
    self.eval_rows = instruct_data.InstructRows(eval_items, t, self.pad_id, 0, shuffle=False)
    self.num_generated = min(d.generate_examples, len(self.eval_examples))
    if self.num_generated:
      generate_lib.check_lengths(self.eval_prompts[:self.num_generated], d.max_new_tokens,
                                 self.model_cfg.max_position_embeddings, eval_file)
    self.counts = {"train": train_counts, "eval": eval_counts}
    self.global_batch = config.train.batch_size
    self.local_batch = self.global_batch // jax.process_count()
    self.num_train_examples = self.train_rows.num_examples()  # rows: an epoch's batches
    self.main_metric, self.higher_is_better = (("exact_match", True) if self.num_generated
                                               else ("completion_loss", False))
    self._eval_fn = self._eval_batches = self._generator = None
    log.info("instruction tuning: %d train examples in %d rows of %d (%.1f %% real pieces), "
             "%d held out (%d rows; %d generated); decoder %s, vocabulary %d",
             len(train_items), self.num_train_examples, t, 100 * self.train_rows.efficiency(),
             len(eval_items), self.eval_rows.num_examples(), self.num_generated,
             self.model_cfg.arch, self.model_cfg.vocab_size)

  def for_run(self, config: ConfigDict, workdir: str) -> InstructTask:
    """This task for another trial of a sweep (its seed's data order, its workdir)."""
    other = copy.copy(self)
    other.config, other.workdir = config, workdir
    other.train_rows = self.train_rows.with_seed(config.train.seed)
    return other

  # --- data and model (the Task protocol) ------------------------------------------
  def example_batch(self):
    return batch_examples([self.train_rows.example(0, 0)] * self.local_batch)

  def loss_fn(self, params, batch, rng):
    outputs = self.model.apply({"params": params}, batch, deterministic=False,
                               rngs={"dropout": rng})
    return causal_lm_loss(outputs, batch)

  def batches(self, start_step: int, stop_step: int):
    from jaxbert.pretrain import StepBatches  # pylint: disable=g-import-not-at-top
    source = StepBatches(self.train_rows, self.global_batch, start_step, stop_step - start_step)
    return (source[i] for i in range(len(source)))

  def init_params(self, params, param_shardings):
    from jaxbert.heads import last_token  # pylint: disable=g-import-not-at-top
    return last_token.hand_over(
        self.config.init, self.source_params, params, param_shardings, self.workdir,
        trainable=optim_lib.trainable_count(params, self.config.optim.freeze),
        prefixes=("decoder/", "lm_head/"))

  def flops_per_batch(self) -> float:
    t = self.config.data.max_seq_len
    return self.global_batch * t * decoder_lib.flops_per_token(self.model_cfg, t)

  # --- evaluation ------------------------------------------------------------------
  def _completion_loss(self, params) -> dict[str, float]:
    if self._eval_fn is None:
      # Not the trainer's `predict`: that returns the (B, T, vocab) logits too.
      def fn(p, b):
        out = self.model.apply({"params": p}, b, deterministic=True)
        return out["nll"], out["hits"]
      self._eval_fn = jax.jit(fn)
      rows, local = self.eval_rows, self.local_batch
      n, offset = rows.num_examples(), jax.process_index() * local
      self._eval_batches = [
          batch_examples([rows.example(0, g) if g < n else rows.empty_row()
                          for g in range(s + offset, s + offset + local)])
          for s in range(0, n, self.global_batch)]
    nll = hits = weight = 0.0
    for local in self._eval_batches:
      batch = shd.global_batch(local, self.batch_sharding)
      out_nll, out_hits = self._eval_fn(params, batch)
      w = batch["loss_weights"]
      nll += float((out_nll * w).sum())
      hits += float((out_hits * w).sum())
      weight += float(w.sum())
    loss = nll / max(weight, 1.0)
    return {"completion_loss": loss, "perplexity": math.exp(min(loss, 700.0)),
            "token_accuracy": hits / max(weight, 1.0)}

  def generate(self, params) -> list[dict]:
    """Greedy completions of the first data.generate_examples held-out prompts."""
    from jaxbert.decoding import Generator  # pylint: disable=g-import-not-at-top
    d = self.config.data
    if self._generator is None:
      self._generator = Generator(decoder_lib.DecoderLM(self.model_cfg), eos_ids=self.stops,
                                  pad_id=self.pad_id)
    if isinstance(self.model, lora_lib.LoraModel):
      params = jax.jit(lambda p: lora_lib.merge(p, self.model.factor))(params)
    prompts = self.eval_prompts[:self.num_generated]
    length, batch = max(len(p) for p in prompts), min(GENERATE_BATCH, len(prompts))
    out = []
    for start in range(0, len(prompts), batch):
      chunk = prompts[start:start + batch]
      result = self._generator.run(params, chunk, d.max_new_tokens, length=length, batch=batch)
      for j, new in enumerate(result.tokens):
        ex = self.eval_examples[start + j]
        prediction = generate_lib.completion_text(self.tokenizer, chunk[j], new, self.stops)
        out.append({"index": start + j, "prompt": ex.shown_prompt, "reference": ex.reference,
                    "prediction": prediction,
                    "exact_match": metrics_lib.squad_exact_match(prediction, [ex.reference]),
                    "token_f1": metrics_lib.squad_f1(prediction, [ex.reference]),
                    "stop": "eos" if result.stopped[j] else "length"})
    return out

  def evaluate(self, params, predict) -> dict[str, float]:
    del predict  # see _completion_loss
    metrics = self._completion_loss(params)
    records = self.generate(params) if self.num_generated else []
    if records:
      metrics["exact_match"] = float(np.mean([r["exact_match"] for r in records]))
      metrics["token_f1"] = float(np.mean([r["token_f1"] for r in records]))
    if jax.process_index() == 0:
      if records:
        path = os.path.join(self.workdir, "predictions.jsonl")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
          for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(path + ".tmp", path)
      write_json_atomic(os.path.join(self.workdir, "results.json"),
                        {"task": "instruct", "eval_file": os.path.abspath(self.eval_file),
                         "metrics": metrics, "counts": self.counts,
                         "generated": len(records), "main_metric": self.main_metric,
                         "higher_is_better": self.higher_is_better})
    return metrics
