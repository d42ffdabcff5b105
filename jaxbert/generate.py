"""`jaxbert generate`: text from a decoder checkpoint (KV cache, jitted decode loop).

  --prompt TEXT       one prompt; the completion is streamed to stdout as it is made
                      (the decode loop runs `STREAM_CHUNK` tokens per jitted call)
  --input FILE        one prompt per line (blank lines skipped), run in batches of
                      --batch-size left-padded prompts; one JSON line per prompt, in input
                      order, to --output (default stdout):
                      {"line": N, "prompt": ..., "completion": ..., "new_tokens": n,
                       "stop": "eos" | "length"}
  --chat              each prompt is a user turn rendered with the model's own chat
                      template (after a --system turn if given), with the assistant's
                      generation prompt; the completion is the assistant's reply
Temperature 0 is greedy decoding; otherwise tokens are sampled with --temperature,
--top-k and --top-p (transformers' order), reproducibly for a --seed. A row stops at
its end-of-sequence token (the tokenizer's eos and end-of-text ids) or after
--max-new-tokens. Timings (compile, prefill, tokens/s) go to stderr.
"""

from __future__ import annotations

import json
import logging
import sys

import numpy as np

from jaxbert.errors import UserError

log = logging.getLogger("jaxbert")

STREAM_CHUNK = 8


def load_decoder(checkpoint: str):
  """(DecoderLM, DecoderConfig, params, tokenizer) of a decoder checkpoint, or a UserError."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxbert import decoder, decoder_weights  # pylint: disable=g-import-not-at-top
  config, params, tokenizer = decoder_weights.load(checkpoint, key="--checkpoint")
  # On the device once, not copied in at every jitted call.
  return decoder.DecoderLM(config), config, jax.device_put(params), tokenizer


def stop_ids(tokenizer) -> tuple[int, ...]:
  """End-of-sequence ids: the eos (a chat model's end of turn) and the end-of-text token."""
  ids = [getattr(tokenizer, "eos_id", None), getattr(tokenizer, "eod_id", None)]
  return tuple(sorted({int(i) for i in ids if i is not None and i >= 0}))


def special_tokens(tokenizer) -> dict[str, str]:
  """bos_token, eos_token, ... as strings, the variables chat templates read."""
  to_text = getattr(tokenizer, "id_to_token", None) or getattr(tokenizer, "id_to_piece", None)
  out = {}
  for name in ("bos", "eos", "pad", "unk"):
    i = getattr(tokenizer, f"{name}_id", None)
    if i is not None and i >= 0 and to_text is not None:
      out[f"{name}_token"] = to_text(int(i))
  return out


def encode_prompt(tokenizer, text: str, chat: bool, system: str | None) -> list[int]:
  if chat:
    from jaxbert import chat_template  # pylint: disable=g-import-not-at-top
    template = getattr(tokenizer, "chat_template", None)
    if not template:
      raise UserError("--chat: this checkpoint's tokenizer has no chat template; generate "
                      "without --chat")
    text = chat_template.render(template, chat_template.conversation(text, system),
                                special_tokens=special_tokens(tokenizer))
    try:  # the template has placed the special tokens
      return list(tokenizer.encode(text, add_special_tokens=False))
    except TypeError:  # a tokenizer that never adds any
      return list(tokenizer.encode(text))
  ids = list(tokenizer.encode(text))
  if not ids:  # an empty prompt: generate from the start-of-text token
    start = getattr(tokenizer, "bos_id", None)
    if start is None:
      start = getattr(tokenizer, "eod_id", None)
    ids = [int(tokenizer.eos_id if start is None else start)]
  return ids


def completion_text(tokenizer, prompt: list[int], new: list[int], stops) -> str:
  """The text the new tokens add to the prompt, up to the first end-of-sequence token."""
  ends = [i for i, t in enumerate(new) if t in stops]
  new = list(new[:ends[0]] if ends else new)
  before = tokenizer.decode(prompt)
  after = tokenizer.decode(list(prompt) + new)
  return after[len(before):] if after.startswith(before) else tokenizer.decode(new)


def read_prompts(path: str) -> list[tuple[int, str]]:
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    raise UserError(f"--input {path} does not exist") from None
  except (IsADirectoryError, PermissionError) as e:
    raise UserError(f"cannot read --input {path}: {e}") from None
  lines = data.decode("utf-8", errors="replace").splitlines()
  prompts = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
  if not prompts:
    raise UserError(f"--input {path} holds no prompt: write one prompt per line")
  return prompts


def check_lengths(prompts: list[list[int]], max_new_tokens: int, context: int, where: str):
  if max_new_tokens < 1:
    raise UserError(f"--max-new-tokens {max_new_tokens} is invalid: use an integer >= 1")
  longest = max(len(p) for p in prompts)
  if longest + max_new_tokens > context:
    raise UserError(f"{where}: a prompt of {longest} tokens plus --max-new-tokens "
                    f"{max_new_tokens} exceeds the model's context of {context} tokens; "
                    "shorten the prompt or lower --max-new-tokens")


class _Streamer:
  """Prints row 0's new text as chunks arrive, holding back an incomplete UTF-8 character."""

  def __init__(self, tokenizer, prompt, stops, out):
    self.tokenizer, self.prompt, self.stops, self.out = tokenizer, prompt, stops, out
    self.printed = ""

  def __call__(self, tokens: np.ndarray, final: bool = False):
    text = completion_text(self.tokenizer, self.prompt, tokens[0].tolist(), self.stops)
    if not final:  # a character's first bytes: its last bytes may come in the next chunk
      text = text.rstrip("\ufffd")
    if text.startswith(self.printed) and len(text) > len(self.printed):
      self.out.write(text[len(self.printed):])
      self.out.flush()
      self.printed = text


def generate_command(args) -> int:
  from jaxbert.decoding import Generator  # pylint: disable=g-import-not-at-top
  from jaxbert.sampling import Sampling  # pylint: disable=g-import-not-at-top
  if args.batch_size < 1:
    raise UserError(f"--batch-size {args.batch_size} is invalid: use an integer >= 1")
  model, config, params, tokenizer = load_decoder(args.checkpoint)
  sampling = Sampling(args.temperature, args.top_k, args.top_p).check(config.vocab_size)
  stops = stop_ids(tokenizer)
  if args.prompt is not None:
    texts, where = [(0, args.prompt)], "--prompt"
  else:
    texts, where = read_prompts(args.input), f"--input {args.input}"
  prompts = [encode_prompt(tokenizer, t, args.chat, args.system) for _, t in texts]
  check_lengths(prompts, args.max_new_tokens, config.max_position_embeddings, where)
  pad = getattr(tokenizer, "pad_id", None)
  gen = Generator(model, sampling, stops, pad_id=pad if pad is not None and pad >= 0 else 0)

  if args.prompt is not None:
    streamer = _Streamer(tokenizer, prompts[0], stops, sys.stdout)
    result = gen.run(params, prompts, args.max_new_tokens, seed=args.seed, chunk=STREAM_CHUNK,
                     on_chunk=streamer)
    streamer(np.asarray([result.tokens[0]]), final=True)  # whatever bytes end it
    sys.stdout.write("\n")
    sys.stdout.flush()
    stats = [result]
  else:
    stats = _generate_file(gen, params, tokenizer, texts, prompts, args, stops)
  new = sum(r.num_new_tokens for r in stats)
  seconds = sum(r.prefill_s + r.decode_s for r in stats)
  print(f"generated {new} tokens for {len(prompts)} prompt(s) in {seconds:.2f} s: "
        f"{new / max(seconds, 1e-9):.1f} tokens/s (prefill "
        f"{sum(r.prefill_s for r in stats):.2f} s, decode {sum(r.decode_s for r in stats):.2f} s,"
        f" batch {min(args.batch_size, len(prompts))}; compile "
        f"{sum(r.compile_s for r in stats):.1f} s)", file=sys.stderr)
  return 0


def _generate_file(gen, params, tokenizer, texts, prompts, args, stops):
  """Batches of --batch-size prompts, every batch padded to one shape (one compile)."""
  length = max(len(p) for p in prompts)
  batch = min(args.batch_size, len(prompts))
  out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # pylint: disable=consider-using-with
  stats = []
  try:
    for start in range(0, len(prompts), batch):
      chunk = prompts[start:start + batch]
      result = gen.run(params, chunk, args.max_new_tokens, seed=args.seed + start,
                       length=length, batch=batch)
      stats.append(result)
      for j, new in enumerate(result.tokens):
        line, text = texts[start + j]
        out.write(json.dumps({
            "line": line, "prompt": text,
            "completion": completion_text(tokenizer, chunk[j], new, stops),
            "new_tokens": len(new), "stop": "eos" if result.stopped[j] else "length"},
            ensure_ascii=False) + "\n")
      out.flush()
      log.info("generated for %d/%d prompts", min(start + batch, len(prompts)), len(prompts))
  finally:
    if out is not sys.stdout:
      out.close()
  return stats


def add_arguments(s) -> None:
  """The `jaxbert generate` options (cli.py builds the sub-parser)."""
  s.add_argument("--checkpoint", required=True,
                 help="a decoder checkpoint: an imported model or a decoder training workdir")
  source = s.add_mutually_exclusive_group(required=True)
  source.add_argument("--prompt", help="one prompt; the completion is streamed to stdout")
  source.add_argument("--input", help="a text file, one prompt per line; JSON lines out")
  s.add_argument("--output", default=None, help="with --input: the JSON lines file (default stdout)")
  s.add_argument("--max-new-tokens", type=int, default=128)
  s.add_argument("--temperature", type=float, default=0.0, help="0: greedy (the default)")
  s.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest (0: off)")
  s.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1: off)")
  s.add_argument("--seed", type=int, default=0)
  s.add_argument("--batch-size", type=int, default=8, help="prompts per batch with --input")
  s.add_argument("--chat", action="store_true",
                 help="render each prompt as a user turn with the model's chat template")
  s.add_argument("--system", default=None, help="with --chat: a system turn before the prompt")
