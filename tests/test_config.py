"""Config files and command-line overrides."""

import os

import pytest

from jaxbert import config as C
from jaxbert.defaults import bert_config, pretrain_config
from jaxbert.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_shipped_config_loads():
  for sub in ("pretrain", "finetune"):
    folder = os.path.join(ROOT, "configs", sub)
    for name in sorted(os.listdir(folder)):
      if name.endswith(".py"):
        config = C.load_config_file(os.path.join(folder, name))
        assert config.task == sub, name


def test_overrides_are_typed():
  c = pretrain_config()
  C.apply_overrides(c, ["--config.train.steps=7", "--config.optim.lr=1", "--config.model.dtype=bfloat16",
                        "--config.data.whole_word=true", "--config.optim.freeze=bottom:2"])
  assert c.train.steps == 7 and c.optim.lr == 1.0 and isinstance(c.optim.lr, float)
  assert c.model.dtype == "bfloat16" and c.data.whole_word is True and c.optim.freeze == "bottom:2"


@pytest.mark.parametrize("override,expected", [
    ("--config.train.step=3", "did you mean --config.train.steps"),
    ("--config.trian.steps=3", "did you mean --config.train.steps"),
    ("--config.optim.wieght_decay=0.1", "did you mean --config.optim.weight_decay"),
    ("--config.model.hiden_dropout=0.1", "did you mean --config.model.hidden_dropout"),
    ("--config.train.steps=many", "takes a number"),
    ("--config.train=3", "is a group"),
    ("--config.train.steps", "needs a value"),
])
def test_bad_overrides_name_the_key(override, expected):
  with pytest.raises(UserError, match=expected):
    C.apply_overrides(pretrain_config(), [override])


def test_missing_config_file():
  with pytest.raises(UserError, match="does not exist"):
    C.load_config_file("configs/pretrain/nope.py")


def test_bert_config_from_preset_and_overrides():
  c = pretrain_config("small")
  c.model.hidden_dropout = 0.0
  cfg = bert_config(c.model, vocab_size=1024)
  assert (cfg.num_layers, cfg.hidden_size, cfg.hidden_dropout, cfg.vocab_size) == (4, 512, 0.0, 1024)
  c.model.num_heads = 5
  c.model.override_preset_sizes = True
  with pytest.raises(UserError, match="divisible"):
    bert_config(c.model, 1024)


def test_free_form_option_groups_take_new_keys():
  from jaxbert.defaults import finetune_config
  c = finetune_config("squad/v1.1")
  C.apply_overrides(c, ["--config.data.eval_options.article_split=(0.8, 1.0)"])
  assert c.data.eval_options.article_split == (0.8, 1.0)


def test_resume_accepts_a_key_added_since_the_run_only_at_its_default(tmp_path):
  import json
  from jaxbert.defaults import finetune_config
  from jaxbert.train import check_workdir_config
  path = tmp_path / "config.json"

  def older_run():  # config.json as written before `reinit` existed
    old = json.loads(path.read_text())
    del old["reinit"]
    path.write_text(json.dumps(old))

  config = finetune_config()
  check_workdir_config(str(tmp_path), config)
  older_run()
  check_workdir_config(str(tmp_path), config)  # the default: resumes
  older_run()
  config.reinit = "pooler"
  with pytest.raises(UserError, match="different config \\(reinit: '' -> 'pooler'\\)"):
    check_workdir_config(str(tmp_path), config)
