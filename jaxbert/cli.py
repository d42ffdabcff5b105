"""The `jaxbert` command.

  jaxbert pretrain  --config configs/pretrain/mini.py --workdir W [--config.KEY=VALUE ...]
  jaxbert finetune  --config configs/finetune/sst2.py --workdir W [--config.init=CKPT ...]
  jaxbert sweep     --config configs/finetune/sst2_sweep.py --workdir W [--config.sweep.space.optim.lr=[...]]
  jaxbert import-hf SRC (HF folder or FILE.gguf) --out BUNDLE
  jaxbert export-hf CKPT --out DIR
  jaxbert embed     --checkpoint BUNDLE --input FILE.txt --output FILE.npy [--pooling mean]
  jaxbert predict   --checkpoint RUN --input FILE (or --split NAME) --output preds.jsonl
  jaxbert generate  --checkpoint W (--prompt TEXT | --input prompts.txt) [--max-new-tokens N ...]
  jaxbert evaluate-lm --checkpoint W --input FILE.txt [--max-length L --stride S]
  jaxbert demo      [--workdir W]     pre-train then fine-tune on an embedded corpus

A user mistake prints one line and exits with status 2; no traceback. In a
multi-process run any error ends the process at once (status 2 for a user mistake,
1 otherwise), so that the other processes stop too instead of waiting for it.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import signal
import sys

# multiprocessing starts a loader worker by running this module (the main one) again in
# the new process: from then on it ignores Ctrl-C, which the training process handles
# (jaxbert/preemption.py), instead of dying of it with a traceback while it starts.
if getattr(multiprocessing.current_process(), "_inheriting", False):
  signal.signal(signal.SIGINT, signal.SIG_IGN)


def _train_command(args, overrides) -> int:
  from jaxbert import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load(args.config, overrides)  # a config mistake is reported first
  from jaxbert.run import run  # pylint: disable=g-import-not-at-top
  if config.get("task") != args.command:
    from jaxbert.errors import UserError  # pylint: disable=g-import-not-at-top
    raise UserError(f"{args.config} is a {config.get('task')!r} config; use `jaxbert {config.get('task')}`")
  run(config, args.workdir)
  from jaxbert.preemption import Preemption  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  if not Preemption.requested() and jax.process_index() == 0:  # stopped early: said already
    from jaxbert.run_files import summary  # pylint: disable=g-import-not-at-top
    print(summary(config, args.workdir))
  return 0


def _sweep(args, overrides) -> int:
  from jaxbert import config as config_lib  # pylint: disable=g-import-not-at-top
  from jaxbert.sweep import run_sweep  # pylint: disable=g-import-not-at-top
  best = run_sweep(config_lib.load(args.config, overrides), args.workdir)
  table = os.path.join(args.workdir, "results.md")
  if best.get("trial"):
    print(f"best trial {best['trial']}: {best['metric']}={best['value']:.4g} (setting median "
          f"{best['setting_median']:.4g} over {best['setting_seeds']} seed(s)); table: {table}; "
          f"checkpoint: {os.path.join(args.workdir, 'best')}")
  if best.get("diverged"):
    print(f"{len(best['diverged'])} trial(s) diverged (status 'diverged' in {table})")
  if best.get("preempted"):
    from jaxbert.preemption import Preemption, interrupted_message  # pylint: disable=g-import-not-at-top
    interrupted_message()  # the trials' own line: the sweep's says it for all of them
    print(f"stopped by {Preemption.signal_name()} with {len(best['unfinished'])} trial(s) "
          "unfinished (saved); run the same command to continue")
    if Preemption.interrupted():
      print("jaxbert: interrupted", file=sys.stderr)
      return 130
  elif not best.get("trial"):
    print(f"no trial finished without diverging; table: {table}")
  return 0


def _import_hf(args, overrides) -> int:
  del overrides
  from jaxbert.hf import import_hf  # pylint: disable=g-import-not-at-top
  if bool(args.src) == bool(args.gguf):
    from jaxbert.errors import UserError  # pylint: disable=g-import-not-at-top
    raise UserError("import-hf takes one source: a Hugging Face folder (BERT, GPT-2, Llama), "
                    "a .gguf file, or --gguf FILE")
  report = import_hf(args.src or args.gguf, args.out)
  print(report)
  return 0


def _export_hf(args, overrides) -> int:
  del overrides
  from jaxbert.hf import export_hf  # pylint: disable=g-import-not-at-top
  print(export_hf(args.checkpoint, args.out, args.architecture))
  return 0


def _embed(args, overrides) -> int:
  del overrides
  from jaxbert.embed import embed_lines  # pylint: disable=g-import-not-at-top
  print(embed_lines(args.checkpoint, args.input, args.output, pooling=args.pooling,
                    batch_size=args.batch_size, max_seq_len=args.max_seq_len))
  return 0


def _predict(args, overrides) -> int:
  del overrides
  from jaxbert.predict import predict_file  # pylint: disable=g-import-not-at-top
  print(predict_file(args.checkpoint, args.input, args.output, split=args.split,
                     input_fmt=args.format, batch_size=args.batch_size,
                     pretokenized=args.pretokenized))
  return 0


def _generate(args, overrides) -> int:
  del overrides
  from jaxbert.generate import generate_command  # pylint: disable=g-import-not-at-top
  return generate_command(args)


def _evaluate_lm(args, overrides) -> int:
  del overrides
  from jaxbert.evaluate_lm import evaluate_lm_command  # pylint: disable=g-import-not-at-top
  return evaluate_lm_command(args)


def _demo(args, overrides) -> int:
  from jaxbert.demo import main as demo_main  # pylint: disable=g-import-not-at-top
  return demo_main(args.workdir, overrides)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="jaxbert", description="BERT pre-training and fine-tuning in JAX.")
  sub = p.add_subparsers(dest="command", required=True)
  for name, helptext in (("pretrain", "pre-train a BERT (MLM + NSP)"),
                         ("finetune", "fine-tune on a task")):
    s = sub.add_parser(name, help=helptext,
                       epilog="Any config key can be overridden: --config.train.steps=100")
    s.add_argument("--config", required=True, help="a configs/*.py file with get_config()")
    s.add_argument("--workdir", required=True, help="run directory (resumed if it exists)")
    s.set_defaults(fn=_train_command)
  s = sub.add_parser("sweep", help="hyperparameter search: one fine-tuning run per trial",
                     epilog="The search space: --config.sweep.space.optim.lr=[1e-5,3e-5] "
                            "--config.sweep.space.train.seed=[0,1]")
  s.add_argument("--config", required=True, help="a configs/finetune/*.py file")
  s.add_argument("--workdir", required=True, help="sweep directory (continued if it exists)")
  s.set_defaults(fn=_sweep)
  s = sub.add_parser("import-hf", help="convert a Hugging Face BERT, GPT-2 or Llama folder, or a "
                     "GGUF file, into a jaxbert checkpoint")
  s.add_argument("src", nargs="?", help="a Hugging Face model folder or a .gguf file")
  s.add_argument("--gguf", default=None, help="a GGUF file (Llama-style, byte-level BPE tokenizer)")
  s.add_argument("--out", required=True)
  s.set_defaults(fn=_import_hf)
  s = sub.add_parser("export-hf", help="write a jaxbert checkpoint as a Hugging Face folder")
  s.add_argument("checkpoint", help="a bundle, a training workdir, or one of its checkpoints/<step>")
  s.add_argument("--out", required=True)
  s.add_argument("--architecture", default=None,
                 help="transformers class to export as (default: from the checkpoint's heads), "
                      "e.g. BertModel for the encoder alone")
  s.set_defaults(fn=_export_hf)
  s = sub.add_parser("embed", help="one embedding per input line (feature extraction)")
  s.add_argument("--checkpoint", required=True)
  s.add_argument("--input", required=True)
  s.add_argument("--output", required=True)
  s.add_argument("--pooling", choices=("cls", "mean", "pooler"), default="cls",
                 help="cls: last hidden state at [CLS]; mean: over real tokens; pooler: tanh pooler")
  s.add_argument("--batch-size", type=int, default=64)
  s.add_argument("--max-seq-len", type=int, default=128)
  s.set_defaults(fn=_embed)
  s = sub.add_parser(
      "predict", help="label new text with a fine-tuned run (any task kind)",
      description="One JSON line per input example: label and probabilities, a score, NER "
                  "entities with character offsets, or a QA answer with offsets and score. "
                  "Inputs: TSV/CSV with the task's text columns or one text per line "
                  "(classification, regression; a pair as A<TAB>B); text lines or CoNLL (NER); "
                  "SQuAD JSON or JSON lines with question and context (QA).")
  s.add_argument("--checkpoint", required=True,
                 help="a fine-tuning workdir (its newest checkpoint) or its checkpoints/<step>")
  source = s.add_mutually_exclusive_group(required=True)
  source.add_argument("--input", help="the file of examples to predict")
  source.add_argument("--split", help="instead, a split of the run's own task (tfds or local "
                                      "files), e.g. validation or test")
  s.add_argument("--output", required=True, help="the JSON lines file to write")
  s.add_argument("--format", default=None, choices=("tsv", "csv", "text", "conll", "squad", "jsonl"),
                 help="input format (default: from the extension; anything else is text)")
  s.add_argument("--batch-size", type=int, default=None,
                 help="examples per batch (default: the run's train.batch_size)")
  s.add_argument("--pretokenized", action="store_true",
                 help="NER text lines are words separated by whitespace (default: split words "
                      "at spaces and punctuation)")
  s.set_defaults(fn=_predict)
  s = sub.add_parser("generate", help="text from a decoder (KV cache, jitted decoding)",
                     description="Greedy at --temperature 0, else sampled (--top-k, --top-p, "
                                 "--seed). --prompt streams its completion to stdout; --input "
                                 "writes one JSON line per prompt line (line, prompt, "
                                 "completion, new_tokens, stop). --chat renders each prompt "
                                 "with the model's chat template. Tokens/s go to stderr.")
  from jaxbert.generate import add_arguments  # pylint: disable=g-import-not-at-top
  add_arguments(s)
  s.set_defaults(fn=_generate)
  s = sub.add_parser("evaluate-lm", help="perplexity and bits per byte of a decoder on a text file",
                     description="Sliding window: windows of --max-length tokens every --stride "
                                 "tokens, each scoring only the tokens its predecessor did not.")
  s.add_argument("--checkpoint", required=True, help="a decoder checkpoint")
  s.add_argument("--input", required=True, help="a UTF-8 text file, scored as one text")
  s.add_argument("--max-length", type=int, default=None,
                 help="window length (default: the model's context, at most 1024)")
  s.add_argument("--stride", type=int, default=None, help="default: half the window")
  s.add_argument("--batch-size", type=int, default=None, help="windows per batch")
  s.set_defaults(fn=_evaluate_lm)
  s = sub.add_parser("demo", help="pre-train then fine-tune on an embedded corpus (no network)")
  s.add_argument("--workdir", default="runs/demo")
  s.set_defaults(fn=_demo)
  return p


# Library warnings about normal operation, hidden so that real warnings stand out:
_EXPECTED_NOISE = (
    # Orbax, reading one item of a CheckpointManager step (the encoder of a pre-training
    # run): it looks for the step's metadata inside the item folder; it lives one level up.
    "Metadata file does not exist",
    # tfds, for the builders that read the user's own files: each file set is a custom
    # config, and its cache folder has no dataset_info.json until it is first built.
    "Using custom data configuration",
    "Variant folder %s has no %s",
)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  parser = build_parser()
  args, rest = parser.parse_known_args(argv)
  bad = [a for a in rest if not a.startswith("--config.")]
  if bad:
    parser.error(f"unrecognised arguments: {' '.join(bad)}")
  # force: imports may already have configured the root logger (then ours would be ignored).
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                      datefmt="%H:%M:%S", force=True)
  for noisy in ("absl", "jax._src", "orbax", "tensorflow_datasets"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  logging.getLogger("absl").addFilter(lambda r: not str(r.msg).startswith(_EXPECTED_NOISE))
  from jaxbert.errors import UserError  # pylint: disable=g-import-not-at-top
  try:
    code = args.fn(args, rest)
    if "jaxbert.preemption" in sys.modules:  # a run that saved and stopped for Ctrl-C
      interrupted = sys.modules["jaxbert.preemption"].interrupted_message()
      if interrupted:
        print(f"jaxbert: {interrupted}", file=sys.stderr)
        return 130
    return code
  except UserError as e:
    _exit_if_multiprocess(e, e.exit_code, str(e))
    print(f"jaxbert: error: {e}", file=sys.stderr)
    return e.exit_code
  except KeyboardInterrupt:
    print("jaxbert: interrupted", file=sys.stderr)
    return 130
  except Exception as e:  # pylint: disable=broad-except
    _exit_if_multiprocess(e, 1)
    raise


def _exit_if_multiprocess(e: BaseException, exit_code: int, message: str | None = None) -> None:
  if "jax" in sys.modules:  # commands that never imported jax are single-process
    from jaxbert.sharding import exit_if_multiprocess  # pylint: disable=g-import-not-at-top
    exit_if_multiprocess(e, exit_code, message)


if __name__ == "__main__":
  sys.exit(main())
