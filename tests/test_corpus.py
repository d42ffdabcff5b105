"""Tests for jaxbert.data.corpus: text-file builder, tfds sources, sentences, DocumentStore."""

from __future__ import annotations

import logging
import os
import random
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxbert import tokenizer as tk
from jaxbert.data import corpus, sentences
from jaxbert.errors import UserError

_WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly "
          "hex jolly boxing frogs near the old river bank").split()


def _paragraph(rng, n_sent):
  sents = []
  for _ in range(n_sent):
    words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 10))]
    sents.append(" ".join(words).capitalize() + ".")
  return " ".join(sents)


@pytest.fixture(scope="module")
def sp(tmp_path_factory):
  rng = random.Random(0)
  sents = [_paragraph(rng, 1) for _ in range(1000)]
  return tk.train_sentencepiece(sents, str(tmp_path_factory.mktemp("spm")), vocab_size=350)


def _write(path, data: bytes):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)


def test_builder_on_folder_with_bad_utf8(tmp_path, caplog):
  src = tmp_path / "corpus"
  _write(str(src / "a.txt"), b"First doc line one.\nFirst doc line two.\n\n\n"
         b"Second doc.\n  \nThird doc, after a whitespace-only line.\n")
  # Two invalid sequences (a lone continuation byte and a truncated 3-byte char),
  # plus a genuine U+FFFD that must not be counted.
  _write(str(src / "sub" / "b.txt"), b"Caf\xe9 ok \x80 here.\r\nnext \xe2\x82 line \xef\xbf\xbd.")
  _write(str(src / ".hidden"), b"never read\n")
  data_dir = str(tmp_path / "tfds")
  with caplog.at_level(logging.WARNING, logger=corpus.logger.name):
    docs = list(corpus.iter_documents(str(src), data_dir=data_dir))
  assert docs == [
      ["First doc line one.", "First doc line two."],
      ["Second doc."],
      ["Third doc, after a whitespace-only line."],
      ["Caf\ufffd ok \ufffd here.", "next \ufffd line \ufffd."],
  ]
  bad = [r.getMessage() for r in caplog.records if "undecodable" in r.getMessage()]
  assert len(bad) == 1 and "b.txt" in bad[0] and ": 3 undecodable" in bad[0]

  builder = corpus.prepare_text_corpus(str(src), data_dir)
  assert builder.info.splits["train"].num_examples == 4
  assert builder.info.metadata["decode_errors"][str(src / "sub" / "b.txt")] == 3
  ds = builder.as_data_source(split="train")
  assert [int(ds[i]["id"]) for i in range(len(ds))] == [0, 1, 2, 3]
  # A copy reuses those records, and the warning names the copy's file.
  shutil.copytree(src, tmp_path / "copy")
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger=corpus.logger.name):
    assert corpus.prepare_text_corpus(str(tmp_path / "copy"), data_dir).data_dir == builder.data_dir
  bad = [r.getMessage() for r in caplog.records if "undecodable" in r.getMessage()]
  assert bad == [f"{tmp_path / 'copy' / 'sub' / 'b.txt'}: 3 undecodable byte sequence(s) "
                 "replaced with U+FFFD (the file is not valid UTF-8)."]


def test_reuse_and_distinct_corpora(tmp_path):
  data_dir = str(tmp_path / "tfds")
  _write(str(tmp_path / "one.txt"), b"Alpha.\n\nBeta.\n")
  _write(str(tmp_path / "two.txt"), b"Gamma.\n")
  b1 = corpus.prepare_text_corpus(str(tmp_path / "one.txt"), data_dir)
  b2 = corpus.prepare_text_corpus(str(tmp_path / "two.txt"), data_dir)
  assert b1.data_dir != b2.data_dir
  # A second call reuses the records: the array_record file is not rewritten.
  shard = [f for f in os.listdir(b1.data_dir) if ".array_record" in f][0]
  mtime = os.stat(os.path.join(b1.data_dir, shard)).st_mtime_ns
  again = corpus.prepare_text_corpus(str(tmp_path / "one.txt"), data_dir)
  assert again.data_dir == b1.data_dir
  assert os.stat(os.path.join(b1.data_dir, shard)).st_mtime_ns == mtime
  # Identity is the files' bytes: a touched or copied corpus reuses the records, an
  # edited one is prepared afresh.
  os.utime(tmp_path / "one.txt", ns=(1, 1))
  (tmp_path / "copy").mkdir()
  _write(str(tmp_path / "copy" / "one.txt"), b"Alpha.\n\nBeta.\n")
  for same in (tmp_path / "one.txt", tmp_path / "copy" / "one.txt"):
    assert corpus.prepare_text_corpus(str(same), data_dir).data_dir == b1.data_dir
  assert os.stat(os.path.join(b1.data_dir, shard)).st_mtime_ns == mtime
  _write(str(tmp_path / "copy" / "one.txt"), b"Alpha.\n\nBeta!\n")
  assert corpus.prepare_text_corpus(str(tmp_path / "copy"), data_dir).data_dir != b1.data_dir
  glob_docs = list(corpus.iter_documents(str(tmp_path / "*.txt"), data_dir=data_dir))
  assert glob_docs == [["Alpha."], ["Beta."], ["Gamma."]]


def test_missing_and_empty_sources(tmp_path):
  data_dir = str(tmp_path / "tfds")
  with pytest.raises(UserError, match="nowhere.txt does not exist"):
    list(corpus.iter_documents(str(tmp_path / "nowhere.txt"), data_dir=data_dir))
  with pytest.raises(UserError, match=r"\*.md matches no files"):
    list(corpus.iter_documents(str(tmp_path / "*.md"), data_dir=data_dir))
  (tmp_path / "emptydir").mkdir()
  with pytest.raises(UserError, match="emptydir holds no files"):
    list(corpus.iter_documents(str(tmp_path / "emptydir"), data_dir=data_dir))
  _write(str(tmp_path / "blank.txt"), b"\n  \n\n")
  with pytest.raises(UserError, match="blank.txt has no text"):
    list(corpus.iter_documents(str(tmp_path / "blank.txt"), data_dir=data_dir))


def test_named_tfds_dataset_with_mock_data(tmp_path):
  with tfds.testing.mock_data(num_examples=7, policy=tfds.testing.MockPolicy.USE_CODE):
    docs = list(corpus.iter_documents("tfds:wikipedia/20230601.en", data_dir=str(tmp_path)))
  assert 1 <= len(docs) <= 7  # random mock strings; an all-blank one is dropped
  assert all(doc and all(isinstance(line, str) and line for line in doc) for doc in docs)

  records = [{"text": b"Para one.\n\nPara two.\n", "title": b"A"},
             {"text": b"   \n", "title": b"B"},
             {"text": "Solo.", "title": b"C"}]
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                              as_data_source_fn=lambda *a, **k: records):
    docs = list(corpus.iter_documents("tfds:wikipedia/20230601.en", data_dir=str(tmp_path)))
    titles = list(corpus.iter_documents("tfds:wikipedia/20230601.en", data_dir=str(tmp_path),
                                        text_field="title"))
    with pytest.raises(UserError, match="no field 'body'.*text.*title"):
      list(corpus.iter_documents("tfds:wikipedia/20230601.en", data_dir=str(tmp_path),
                                 text_field="body"))
  assert docs == [["Para one.", "Para two."], ["Solo."]]
  assert titles == [["A"], ["B"], ["C"]]


def test_named_tfds_errors(tmp_path):
  with pytest.raises(UserError, match="no such tfds dataset"):
    list(corpus.iter_documents("tfds:no_such_dataset_xyz", data_dir=str(tmp_path)))
  with pytest.raises(UserError, match="not available as array_record.*tfds build glue/cola"):
    list(corpus.iter_documents("tfds:glue/cola", data_dir=str(tmp_path)))


@pytest.mark.parametrize("text,expected", [
    ("Hello there. How are you? Fine!", ["Hello there.", "How are you?", "Fine!"]),
    ("Mr. Smith met Dr. Who. Then they left.", ["Mr. Smith met Dr. Who.", "Then they left."]),
    ("Use e.g. Python. It works.", ["Use e.g. Python.", "It works."]),
    ("J. R. R. Tolkien wrote it. 3 books followed.", ["J. R. R. Tolkien wrote it.",
                                                      "3 books followed."]),
    ('He said "Stop." "Why?" she asked.', ['He said "Stop."', '"Why?" she asked.']),
    ("Version 3.14 is out. see below. Done", ["Version 3.14 is out. see below.", "Done"]),
    ("See chapter 3. Next comes 4.", ["See chapter 3.", "Next comes 4."]),
    ("no terminator", ["no terminator"]),
    ("  ", []),
])
def test_split_sentences(text, expected):
  assert sentences.split_sentences(text) == expected


def test_sentences_for_tokenizer_training():
  docs = [[f"Sentence {d}.{s}. Next {d}.{s}." for s in range(3)] for d in range(50)]
  everything = sentences.sentences_for_tokenizer_training(docs, max_sentences=10_000, seed=0)
  assert len(everything) == 300
  sample = sentences.sentences_for_tokenizer_training(docs, max_sentences=40, seed=0)
  assert len(sample) == 40 and len(set(sample)) == 40
  assert set(sample) <= set(everything)
  assert sample == sentences.sentences_for_tokenizer_training(docs, max_sentences=40, seed=0)
  assert sample != sentences.sentences_for_tokenizer_training(docs, max_sentences=40, seed=1)
  # Uniform: late documents are as likely as early ones.
  late = sum(int(s.split()[1].split(".")[0]) >= 25 for s in sample)
  assert 8 <= late <= 32


def test_build_docstore_invariants(sp, monkeypatch):
  rng = random.Random(1)
  docs = [[_paragraph(rng, rng.randint(1, 4)) for _ in range(rng.randint(1, 3))]
          for _ in range(40)]
  docs.insert(5, ["   "])  # no sentences: dropped
  # Small encode batches, so documents span several flushes.
  monkeypatch.setattr(corpus, "_ENCODE_CHUNK", 16)
  store = corpus.build_docstore(iter(docs), sp, progress=False)
  kept = [d for i, d in enumerate(docs) if i != 5]
  assert store.num_docs == len(kept)
  assert store.tokens.dtype == np.int32
  assert store.sent_start.dtype == np.int64 and store.doc_start.dtype == np.int64
  assert store.sent_start[0] == 0 and store.sent_start[-1] == len(store.tokens)
  assert store.doc_start[0] == 0 and store.doc_start[-1] == store.num_sentences
  assert (np.diff(store.sent_start) > 0).all() and (np.diff(store.doc_start) > 0).all()
  assert not np.isin(store.tokens, sp.special_ids).any()
  assert store.tokens.max() < sp.vocab_size
  for d, doc in enumerate(kept):
    sents = [s for line in doc for s in sentences.split_sentences(line)]
    got = [store.sentence(s).tolist() for s in store.doc_sentences(d)]
    assert got == [sp.encode(s) for s in sents]
  empty = corpus.build_docstore([], sp, progress=False)
  assert empty.num_docs == 0 and empty.num_tokens == 0


def test_build_docstore_progress_bar(sp, capsys):
  store = corpus.build_docstore([["A fox jumps."], ["The dog. The frog."]], sp, progress=True)
  assert store.num_docs == 2 and store.num_sentences == 3
  assert "tokenizing" in capsys.readouterr().err
