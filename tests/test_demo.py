"""The demo's data builders (not the demo itself: that is minutes of training)."""

from __future__ import annotations

import collections
import os

import pytest

from jaxbert import demo
from jaxbert.errors import UserError


def _write(root, rel, text):
  path = os.path.join(root, rel)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)


def test_modules_read_from_sources_in_source_order(tmp_path):
  root = str(tmp_path)
  _write(root, "pkg/__init__.py", '"""The package.\n\nSecond   paragraph,\n  wrapped."""\n')
  _write(root, "pkg/sub.py", '''"""Sub module."""
import sys
if sys:
  def inside_if():
    """Defined under an if."""
class Thing:
  """A thing.

  >>> Thing()
  <Thing>
  """
  def method(self):
    """A method."""
    def nested():
      """Nested function."""
''')
  _write(root, "test/test_pkg.py", '"""A test module."""\n')
  _write(root, "idlelib/shell.py", '"""IDLE."""\n')
  _write(root, "broken.py", '"""Broken."""\ndef (:\n')
  _write(root, "nodoc.py", "x = 1\n")
  modules = demo.stdlib_modules(root)
  assert [m.name for m in modules] == ["pkg", "pkg.sub"]
  assert modules[0].paragraphs == ["The package.", "Second paragraph, wrapped."]
  assert modules[1].paragraphs == ["Sub module.", "Defined under an if.", "A thing.", "A method.",
                                   "Nested function."]


def test_no_sources_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match="no Python sources"):
    demo.stdlib_modules(str(tmp_path))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """The demo's data written twice from two separate scans of the installed stdlib."""
  first = str(tmp_path_factory.mktemp("first"))
  second = str(tmp_path_factory.mktemp("second"))
  return first, demo.write_data(first), second, demo.write_data(second)


def _read(*parts):
  with open(os.path.join(*parts), encoding="utf-8") as f:
    return f.read()


def test_data_is_deterministic(built):
  first, counts1, second, counts2 = built
  assert counts1 == counts2
  for name in ("corpus.txt", "task/train.tsv", "task/dev.tsv"):
    assert _read(first, name) == _read(second, name), name


def test_corpus_is_documents_of_paragraph_lines(built):
  first, counts, _, _ = built
  text = _read(first, "corpus.txt")
  docs = text.rstrip("\n").split("\n\n")
  assert len(docs) == counts["corpus_documents"] > 100
  assert all(doc and "" not in doc.split("\n") for doc in docs)  # no empty lines inside
  assert counts["corpus_words"] == len(text.split()) > 50_000


def _rows(folder, split):
  lines = _read(folder, "task", f"{split}.tsv").rstrip("\n").split("\n")
  assert lines[0] == "text\tlabel"
  rows = [line.split("\t") for line in lines[1:]]
  assert all(len(r) == 2 and r[0].strip() for r in rows)
  return rows


def test_task_is_balanced_and_split_by_module(built):
  first, counts, _, _ = built
  train, dev = _rows(first, "train"), _rows(first, "dev")
  assert (len(train), len(dev)) == (counts["train_examples"], counts["dev_examples"])
  for rows in (train, dev):
    per_class = collections.Counter(label for _, label in rows)
    assert set(per_class) == set(demo.AREAS)
    assert min(per_class.values()) >= 0.5 * max(per_class.values()), per_class
  # Held out by module: no dev paragraph is a training example or in the corpus.
  train_texts = {t for t, _ in train}
  corpus_lines = set(_read(first, "corpus.txt").split("\n"))
  assert not any(t in train_texts or t in corpus_lines for t, _ in dev)
  assert len(train_texts) == len(train)  # no duplicates either


def test_dev_modules_cover_every_area():
  modules = demo.stdlib_modules()
  held = demo.dev_modules(modules)
  areas = {m.area for m in modules if m.name in held}
  assert areas == set(demo.AREAS)
  assert len(held) < 0.4 * sum(m.area is not None for m in modules)
