"""The pre-training corpus: text files or a tfds dataset -> documents -> DocumentStore.

A user's own text goes through a tfds builder (`TextCorpus`) that stores it as
array_record in a data_dir, so a corpus is read, decoded and split into documents once
and every later run reads the prepared records. Named tfds datasets (Wikipedia, C4,
...) are read straight from their prepared array_record files.

Input convention for text files (original BERT): one sentence or paragraph per line,
a blank line between documents.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import itertools
import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from jaxbert.data import utf8
from jaxbert.data.docstore import DocumentStore
from jaxbert.data.sentences import split_sentences
from jaxbert.errors import UserError
from jaxbert.progress import QuietPreparation, progress_bar, quiet_tfds_when_logging
from jaxbert.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

TFDS_PREFIX = "tfds:"
_GLOB_CHARS = frozenset("*?[")
# Records fetched per random-access read when streaming a data source.
_READ_CHUNK = 256
# Sentences per encode_batch call in build_docstore (bounds memory, keeps threads busy).
_ENCODE_CHUNK = 16384


# ----------------------------------------------------------------------------------
# Local text files through a tfds builder.


def resolve_files(source: str) -> list[str]:
  """Absolute paths of the corpus files `source` names: a file, a folder or a glob.

  A folder means every regular file below it (recursively), skipping hidden names;
  a glob is expanded with `**` allowed. Sorted, so the order never depends on the
  file system.
  """
  path = os.path.expanduser(source)
  if _GLOB_CHARS & set(path):
    files = [f for f in glob.glob(path, recursive=True) if os.path.isfile(f)]
    if not files:
      raise UserError(f"corpus glob {source} matches no files.")
  elif os.path.isdir(path):
    files = []
    for root, dirs, names in os.walk(path):
      dirs[:] = [d for d in dirs if not d.startswith(".")]
      files.extend(os.path.join(root, n) for n in names if not n.startswith("."))
    if not files:
      raise UserError(f"corpus folder {source} holds no files.")
  elif os.path.isfile(path):
    files = [path]
  else:
    raise UserError(f"corpus path {source} does not exist; give a text file, a folder of "
                    f"text files, a glob, or {TFDS_PREFIX}<name> for a tfds dataset.")
  return sorted(os.path.abspath(f) for f in files)


def check_text_files(source: str) -> list[str]:
  """`resolve_files(source)`, each checked to be text, and some text in them: a wrong
  path or an empty corpus is reported before any work (or file) is done."""
  files = resolve_files(source)
  for path in files:  # a binary file is a wrong path, not text
    problem = utf8.binary_problem(path)
    if problem:
      raise UserError(f"corpus file {path} is not text: {problem}; give text files as "
                      "config.data.corpus (one sentence or paragraph per line)")
  if not any(_has_text(path) for path in files):
    raise UserError(f"corpus {source} has no text ({len(files)} file(s), all empty "
                    "or blank).")
  return files


def _has_text(path: str) -> bool:
  with open(path, "rb") as f:
    return any(line.strip() for line in f)  # stops at the first line of text


def _corpus_config_name(files: Sequence[str]) -> str:
  """A config name unique to these files' contents, in this order.

  Different corpora prepared into one data_dir get different folders, and editing a
  file gives a fresh preparation instead of silently reusing stale records. Contents,
  not modification times, so a copied or re-mounted corpus (same bytes, new mtimes)
  reuses its preparation; hashing costs about a second per GB, tokenizing minutes.
  """
  h = hashlib.sha256()
  for f in files:
    with open(f, "rb") as fh:
      h.update(hashlib.file_digest(fh, "sha256").digest())
  return "files_" + h.hexdigest()[:16]


@dataclasses.dataclass(eq=False)
class TextCorpusConfig(tfds.core.BuilderConfig):
  """Which files a `TextCorpus` reads (kept out of repr: the list can be long)."""

  files: tuple[str, ...] = dataclasses.field(default=(), repr=False)
  source: str = dataclasses.field(default="", repr=False)


class TextCorpus(QuietPreparation, tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A user's text files as a tfds dataset: one example per document.

  Features: `text` (the document's non-blank lines joined by "\\n") and `id` (its
  position in file order). Single split "train"; examples keep file order. The
  number of undecodable byte sequences per file is kept in `info.metadata`.
  Not registered with tfds: build it with `prepare_text_corpus`.
  """

  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"jaxbert text corpus: {len(cfg.files)} file(s) from {cfg.source}",
        features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(),
            "id": tfds.features.Scalar(dtype=np.int64),
        }),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Local files only.
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    cfg = self.builder_config
    decode_errors = {}
    doc_id = 0
    for path in cfg.files:
      bad_total = 0
      lines = []
      with open(path, "rb") as f:
        for raw in itertools.chain(f, [b""]):  # b"" flushes the last document
          text, bad = utf8.decode(raw)
          bad_total += bad
          text = text.strip()
          if text:
            lines.append(text)
          elif lines:
            yield doc_id, {"text": "\n".join(lines), "id": doc_id}
            doc_id += 1
            lines = []
      decode_errors[path] = bad_total
    if doc_id == 0:
      raise UserError(f"corpus {cfg.source} has no text ({len(cfg.files)} file(s), all empty "
                      "or blank).")
    self.info.metadata["decode_errors"] = decode_errors
    self.info.metadata["num_documents"] = doc_id


class _DropCustomConfigWarning(logging.Filter):
  """tfds warns "Using custom data configuration" for every dynamic config; ours always is."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "Using custom data configuration" not in record.getMessage()


@contextlib.contextmanager
def _quiet_custom_config():
  absl_logger = logging.getLogger("absl")
  f = _DropCustomConfigWarning()
  absl_logger.addFilter(f)
  try:
    yield
  finally:
    absl_logger.removeFilter(f)


def prepare_text_corpus(source: str, data_dir: str) -> TextCorpus:
  """Prepares (once) and returns the `TextCorpus` builder for `source`'s files.

  Re-running with unchanged files reuses the prepared records. A file that is clearly
  not text (`utf8.binary_problem`) is a UserError naming it. Logs a warning per file
  that had undecodable bytes (replaced with U+FFFD) with their count.
  """
  files = check_text_files(source)
  config = TextCorpusConfig(name=_corpus_config_name(files), files=tuple(files),
                            source=source)
  with _quiet_custom_config():
    builder = TextCorpus(config=config, data_dir=data_dir, file_format="array_record")
  quiet_tfds_when_logging()
  # What a failed preparation leaves in data_dir (tfds's downloads/ and the corpus's
  # folders) goes, so that data_dir is as it was; data_dir may be shared by runs.
  made = [p for p in (os.path.join(data_dir, "downloads"),
                      os.path.join(data_dir, TextCorpus.name, config.name),
                      os.path.join(data_dir, TextCorpus.name), data_dir) if not os.path.exists(p)]
  try:
    builder.download_and_prepare()
  except BaseException:
    for path in made:
      shutil.rmtree(path, ignore_errors=True)
    raise
  # Counts in file order; the records may have been prepared from a copy at other paths.
  for path, count in zip(files, (builder.info.metadata.get("decode_errors") or {}).values()):
    utf8.warn_undecodable(path, count)
  return builder


# ----------------------------------------------------------------------------------
# Documents from either kind of source.


def _open_tfds(name: str, split: str, data_dir: str | None):
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise UserError(f"{TFDS_PREFIX}{name}: no such tfds dataset ({str(e).splitlines()[0]})") from e
  except (NotImplementedError, FileNotFoundError, AssertionError, KeyError, ValueError) as e:
    # Missing data surfaces as "random access for TFRECORD not supported" or a
    # missing split; both mean: not prepared as array_record in data_dir.
    raise UserError(
        f"{TFDS_PREFIX}{name} split {split!r} is not available as array_record in "
        f"data_dir {data_dir}; prepare it first with `tfds build {name} --data_dir "
        f"{data_dir} --file_format array_record` ({type(e).__name__}: "
        f"{str(e).splitlines()[0] if str(e) else ''})") from e


def _field(record: dict, text_field: str, where: str) -> str:
  value = record
  for key in text_field.split("/"):
    if not isinstance(value, dict) or key not in value:
      keys = sorted(record) if isinstance(record, dict) else type(record).__name__
      raise UserError(f"{where}: records have no field {text_field!r} (fields: {keys}); "
                      "set text_field.")
    value = value[key]
  if isinstance(value, bytes):
    return value.decode("utf-8", "replace")
  return str(value)


def iter_documents(source: str, *, data_dir: str | None, split: str = "train",
                   text_field: str = "text") -> Iterator[list[str]]:
  """Yields each document as its list of non-blank lines (paragraphs).

  `source` is either
    * `tfds:<name>` (e.g. `tfds:wikipedia/20230601.en`, `tfds:c4/en`): a tfds dataset
      already prepared as array_record in `data_dir`, read with `tfds.data_source`;
      `text_field` names the text feature ("a/b" for a nested one); or
    * anything else: a local file, folder or glob, prepared into `data_dir` through
      `TextCorpus` (blank lines separate documents; `text_field` is ignored).
  `split` accepts tfds slicing, e.g. "train[:1%]".
  """
  if source.startswith(TFDS_PREFIX):
    name = source[len(TFDS_PREFIX):]
    ds = _open_tfds(name, split, data_dir)
  else:
    name = source
    ds = prepare_text_corpus(source, data_dir).as_data_source(split=split)
    text_field = "text"
  for record in _read_all(ds):
    text = _field(record, text_field, name)
    lines = [line.strip() for line in text.split("\n")]
    lines = [line for line in lines if line]
    if lines:
      yield lines


def _read_all(ds: Sequence) -> Iterator[dict]:
  """Every record of a random-access data source, in order."""
  # Batched reads are ~13x faster than ds[k] on array_record (80 vs 1000 us/record).
  getitems = getattr(ds, "__getitems__", None)
  for start in range(0, len(ds), _READ_CHUNK):
    keys = list(range(start, min(start + _READ_CHUNK, len(ds))))
    records = None
    if getitems is not None:
      try:
        records = getitems(keys)
      except TypeError:
        # tfds.testing.mock_data's array_record mock breaks __getitems__ (4.9.10).
        getitems = None
    if records is None:
      records = [ds[k] for k in keys]
    yield from records


# ----------------------------------------------------------------------------------
# Tokenized corpus.


class _StoreBuilder:
  """Accumulates sentences of whole documents and tokenizes them in large batches."""

  def __init__(self, tokenizer: Tokenizer):
    self._tokenizer = tokenizer
    self._sents: list[str] = []
    self._doc_sizes: list[int] = []  # sentences per pending document
    self._tokens: list[np.ndarray] = []
    self._sent_lens: list[np.ndarray] = []
    self._doc_lens: list[np.ndarray] = []
    self.num_tokens = 0

  def add(self, doc: list[str]) -> None:
    n = len(self._sents)
    for line in doc:
      self._sents.extend(split_sentences(line))
    if len(self._sents) > n:
      self._doc_sizes.append(len(self._sents) - n)
    if len(self._sents) >= _ENCODE_CHUNK:
      self.flush()

  def flush(self) -> None:
    if not self._sents:
      return
    encoded = self._tokenizer.encode_batch(self._sents)
    lens = np.fromiter(map(len, encoded), np.int64, count=len(encoded))
    flat = np.fromiter(itertools.chain.from_iterable(encoded), np.int32, count=int(lens.sum()))
    keep = lens > 0  # sentences that tokenize to nothing are dropped
    doc_of_sent = np.repeat(np.arange(len(self._doc_sizes)), self._doc_sizes)
    kept_per_doc = np.bincount(doc_of_sent[keep], minlength=len(self._doc_sizes))
    self._tokens.append(flat)
    self._sent_lens.append(lens[keep])
    self._doc_lens.append(kept_per_doc[kept_per_doc > 0])  # documents left empty are dropped
    self.num_tokens += len(flat)
    self._sents, self._doc_sizes = [], []

  def finish(self) -> DocumentStore:
    self.flush()
    tokens = np.concatenate(self._tokens) if self._tokens else np.zeros(0, np.int32)
    sent_lens = np.concatenate(self._sent_lens) if self._sent_lens else np.zeros(0, np.int64)
    doc_lens = np.concatenate(self._doc_lens) if self._doc_lens else np.zeros(0, np.int64)
    sent_start = np.concatenate([[0], np.cumsum(sent_lens)]).astype(np.int64)
    doc_start = np.concatenate([[0], np.cumsum(doc_lens)]).astype(np.int64)
    return DocumentStore(tokens.astype(np.int32, copy=False), sent_start, doc_start)


def build_docstore(documents: Iterable[list[str]], tokenizer: Tokenizer, *,
                   progress: bool = True) -> DocumentStore:
  """Tokenizes documents (lists of lines) into a DocumentStore.

  Lines are split into sentences (`split_sentences`) and tokenized in batches with
  `tokenizer.encode_batch`; sentences with no pieces and documents with no
  sentences are dropped. Shows a progress bar over documents when `progress`.
  """
  builder = _StoreBuilder(tokenizer)
  total = len(documents) if hasattr(documents, "__len__") else None
  bar = progress_bar(total=total, unit="doc", desc="tokenizing", enabled=progress)
  for i, doc in enumerate(documents):
    builder.add(doc)
    bar.update(1)
    if progress and i % 4096 == 0:
      bar.set_postfix(tokens=builder.num_tokens, refresh=False)
  store = builder.finish()
  bar.set_postfix(tokens=store.num_tokens, refresh=False)
  bar.close()
  return store
