"""One's own data, as a user meets it: a task folder of TSV files fine-tuned through the
command line with configs/finetune/local.py, its dev file the validation split, its
unlabeled test file labeled by `jaxbert predict`; tables as others write them (GLUE's
column names, CSV quoting); data locations from the command line or the environment."""

import csv
import json
import os

import pytest

from jaxbert import cli
from jaxbert import config as C
from jaxbert.data import file_formats, local_files
from jaxbert.errors import UserError
from conftest import shared_data_or_skip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL = os.path.join(ROOT, "configs", "finetune", "local.py")
GOOD = ["ka", "lo", "mi", "ne"]
BAD = ["ru", "sa", "ti", "vo"]
# The tiny pre-training run's width; fine-tuning it quickly.
TINY = ["--config.data.max_seq_len=32", "--config.train.batch_size=8", "--config.train.epochs=1",
        "--config.train.progress=False", "--config.train.log_every=4",
        "--config.train.checkpoint_every=8", "--config.optim.lr=1e-3"]


def _write_table(path, header, rows):
  """As pandas' to_csv(sep="\t") writes: a field holding a quote or a tab is quoted."""
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f, delimiter="\t", lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
  return path


def _sentence(i):
  words = GOOD if i % 2 == 0 else BAD
  text = " ".join(words[(i + k) % 4] for k in range(3 + i % 3))
  return f'he said "{text}"' if i % 5 == 0 else text  # some texts hold quote marks


@pytest.fixture(scope="module")
def own_task(tmp_path_factory):
  """train.tsv / dev.tsv labeled pos/neg, test.tsv without labels, lines.txt."""
  folder = tmp_path_factory.mktemp("reviews")
  label = lambda i: "pos" if i % 2 == 0 else "neg"
  _write_table(folder / "train.tsv", ["sentence", "label"],
               [[_sentence(i), label(i)] for i in range(32)])
  _write_table(folder / "dev.tsv", ["sentence", "label"],
               [[_sentence(i), label(i)] for i in range(32, 45)])
  _write_table(folder / "test.tsv", ["sentence"], [[_sentence(i)] for i in range(45, 52)])
  (folder / "lines.txt").write_text("ka lo mi\nru sa ti vo\n")
  return str(folder)


def _one_error_line(err):
  """The run's INFO lines aside, one line of error and no traceback."""
  assert "Traceback" not in err, err
  errors = [line for line in err.splitlines() if not line[:8].replace(":", "").isdigit()]
  assert len(errors) == 1 and errors[0].startswith("jaxbert: error: "), err
  return errors[0]


def _lines(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_own_tsv_task_from_files_to_predict(reference_run, own_task, tmp_path, monkeypatch,
                                            capsys):
  pre_dir, _ = reference_run
  shared = tmp_path / "someone_elses_tfds"
  shared.mkdir()
  monkeypatch.setenv("JAXBERT_DATA_DIR", str(shared))  # a tfds data_dir: not for local files
  workdir = str(tmp_path / "run")
  code = cli.main(["finetune", "--config", LOCAL, "--workdir", workdir,
                   f"--config.init={pre_dir}", f"--config.data.task={own_task}", *TINY])
  assert code == 0, capsys.readouterr().err
  config = json.load(open(os.path.join(workdir, "config.json")))
  assert config["name"] == f"finetune-{os.path.basename(own_task)}"
  results = json.load(open(os.path.join(workdir, "results.json")))
  assert results["split"] == "validation" and results["counts"]["examples"] == 13  # dev.tsv
  # Prepared inside the run, never into the data_dir others read.
  assert os.listdir(shared) == [] and os.path.isdir(os.path.join(workdir, "tfds"))
  dev = _lines(os.path.join(workdir, "predictions.jsonl"))
  assert [d["text"] for d in dev] == [_sentence(i) for i in range(32, 45)]  # quoting decoded
  assert {d["label"] for d in dev} == {"pos", "neg"}

  capsys.readouterr()
  split_out, file_out, text_out = (str(tmp_path / n) for n in ("s.jsonl", "f.jsonl", "t.jsonl"))
  assert cli.main(["predict", "--checkpoint", workdir, "--split", "test",
                   "--output", split_out]) == 0
  assert cli.main(["predict", "--checkpoint", workdir, "--input",
                   os.path.join(own_task, "test.tsv"), "--output", file_out]) == 0
  assert cli.main(["predict", "--checkpoint", workdir, "--input",
                   os.path.join(own_task, "lines.txt"), "--output", text_out]) == 0
  by_split, by_file = _lines(split_out), _lines(file_out)
  assert len(by_split) == 7 and [r["prediction"] for r in by_split] == \
      [r["prediction"] for r in by_file]
  assert by_file[0]["sentence"] == _sentence(45)
  assert {r["prediction"] for r in by_file + _lines(text_out)} <= {"pos", "neg"}
  assert len(_lines(text_out)) == 2


def test_unlabeled_eval_split_is_refused_before_training(reference_run, own_task, tmp_path,
                                                         capsys):
  pre_dir, _ = reference_run
  workdir = tmp_path / "run"
  code = cli.main(["finetune", "--config", LOCAL, "--workdir", str(workdir),
                   f"--config.init={pre_dir}", f"--config.data.task={own_task}",
                   "--config.data.eval_split=test", *TINY])
  err = _one_error_line(capsys.readouterr().err)
  assert code == 2 and "config.data.eval_split='test': 7 of 7 examples" in err
  assert "jaxbert predict --checkpoint WORKDIR --split test" in err
  assert not os.path.exists(workdir / "checkpoints")  # nothing trained


def test_pair_columns_never_silently_become_single_texts(reference_run, tmp_path, capsys):
  """Raw GLUE files (index, sentence1, sentence2, label): the pair is taken by itself; naming
  only one of two text columns is refused with both keys."""
  folder = tmp_path / "rte"
  folder.mkdir()
  rows = [[i, f"ka lo {i}", f"mi ne {i}", "entailment" if i % 2 else "not_entailment"]
          for i in range(12)]
  for split in ("train", "dev"):
    _write_table(folder / f"{split}.tsv", ["index", "sentence1", "sentence2", "label"], rows)
  src = file_formats.PARSERS["tsv"](str(folder / "dev.tsv"), "tsv", "dev", {}, None)
  assert src.columns == ("sentence1", "sentence2")
  assert (src.examples[3]["text"], src.examples[3]["text_pair"]) == ("ka lo 3", "mi ne 3")
  pre_dir, _ = reference_run
  code = cli.main(["finetune", "--config", LOCAL, "--workdir", str(tmp_path / "w"),
                   f"--config.init={pre_dir}", f"--config.data.task={folder}", *TINY,
                   "--config.data.options.text_column=sentence2"])
  err = _one_error_line(capsys.readouterr().err)
  assert code == 2 and ("has the text column 'sentence1' besides config.data.options.text_column='sentence2'"
          in err and "config.data.options.text_pair_column=''" in err)


@pytest.mark.parametrize("header,options,want", [
    (["question", "sentence", "label"], {}, ("question", "sentence")),
    (["premise", "hypothesis", "label"], {}, ("premise", "hypothesis")),
    (["id", "question1", "question2", "label"], {}, ("question1", "question2")),
    (["text", "text_pair", "label"], {}, ("text", "text_pair")),
    (["sentence", "label"], {}, ("sentence",)),
    (["sentence1", "sentence2", "label"], {"text_column": "sentence1"}, ("sentence1", "sentence2")),
    (["sentence1", "sentence2", "label"], {"text_column": "sentence2", "text_pair_column": ""},
     ("sentence2",)),
    (["review", "title", "label"], {"text_column": "review"}, ("review",)),
])
def test_text_columns(header, options, want):
  assert file_formats.text_columns(header, options, "f.tsv") == want


@pytest.mark.parametrize("header,options,message", [
    (["review", "label"], {}, "no column 'text'; set config.data.options.text_column=NAME"),
    (["text", "sentence2", "label"], {},
     "has the text column 'sentence2' besides config.data.options.text_column='text'"),
    (["a", "b"], {"text_column": "a", "text_pair_column": "c"},
     "no column 'c' (config.data.options.text_pair_column)"),
])
def test_text_column_errors_name_the_config_keys(header, options, message):
  with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
    file_formats.text_columns(header, options, "f.tsv")


def _parse(path, **options):
  fmt = "csv" if str(path).endswith(".csv") else "tsv"
  return file_formats.PARSERS[fmt](str(path), fmt, "train", options, None)


def test_csv_quoting_decoded_plain_quotes_kept_mixtures_refused(tmp_path):
  texts = ['The ""extensive"" search', 'a "b" c', "tab\there", 'ends "', "plain"]
  _write_table(tmp_path / "quoted.tsv", ["text", "label"], [[t, "x"] for t in texts])
  assert [e["text"] for e in _parse(tmp_path / "quoted.tsv").examples] == texts
  # GLUE's own files: quote marks inside unquoted text are text.
  (tmp_path / "glue.tsv").write_text('sentence\tlabel\n"Hi" , she said\t1\nit \'s " ok\t0\n')
  assert [e["text"] for e in _parse(tmp_path / "glue.tsv").examples] == \
      ['"Hi" , she said', 'it \'s " ok']
  # CSV quoting on one line and a stray quote on another: which is meant is unknown.
  (tmp_path / "mixed.tsv").write_text('text\tlabel\n"a ""b"" c"\tx\nplain\tx\nsay "hi"\tx\n')
  with pytest.raises(UserError, match=r"mixed.tsv:4: a quote mark outside a quoted field.*"
                                      r"line 2.*config.data.options.quoting=none"):
    _parse(tmp_path / "mixed.tsv")
  assert _parse(tmp_path / "mixed.tsv", quoting="none").examples[0]["text"] == '"a ""b"" c"'
  (tmp_path / "bad.csv").write_text('text,label\nfine,x\n"never closed,x\n')
  with pytest.raises(UserError, match=r"bad.csv:3: unbalanced CSV quoting.*quoting=none"):
    _parse(tmp_path / "bad.csv")
  with pytest.raises(UserError, match=r"config.data.options.quoting='yes' is not one of"):
    _parse(tmp_path / "glue.tsv", quoting="yes")


def test_validation_split_is_the_dev_or_valid_file(tmp_path):
  (tmp_path / "train.tsv").write_text("text\tlabel\na\tx\n")
  (tmp_path / "dev.tsv").write_text("text\tlabel\nb\tx\n")
  assert local_files.resolve_file(str(tmp_path), "validation", None)[0].endswith("dev.tsv")
  (tmp_path / "conll").mkdir()
  (tmp_path / "conll" / "valid.txt").write_text("Kalo B-PER\n")
  assert local_files.resolve_file(str(tmp_path / "conll"), "validation", None)[0].endswith(
      "valid.txt")
  with pytest.raises(UserError, match=r"no file for split 'test' \(looked for \{test\}"):
    local_files.resolve_file(str(tmp_path), "test", None)


def test_data_locations_come_from_the_command_line_or_the_environment(tmp_path, monkeypatch,
                                                                      capsys):
  monkeypatch.delenv("JAXBERT_DATA_DIR", raising=False)
  monkeypatch.delenv("JAXBERT_CORPUS", raising=False)
  w = str(tmp_path / "w")
  cases = [
      (["finetune", "--config", "configs/finetune/sst2.py"], {},
       "config.data.data_dir is empty: the tfds task glue/sst2 is read from a folder of "
       "prepared tfds datasets; set --config.data.data_dir=DIR or the environment variable "
       "JAXBERT_DATA_DIR=DIR"),
      (["finetune", "--config", "configs/finetune/sst2.py"],
       {"JAXBERT_DATA_DIR": str(tmp_path / "nowhere")},
       f"config.data.data_dir={tmp_path / 'nowhere'} (from JAXBERT_DATA_DIR): no such directory"),
      (["finetune", "--config", "configs/finetune/cola.py", f"--config.data.data_dir={tmp_path}"],
       {}, f"config.data.data_dir={tmp_path} holds no prepared glue/cola"),
      (["finetune", "--config", LOCAL], {}, "data.task='' is invalid: set "
       "--config.data.task=path/to/folder"),
      (["finetune", "--config", LOCAL, f"--config.data.task={tmp_path / 'mine'}"], {},
       f"config.data.task={tmp_path / 'mine'}: no such file or directory, nor a tfds task"),
      (["pretrain", "--config", "configs/pretrain/mini.py"], {},
       "config.data.corpus is empty; set --config.data.corpus=PATH (a file, folder or glob of "
       "text, or tfds:NAME) or the environment variable JAXBERT_CORPUS"),
      (["pretrain", "--config", "configs/pretrain/mini.py"],
       {"JAXBERT_CORPUS": str(tmp_path / "text")},
       f"config.data.corpus={tmp_path / 'text'} (from JAXBERT_CORPUS): the corpus path "
       f"{tmp_path / 'text'} does not exist"),
  ]
  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    for argv, env, message in cases:
      for k, v in env.items():
        monkeypatch.setenv(k, v)
      # Fine-tuning runs need an init; any existing path passes the config check.
      init = ["--config.init=configs"] if argv[0] == "finetune" else []
      assert cli.main([*argv, "--workdir", w, *init]) == 2
      err = capsys.readouterr().err
      assert err.startswith("jaxbert: error: ") and err.count("\n") == 1, err
      assert message in err, err
      for k in env:
        monkeypatch.delenv(k)
  finally:
    os.chdir(cwd)
  assert not os.path.exists(w)


def test_shipped_configs_name_no_machine_paths_and_read_the_environment(monkeypatch):
  for sub in ("finetune", "pretrain"):
    folder = os.path.join(ROOT, "configs", sub)
    for name in os.listdir(folder):
      with open(os.path.join(folder, name), encoding="utf-8") as f:
        assert "shared" not in f.read(), name
  tfds_dir = shared_data_or_skip("tfds")
  corpus = shared_data_or_skip("corpus")
  monkeypatch.setenv("JAXBERT_DATA_DIR", tfds_dir)
  monkeypatch.setenv("JAXBERT_CORPUS", corpus)
  c = C.load(os.path.join(ROOT, "configs", "finetune", "sst2.py"),
             [f"--config.init={ROOT}"])
  assert c.data.data_dir == tfds_dir and c.name == "finetune-glue-sst2"
  assert C.load(os.path.join(ROOT, "configs", "pretrain", "mini.py")).data.corpus == corpus
