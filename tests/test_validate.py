"""The whole config checked at load (jaxbert/validate.py), before any data is read."""

import os
import time

import pytest

from jaxbert import cli
from jaxbert import config as C
from jaxbert import validate as V
from jaxbert.defaults import finetune_config, pretrain_config
from jaxbert.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MISSING = "/nonexistent/jaxbert-test-data"


def pre(**overrides):
  c = pretrain_config("tiny")
  c.data.corpus = MISSING
  C.apply_overrides(c, [f"--config.{k}={v}" for k, v in overrides.items()])
  return c


def fin(init, **overrides):
  c = finetune_config(MISSING + "/task")
  c.init = init
  c.data.max_seq_len = 64  # the bundle's max_position_embeddings
  C.apply_overrides(c, [f"--config.{k}={v}" for k, v in overrides.items()])
  return c


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
  """A 2-layer import-hf bundle: a real config.init."""
  import hf_fakes
  from jaxbert.hf import import_hf
  root = tmp_path_factory.mktemp("bundle")
  src, _ = hf_fakes.hf_checkpoint(root)
  import_hf(src, str(root / "bundle"))
  return str(root / "bundle")


def test_every_default_key_has_a_rule():
  for task in V.TASKS:
    keys = [k for k, v in V._leaves(V.schema(task)).items() if not k.startswith("optim.")
            and not isinstance(v, C.ConfigDict)]
    assert [k for k in keys if k not in V.RULES] == []


def test_shipped_configs_validate_once_their_paths_are_given(bundle):
  for sub, paths in (("pretrain", ["--config.data.corpus=corpus.txt"]),
                     ("finetune", [f"--config.init={bundle}", "--config.data.max_seq_len=64"])):
    folder = os.path.join(ROOT, "configs", sub)
    for name in sorted(os.listdir(folder)):
      if name.endswith(".py"):
        own = ["--config.data.task=my_task"] if name == "local.py" else []  # its files' folder
        V.validate(C.apply_overrides(C.load_config_file(os.path.join(folder, name)), paths + own))


@pytest.mark.parametrize("key,value,message", [
    ("train.batch_size", 0, "train.batch_size=0 is invalid: must be an integer >= 1"),
    ("train.steps", 0, "train.steps=0 is invalid: must be an integer >= 1"),
    ("train.log_every", 0, "train.log_every=0 is invalid"),
    ("train.eval_every", -1, "train.eval_every=-1 is invalid"),
    ("train.checkpoint_every", 0, "train.checkpoint_every=0 is invalid"),
    ("train.prng_impl", "'philox'", "train.prng_impl='philox' is invalid: use one of"),
    ("model.hidden_dropout", 1.0, "model.hidden_dropout=1.0 is invalid: must be in [0, 1)"),
    ("model.dtype", "'float16'", "model.dtype='float16' is invalid"),
    ("mesh.data", 0, "mesh.data=0 is invalid"),
    ("data.packing", -1, "data.packing=-1 is invalid"),
    ("data.num_workers", -1, "data.num_workers=-1 is invalid"),
    ("data.max_seq_len", 1024, "data.max_seq_len=1024 is invalid: must be <= the model's"),
    ("optim.lr", 0, "optim.lr=0.0 is invalid: must be > 0"),
    ("optim.decay", "'step'", "optim.decay='step' is invalid"),
    ("optim.warmup_steps", 20000, "warm-up of 20000 steps"),
    ("optim.freeze", "'bottom:3'", "optim.freeze='bottom:3': 'bottom:3' is out of range for 2"),
    ("model.num_heads", 5, "config.model: hidden_size 768 is not divisible by num_heads 5"),
])
def test_bad_values_name_the_key(key, value, message):
  c = pre(**{key: value})
  if key == "model.num_heads":
    c.model.override_preset_sizes = True
  with pytest.raises(UserError) as e:
    V.validate(c)
  assert message in str(e.value)


def test_keys_that_depend_on_each_other(bundle):
  with pytest.raises(UserError, match="train.steps=0 is invalid.*or set train.epochs > 0"):
    V.validate(fin(bundle, **{"train.epochs": 0.0}))
  V.validate(fin(bundle, **{"train.epochs": 0.0, "train.steps": 10}))
  with pytest.raises(UserError, match="config.init is empty"):
    V.validate(fin("", reinit="'pooler'", **{"tokenizer.path": "'tok'"}))
  with pytest.raises(UserError, match="either config.init"):
    V.validate(fin(bundle, **{"tokenizer.path": "'tok'"}))
  with pytest.raises(UserError, match="config.init=/nonexistent.*no such file"):
    V.validate(fin(MISSING))
  with pytest.raises(UserError, match="data.corpus is empty"):
    V.validate(pre(**{"data.corpus": "''"}))


def test_a_key_the_config_file_made_up_is_reported():
  c = pre()
  c.optim.learning_rate = 1e-3  # ConfigDict takes new attributes silently
  with pytest.raises(UserError, match="unknown config key 'optim.learning_rate'.*did you mean optim.lr"):
    V.validate(c)


@pytest.mark.parametrize("override,expected", [
    ("optim.learning_rate", "optim.lr"), ("optim.lr_schedule", "optim.decay"),
    ("train.warmup", "optim.warmup_steps"), ("optim.warmup", "optim.warmup_steps"),
    ("train.num_epochs", "train.steps"), ("optim.batch_size", "train.batch_size"),
    ("optim.max_grad_norm", "optim.clip_norm"), ("train.step", "train.steps"),
])
def test_did_you_mean_knows_other_trainers_names(override, expected):
  with pytest.raises(UserError, match=f"did you mean --config.{expected}\\?"):
    C.apply_overrides(pre(), [f"--config.{override}=1"])


def test_finetune_selectors_are_checked_against_the_checkpoint(bundle):
  V.validate(fin(bundle, reinit="'pooler,top:2'", **{"optim.freeze": "'bottom:1'"}))
  V.validate(fin(bundle, **{"optim.freeze": "'classifier/.*'"}))  # the head kinds are known
  with pytest.raises(UserError, match="config.reinit='top:3': 'top:3' is out of range for 2"):
    V.validate(fin(bundle, reinit="'top:3'"))
  with pytest.raises(UserError, match="'clasifier/.*' matches no parameter"):
    V.validate(fin(bundle, **{"optim.freeze": "'clasifier/.*'"}))


def test_each_sweep_value_is_checked(bundle):
  c = fin(bundle)
  c.sweep.space.optim.lr = [1e-5, 0.0]
  with pytest.raises(UserError, match=r"config.sweep.space.optim.lr holds 0.0: optim.lr=0.0 is invalid"):
    V.validate(c)
  c.sweep.space.optim.lr = [1e-5]
  c.sweep.space.optim.freeze = ["none", "bottom:9"]
  with pytest.raises(UserError, match="sweep.space.optim.freeze holds 'bottom:9'"):
    V.validate(c)


@pytest.mark.parametrize("command,key,typo", [
    ("pretrain", "optim.freeze", "bottom:x"),
    ("pretrain", "optim.freeze", "bert/encoder/layr_0/.*"),
    ("finetune", "optim.freeze", "encodr"),
    ("finetune", "reinit", "pooler,top:7"),
])
def test_a_selector_typo_fails_at_once_before_any_data(command, key, typo, bundle, tmp_path, capsys):
  # The corpus and the task files do not exist: reading any data would fail differently.
  config = tmp_path / "config.py"
  config.write_text(f"from jaxbert.defaults import {command}_config\n\n"
                    f"def get_config():\n  c = {command}_config()\n"
                    + (f"  c.data.corpus = {MISSING!r}\n" if command == "pretrain" else
                       f"  c.data.task = {MISSING!r}\n  c.init = {bundle!r}\n"
                       "  c.data.max_seq_len = 64\n")
                    + "  return c\n")
  workdir = tmp_path / "w"
  start = time.perf_counter()
  status = cli.main([command, "--config", str(config), "--workdir", str(workdir),
                     f"--config.{key}={typo}"])
  took = time.perf_counter() - start
  err = capsys.readouterr().err.strip().splitlines()
  assert status == 2 and took < 5, (status, took)
  assert len(err) == 1 and err[0].startswith("jaxbert: error: ") and f"={typo!r}: " in err[0], err
  assert not workdir.exists()
