"""Instruction tuning (issue 23, point 2): jaxbert/instruct.py, jaxbert/data/instruct_data.py.

A tiny random Llama with a tiny byte-level BPE (ChatML-style template) as `import-hf`
writes one; the data tests run no training, the command test trains a few dozen steps."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbert import decoder
from jaxbert.data import instruct_data as idata
from jaxbert.errors import UserError
from jaxbert.heads.causal_lm import CausalLM, causal_lm_loss

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "finetune", "instruct.py")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E501
  from jaxbert.checkpoint import save_bundle  # pylint: disable=g-import-not-at-top
  from jaxbert.hf.bpe_tokenizer import BPETokenizer  # pylint: disable=g-import-not-at-top
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=220, special_tokens=["<|endoftext|>", "<|im_start|>",
                                                                "<|im_end|>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(["the cat sat on the mat", "a dog ran in the park",
                           "user assistant system"] * 20, trainer)
  bpe = BPETokenizer(tok, {"eos_token": "<|im_end|>", "chat_template": CHATML})
  cfg = decoder.decoder_preset("llama-tiny", vocab_size=bpe.vocab_size, hidden_size=64,
                               intermediate_size=128, max_position_embeddings=64,
                               tie_word_embeddings=False)
  params = decoder.DecoderLM(cfg).init(jax.random.key(3), jnp.zeros((1, 4), jnp.int32))["params"]
  path = str(tmp_path_factory.mktemp("instruct") / "bundle")
  save_bundle(path, params, cfg, bpe, head="causal_lm")
  return path


@pytest.fixture(scope="module")
def loaded(bundle):
  from jaxbert import decoder_weights  # pylint: disable=g-import-not-at-top
  return decoder_weights.load(bundle)


def _stops(tok):
  from jaxbert.generate import stop_ids  # pylint: disable=g-import-not-at-top
  return stop_ids(tok)


def test_prompt_pieces_carry_no_weight(loaded):
  _, _, tok = loaded
  pair = idata.Example("x:1", prompt="the cat sat on the", completion=" mat")
  enc = idata.encode(pair, tok, _stops(tok))
  prompt, answer = tok.encode("the cat sat on the"), tok.encode(" mat", add_special_tokens=False)
  assert enc.pieces.tolist() == prompt + answer + [tok.eos_id] and enc.prompt == prompt
  assert enc.weights.tolist() == [0.0] * len(prompt) + [1.0] * (len(answer) + 1)

  chat = idata.Example("x:2", messages=[
      {"role": "system", "content": "be brief"}, {"role": "user", "content": "the cat"},
      {"role": "assistant", "content": "sat on the mat"}, {"role": "user", "content": "a dog"},
      {"role": "assistant", "content": "ran in the park"}])
  enc = idata.encode(chat, tok, _stops(tok))
  text = tok.decode(enc.pieces.tolist())
  assert text == chat_render(chat.messages, tok, False)  # the template's text, nothing more
  # The weighted pieces are exactly the two answers with their end-of-turn pieces.
  learned = "".join(tok.decode([int(p)]) if w else "\0" for p, w in zip(enc.pieces, enc.weights))
  assert [s for s in learned.split("\0") if s] == ["sat on the mat<|im_end|>",
                                                  "ran in the park<|im_end|>"]
  assert tok.decode(enc.prompt) == chat_render(chat.messages[:-1], tok, True)


def chat_render(messages, tok, gen):
  from jaxbert import chat_template  # pylint: disable=g-import-not-at-top
  return chat_template.render(CHATML, messages, add_generation_prompt=gen)


def _row_and_loss(loaded):
  """Two examples packed in one row, and a function of (params, batch) -> (loss, grads)."""
  cfg, params, tok = loaded
  exs = [idata.Example("a", prompt="the cat sat on the", completion=" mat"),
         idata.Example("b", prompt="a dog ran in", completion=" the park")]
  items, _, _ = idata.items(exs, tok, 48, _stops(tok))
  rows = idata.InstructRows(items, 48, tok.pad_id, seed=0, shuffle=False)
  assert rows.num_examples() == 1  # both in one row
  model = CausalLM(cfg)

  def loss(p, batch):
    return causal_lm_loss(model.apply({"params": p}, batch), batch)[0]

  grad = jax.jit(jax.value_and_grad(loss))
  return rows, items, model, params, grad


def test_prompt_targets_change_nothing_and_examples_do_not_see_each_other(loaded):
  rows, items, model, params, grad = _row_and_loss(loaded)
  row = rows.example(0, 0)
  batch = {k: v[None] for k, v in row.items()}
  n_a = len(rows.items[int(rows.row_items(0, 0)[0])].inputs)
  w = batch["loss_weights"][0]
  assert w.sum() == sum(i.weights.sum() for i in items) and set(np.unique(w)) <= {0.0, 1.0}
  loss0, g0 = grad(params, batch)
  # Every weight-0 target (prompt pieces, padding) replaced: same loss, same gradients.
  other = dict(batch, targets=np.where(w == 0, (batch["targets"] + 7) % 200, batch["targets"]))
  assert (other["targets"] != batch["targets"]).sum() >= 8
  loss1, g1 = grad(params, other)
  assert float(loss1) == float(loss0)
  jax.tree.map(np.testing.assert_array_equal, g0, g1)
  # A weighted target changed: the loss moves (the check above can fail).
  first = int(np.flatnonzero(w)[0])
  moved = dict(batch, targets=batch["targets"].copy())
  moved["targets"][0, first] = (moved["targets"][0, first] + 1) % 200
  assert float(grad(params, moved)[0]) != float(loss0)

  # Packing: the second example's per-piece loss equals its loss alone in a row, and the
  # first example's pieces do not reach it.
  nll = lambda b: np.asarray(model.apply({"params": params}, b)["nll"][0])
  second = rows.items[int(rows.row_items(0, 0)[1])]
  alone = {k: v[None] for k, v in rows.pack([second]).items()}
  n_b = len(second.inputs)
  np.testing.assert_allclose(nll(batch)[n_a:n_a + n_b], nll(alone)[:n_b], atol=1e-5)
  scrambled = dict(batch, input_ids=batch["input_ids"].copy())
  scrambled["input_ids"][0, :n_a] = (scrambled["input_ids"][0, :n_a] + 5) % 200
  np.testing.assert_allclose(nll(scrambled)[n_a:n_a + n_b], nll(batch)[n_a:n_a + n_b], atol=1e-6)


def test_row_order_is_a_function_of_seed_and_epoch(loaded):
  _, _, tok = loaded
  exs = [idata.Example(str(i), prompt="the cat " * (1 + i % 5), completion=" mat")
         for i in range(30)]
  items, _, _ = idata.items(exs, tok, 24, _stops(tok))
  a, b = (idata.InstructRows(items, 24, tok.pad_id, seed=5) for _ in range(2))
  n = a.num_examples()
  assert n > 3
  rows = lambda r, e: [r.example(e, i)["input_ids"].tolist() for i in range(n)]
  assert rows(a, 1) == rows(b, 1) and rows(a, 0) != rows(a, 1)
  assert rows(a.with_seed(6), 0) != rows(a, 0)
  # Every example exactly once per epoch.
  assert sorted(int(i) for r in range(n) for i in a.row_items(2, r)) == list(range(len(items)))


def _write(folder, name, lines):
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, name), "w") as f:
    f.write("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))


def _data(folder):
  pairs = [("the cat sat on the", " mat"), ("a dog ran in the", " park")]
  train = []
  for i in range(24):
    p, c = pairs[i % 2]
    if i % 3 == 2:  # some as conversations
      train.append({"messages": [{"role": "user", "content": p},
                                 {"role": "assistant", "content": c.strip()}]})
    else:
      train.append({"prompt": p, "completion": c})
  _write(folder, "train.jsonl", train)
  _write(folder, "dev.jsonl", [{"prompt": p, "completion": c} for p, c in pairs] * 2)


def test_finetune_command_learns_the_mapping(bundle, tmp_path, capsys):
  from jaxbert.cli import main  # pylint: disable=g-import-not-at-top
  data = str(tmp_path / "data")
  _data(data)
  workdir = str(tmp_path / "run")
  argv = ["finetune", "--config", CONFIG, "--workdir", workdir, f"--config.init={bundle}",
          f"--config.data.train_file={data}", "--config.data.max_seq_len=48",
          "--config.train.batch_size=8", "--config.train.steps=30", "--config.optim.lr=1e-2",
          "--config.optim.warmup_steps=3", "--config.train.log_every=5",
          "--config.data.max_new_tokens=8", "--config.train.progress=False"]
  assert main(argv) == 0
  results = json.load(open(os.path.join(workdir, "results.json")))
  m = results["metrics"]
  assert results["eval_file"] == os.path.join(data, "dev.jsonl") and results["generated"] == 4
  assert m["exact_match"] == 1.0 and m["token_f1"] == 1.0, m
  preds = [json.loads(l) for l in open(os.path.join(workdir, "predictions.jsonl"))]
  assert [(p["prompt"], p["reference"], p["prediction"].strip()) for p in preds[:2]] == [
      ("the cat sat on the", " mat", "mat"), ("a dog ran in the", " park", "park")]
  assert all(p["stop"] == "eos" for p in preds)  # it learnt to end the completion too
  logged = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  losses = [r["lm_loss"] for r in logged if "lm_loss" in r and "completion_loss" not in r]
  assert losses[-1] < 0.2 * losses[0], losses
  # The run is a decoder checkpoint: jaxbert generate gives the evaluation's completions.
  (tmp_path / "prompts.txt").write_text("the cat sat on the\na dog ran in the\n")
  assert main(["generate", "--checkpoint", workdir, "--input", str(tmp_path / "prompts.txt"),
               "--output", str(tmp_path / "gen.jsonl"), "--max-new-tokens", "8"]) == 0
  gen = [json.loads(l)["completion"] for l in open(tmp_path / "gen.jsonl")]
  assert gen == [p["prediction"] for p in preds[:2]]
  assert "next         jaxbert generate --checkpoint" in capsys.readouterr().out  # the summary
  assert main(["predict", "--checkpoint", workdir, "--input", str(tmp_path / "prompts.txt"),
               "--output", str(tmp_path / "p.jsonl")]) == 2
  assert "is an instruction-tuned decoder; it answers prompts: jaxbert generate" in \
      capsys.readouterr().err
  report = json.load(open(os.path.join(workdir, "handover.json")))
  assert "lm_head/kernel" in report["loaded"]["paths"] and not report["new"]["paths"]


@pytest.mark.parametrize("line,message", [
    ('{"prompt": "x"}', "lacks 'completion'"),
    ('{"prompt": "x", "completion": "  "}', "the completion is empty"),
    ("not json", "not a JSON object"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "the last message must be"),
    ('{"messages": [{"role": "robot", "content": "hi"}]}', "has role 'robot'"),
])
def test_bad_lines_name_file_and_line(line, message, tmp_path):
  path = tmp_path / "train.jsonl"
  path.write_text('{"prompt": "a", "completion": "b"}\n\n' + line + "\n")
  with pytest.raises(UserError) as e:
    idata.read_jsonl(str(path), "config.data.train_file")
  assert str(e.value).startswith(f"{path}:3: ") and message in str(e.value)


def test_bad_input_through_the_command(bundle, tmp_path, capsys):
  from jaxbert.cli import main  # pylint: disable=g-import-not-at-top
  data = str(tmp_path / "d")
  _data(data)
  (tmp_path / "empty.jsonl").write_text("\n")
  (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"question": 1}\n')
  base = ["finetune", "--config", CONFIG, "--config.train.progress=False"]
  for extra, message in [
      ([f"--config.init={bundle}", f"--config.data.train_file={tmp_path / 'empty.jsonl'}",
        f"--config.data.eval_file={tmp_path / 'empty.jsonl'}"], "empty.jsonl holds no example"),
      ([f"--config.init={bundle}", f"--config.data.train_file={tmp_path / 'bad.jsonl'}",
        f"--config.data.eval_file={tmp_path / 'bad.jsonl'}"], "bad.jsonl:2: an example needs"),
      ([f"--config.init={bundle}", f"--config.data.train_file={tmp_path / 'nope'}"],
       "config.data.train_file="),
      ([f"--config.data.train_file={data}"], "starts from a decoder: set --config.init"),
      ([f"--config.init={data}", f"--config.data.train_file={data}"],
       f"config.init={data} is not a decoder; instruction tuning starts from"),
      ([f"--config.init={bundle}", f"--config.data.train_file={data}",
        "--config.data.max_new_tokens=0"], "data.max_new_tokens=0 is invalid"),
      ([f"--config.init={bundle}", f"--config.data.train_file={data}",
        "--config.data.max_seq_len=8"], "no example has a completion piece"),
  ]:
    workdir = str(tmp_path / "w")
    assert main(base + ["--workdir", workdir] + extra) == 2, extra
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert message in lines[-1] and lines[-1].startswith("jaxbert: error: "), err
    assert "Traceback" not in err and sum("error" in l for l in lines) == 1, err
    if "max_seq_len=8" not in extra[-1] and "is not a decoder" not in message:  # at load: no INFO
      assert len(lines) == 1, err
    assert not os.path.exists(os.path.join(workdir, "config.json"))


def test_lora_run_resumes_exactly(bundle, tmp_path):
  """A LoRA instruction-tuning run stopped by SIGTERM at step 3 (mid epoch 0 of 4-step
  epochs) and started again ends bitwise as the run never stopped; the decoder's own
  weights stay as imported."""
  import signal  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from conftest import final_params  # pylint: disable=g-import-not-at-top
  from jaxbert import config as config_lib  # pylint: disable=g-import-not-at-top
  from jaxbert import decoder_weights, lora  # pylint: disable=g-import-not-at-top
  from jaxbert import train as train_lib  # pylint: disable=g-import-not-at-top
  from jaxbert.run import run  # pylint: disable=g-import-not-at-top
  data = str(tmp_path / "data")
  _data(data)
  config = config_lib.load(CONFIG, [
      f"--config.init={bundle}", f"--config.data.train_file={data}", "--config.data.max_seq_len=48",
      "--config.train.batch_size=4", "--config.train.steps=8", "--config.train.checkpoint_every=2",
      "--config.optim.lr=3e-3", "--config.lora.rank=4", "--config.data.generate_examples=0",
      "--config.train.progress=False"])
  devices = jax.devices()[:1]
  ref = str(tmp_path / "ref")
  run(config, ref, devices)
  stopped = str(tmp_path / "stopped")
  save = train_lib.save_checkpoint
  sent = []

  def saving(mngr, at, state, tokenizer_json):
    save(mngr, at, state, tokenizer_json)
    if at == 2 and not sent:
      sent.append(at)
      os.kill(os.getpid(), signal.SIGTERM)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(train_lib, "save_checkpoint", saving)
    run(config, stopped, devices)
  assert sent == [2] and final_params(stopped)[0] == 3  # saved at the next step
  run(config, stopped, devices)
  (step_a, a), (step_b, b) = final_params(ref), final_params(stopped)
  assert step_a == step_b == 8 and set(a) == set(b)
  for k in a:
    np.testing.assert_array_equal(b[k], a[k], err_msg="/".join(k))
  assert json.load(open(os.path.join(stopped, "results.json")))["metrics"] == \
      json.load(open(os.path.join(ref, "results.json")))["metrics"]
  source = traverse_util.flatten_dict(decoder_weights.load(bundle)[1])
  base = [k for k in a if k[-1] not in (lora.A, lora.B)]
  assert set(base) == set(source)
  for k in base:
    np.testing.assert_array_equal(a[k], source[k], err_msg="/".join(k))
  assert all(np.abs(a[k]).max() > 0 for k in a if k[-1] == lora.B)
