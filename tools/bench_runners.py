"""The benchmarked train steps of tools/bench.py: synthetic or stored pre-training data,
jaxbert's step (built by `jaxbert.step.build_step`, as the trainer builds it) and Hugging
Face's BertForPreTraining step on PyTorch, each wrapped as a `Runner`."""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxbert import flops as flops_lib
from jaxbert import sharding as shd
from jaxbert.data.docstore import DocumentStore
from jaxbert.data.pretraining import PretrainDataConfig, PretrainingExamples, batch_examples
from jaxbert.model import BertForPreTraining, preset
from jaxbert.optim import make_optimizer
from jaxbert.heads.mlm_nsp import mlm_nsp_loss
from jaxbert.step import Shardings, build_step, new_state

# --variants entries are "default" or KEY=VALUE pairs joined by "+", e.g. "prng=rbg+remat=1".
VARIANT_KEYS = {
    "dropout": "hidden and attention dropout rate (BERT: 0.1)",
    "hidden_dropout": "dropout after embeddings and each sub-block",
    "attn_dropout": "dropout on attention probabilities; 0 takes jax.nn.dot_product_attention",
    "prng": "threefry2x32 (default), rbg or unsafe_rbg: the dropout key's implementation",
    "remat": "1: recompute each layer in the backward pass",
    "dtype": "float32 or bfloat16 computation (parameters stay float32)",
    "donate": "0: do not donate the train state to the step",
    "act": "gelu (erf, BERT), gelu_tanh or relu",
}

_PAD, _UNK, _CLS, _SEP, _MASK = 0, 1, 2, 3, 4  # special ids of the synthetic corpus


# ----------------------------------------------------------------------------- data


def synthetic_store(vocab_size: int, num_docs: int = 2000, seed: int = 0) -> DocumentStore:
  """Documents of 1-40 sentences of 3-40 random pieces (ids past the specials)."""
  rng = np.random.default_rng(seed)
  sents_per_doc = rng.integers(1, 41, num_docs)
  sent_len = rng.integers(3, 41, int(sents_per_doc.sum()))
  tokens = rng.integers(5, vocab_size, int(sent_len.sum())).astype(np.int32)
  sent_start = np.concatenate([[0], np.cumsum(sent_len)]).astype(np.int64)
  doc_start = np.concatenate([[0], np.cumsum(sents_per_doc)]).astype(np.int64)
  return DocumentStore(tokens, sent_start, doc_start)


def make_examples(args) -> PretrainingExamples:
  """Pre-training examples from --store (with --tokenizer) or a synthetic corpus."""
  cfg = PretrainDataConfig(max_seq_len=args.seq_len, max_predictions_per_seq=args.predictions)
  if args.store:
    from jaxbert import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
    if not args.tokenizer:
      sys.exit("--store needs --tokenizer (the directory of the store's tokenizer)")
    tok = tok_lib.load_tokenizer(args.tokenizer)
    if tok.vocab_size > args.vocab_size:
      sys.exit(f"--vocab-size {args.vocab_size} is smaller than the tokenizer's {tok.vocab_size}")
    return PretrainingExamples.from_tokenizer(DocumentStore.load(args.store), cfg, tok)
  return PretrainingExamples(synthetic_store(args.vocab_size), cfg, vocab_size=args.vocab_size,
                             pad_id=_PAD, unk_id=_UNK, cls_id=_CLS, sep_id=_SEP, mask_id=_MASK)


def make_batches(examples, batch: int, count: int) -> list[dict[str, np.ndarray]]:
  """`count` consecutive batches of the example stream (the trainer's StepBatches order)."""
  return [batch_examples([examples.example(*examples.locate(s * batch + j)) for j in range(batch)])
          for s in range(count)]


# ----------------------------------------------------------------------------- runners


@dataclasses.dataclass
class Runner:
  """A built train step: `step(batch)` runs one step and waits for it."""

  name: str
  step: Callable[[dict[str, np.ndarray]], float]
  batches: list[dict[str, np.ndarray]]
  compile_s: float
  memory: str
  exec_flops_per_batch: float
  times: list[float] = dataclasses.field(default_factory=list)
  losses: list[float] = dataclasses.field(default_factory=list)
  rounds: list[float] = dataclasses.field(default_factory=list)  # median step time per round
  compiled: object = None  # jaxbert's jax.stages.Compiled (tools/profile_step.py reads its HLO)


def parse_variant(spec: str) -> dict[str, str]:
  if spec == "default":
    return {}
  out = {}
  for item in spec.split("+"):
    key, sep, value = item.partition("=")
    if not sep or key not in VARIANT_KEYS:
      sys.exit(f"--variants entry {spec!r}: {item!r} is not KEY=VALUE with KEY one of "
               f"{sorted(VARIANT_KEYS)}")
    out[key] = value
  return out


def model_config(args, variant: dict[str, str]):
  drop = float(variant.get("dropout", args.dropout))
  return preset(args.preset, vocab_size=args.vocab_size,
                hidden_dropout=float(variant.get("hidden_dropout", drop)),
                attention_dropout=float(variant.get("attn_dropout", drop)),
                dtype=variant.get("dtype", args.dtype),
                hidden_act=variant.get("act", "gelu"),
                remat=variant.get("remat", "0") == "1")


class RssPeak:
  """Samples this process's resident memory in a thread; `rise()` is peak minus start."""

  def __init__(self):
    self.start = self.peak = self._rss()
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  @staticmethod
  def _rss() -> int:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

  def _run(self):
    while not self._stop.wait(0.005):
      self.peak = max(self.peak, self._rss())

  def rise(self) -> int:
    self._stop.set()
    self._thread.join()
    return max(self.peak, self._rss()) - self.start


def jax_runner(args, spec: str, batches, predictions: int) -> Runner:
  """jaxbert's train step, built as `jaxbert.train.train` builds it."""
  variant = parse_variant(spec)
  cfg = model_config(args, variant)
  model = BertForPreTraining(cfg)

  def loss_fn(params, batch, rng):  # PretrainTask.loss_fn
    outputs = model.apply({"params": params}, batch, deterministic=False, rngs={"dropout": rng})
    return mlm_nsp_loss(outputs, batch)

  mesh = shd.make_mesh(-1, 1)
  example = jax.tree.map(jnp.asarray, batches[0])
  init_params = lambda: model.init({"params": jax.random.key(0)}, example)["params"]
  optim = {"lr": 1e-4, "warmup_steps": 10}
  tx, _ = make_optimizer(optim, jax.eval_shape(init_params), 10_000)
  init_state = lambda: new_state(init_params(), tx)
  sh = Shardings.for_state(mesh, jax.eval_shape(init_state))
  step_fn = build_step(loss_fn, tx, sh, donate=variant.get("donate", "1") == "1")
  holder = {"state": jax.jit(init_state, out_shardings=sh.state)()}
  rng = jax.device_put(jax.random.key(1, impl=variant.get("prng", "threefry2x32")), sh.replicated)
  batch_sh = sh.batch

  t = time.perf_counter()
  compiled = step_fn.compile(holder["state"], shd.global_batch(batches[0], batch_sh), rng)
  compile_s = time.perf_counter() - t
  peak = compiled.peak_bytes()  # XLA's buffer plan (jaxbert.step.Step.peak_bytes)
  memory = "n/a"
  if peak is not None:
    memory = f"{peak / 2**20:.0f} MB xla"

  def step(batch):
    holder["state"], metrics = compiled(holder["state"], shd.global_batch(batch, batch_sh), rng)
    return float(metrics["loss"])  # waits for the step

  b, t_len = batches[0]["input_ids"].shape
  exec_flops = b * flops_lib.pretraining_flops_per_sequence(cfg, t_len, predictions)
  return Runner(f"jaxbert[{spec}]", step, batches, compile_s, memory, exec_flops,
                compiled=compiled)


def hf_runner(args, mode: str, batches, device: str) -> Runner:
  """transformers.BertForPreTraining with AdamW: a train step as HF users write it."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  cfg = model_config(args, {})
  hf_cfg = transformers.BertConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
      num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
      hidden_act="gelu", hidden_dropout_prob=cfg.hidden_dropout,
      attention_probs_dropout_prob=cfg.attention_dropout,
      max_position_embeddings=cfg.max_position_embeddings, type_vocab_size=cfg.type_vocab_size,
      layer_norm_eps=cfg.layer_norm_eps, initializer_range=cfg.initializer_range)
  rss = RssPeak() if device == "cpu" else None
  if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
  torch.manual_seed(0)
  model = transformers.BertForPreTraining(hf_cfg).to(device).train()
  # jaxbert's decay mask: no weight decay on LayerNorm parameters and biases.
  decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
  no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
  fused = {"fused": True} if device == "cuda" else {}
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=1e-4, betas=(0.9, 0.999), eps=1e-6, **fused)
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
  forward = torch.compile(model) if mode == "compile" else model
  params = list(model.parameters())
  amp = torch.autocast(device, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")

  def to_torch(batch):
    labels = np.full(batch["input_ids"].shape, -100, np.int64)
    rows, cols = np.nonzero(batch["masked_weights"] > 0)
    labels[rows, batch["masked_positions"][rows, cols]] = batch["masked_ids"][rows, cols]
    out = {k: torch.from_numpy(batch[k].astype(np.int64))
           for k in ("input_ids", "token_type_ids", "attention_mask", "next_sentence_label")}
    out["labels"] = torch.from_numpy(labels)
    return {k: v.to(device, non_blocking=True) for k, v in out.items()}

  def step(batch):
    inputs = to_torch(batch)
    with amp:
      loss = forward(**inputs).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())  # waits for the step

  # Compile time: the first two steps minus two steady ones (eager: their warm-up).
  t = time.perf_counter()
  for batch in batches[:2]:
    step(batch)
  first = time.perf_counter() - t
  t = time.perf_counter()
  for batch in batches[:2]:
    step(batch)
  steady = time.perf_counter() - t
  if device == "cuda":
    memory = f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MB cuda"
  else:
    memory = f"{rss.rise() / 2**20:.0f} MB rss+"
  b, t_len = batches[0]["input_ids"].shape
  exec_flops = b * flops_lib.pretraining_flops_per_sequence(cfg, t_len, t_len)
  return Runner(f"hf-{mode}", step, batches, max(first - steady, 0.0), memory, exec_flops)
