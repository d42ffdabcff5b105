"""One selector language over parameter names.

It names the parameters that `optim.freeze` freezes and `config.reinit` initialises
afresh, and gives each parameter the depth that `optim.layer_lr_decay` scales its
learning rate by; LoRA targets and decoder models are meant to use it unchanged.

Names. A parameter is named by its '/'-joined path in the model's `params` tree, as
Flax builds it and as handover.json and the checkpoints list it:

    bert/embeddings/word_embeddings/embedding
    bert/encoder/layer_3/attention/query/kernel
    bert/pooler/dense/bias
    classifier/kernel        (heads sit beside the backbone: mlm/..., nsp/..., qa_outputs/...)

These are the Hugging Face names with '/' for '.', `layer_3` for `layer.3`, Flax's
`kernel`/`scale`/`embedding` for `weight` and no `self` level (jaxbert/hf/names.py maps
one to the other). The backbone is a top-level subtree named in BACKBONES; its blocks
are `layer_N` subtrees, N = 0..L-1, in every model family.

Selectors. A selector is items separated by ',' or '|' (a comma or bar inside a
regular expression's brackets, braces or parentheses belongs to the expression); it
selects the union of its items. An item is a regular expression (Python `re`) that
must match a whole name, such as `bert/encoder/layer_(10|11)/.*` or
`.*/attention/(query|value)/kernel`, or a shorthand:

    none            nothing (so does the empty string)
    encoder         the whole backbone of an encoder: bert/.*
    decoder         the whole backbone of a decoder: decoder/.* (not lm_head)
    embeddings      bert/embeddings/.* (a decoder's: decoder/embeddings/.*, the token
                    and, for GPT-2, position tables)
    pooler          bert/pooler/.* (a decoder's counterpart, between the last layer and
                    the head at the same depth: decoder/final_norm/.*)
    bottom:K        the embeddings and layers 0..K-1 (0 <= K <= L)
    top:K           the last K layers (1 <= K <= L)
    layers:I,J,...  those layers (0 <= I < L)

A bare word is always a shorthand (no parameter name is one word), so a misspelt one
is reported as such. Each use takes the shorthands that make sense for it (FREEZE,
REINIT). Every item must select at least one parameter: a typo is an error, never a
silent no-op.

Depth (layer-wise learning rates): 0 for the embeddings, N + 1 for layer_N, L + 1 for
the pooler and everything outside the backbone (the heads).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable

from jaxbert.errors import UserError

# Top-level keys of model backbones; a new model family adds its own.
BACKBONES = ("bert", "decoder")
SHORTHANDS = {
    "none": "none", "encoder": "encoder", "decoder": "decoder", "embeddings": "embeddings",
    "pooler": "pooler",
    "bottom": "bottom:K", "top": "top:K", "layers": "layers:I,J,...",
}
# Freezing the layers next to the head while those below train is almost always a
# mix-up with bottom:K, so `optim.freeze` takes no top:K (a regular expression can).
FREEZE = ("none", "encoder", "decoder", "embeddings", "pooler", "bottom", "layers")
REINIT = ("none", "pooler", "embeddings", "top", "layers")
_WITH_ARGS = ("bottom", "top", "layers")
_LAYER = re.compile(r"layer_(\d+)")
_OPEN, _CLOSE = "([{", ")]}"


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where the backbone and its layers are in a model's parameter names."""

  backbone: str = ""     # top-level key, "" when the tree has none
  layers: str = ""       # the path holding the layer_N subtrees
  num_layers: int = 0


def bert_layout(num_layers: int) -> Layout:
  return Layout("bert", "bert/encoder", num_layers)


def tree_names(tree) -> list[str]:
  """The '/'-joined path of every leaf of a pytree (params or their shapes)."""
  import jax  # pylint: disable=g-import-not-at-top
  return [path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def path_name(path) -> str:
  """A pytree key path as a name: dict keys, attribute names or indices joined by '/'."""
  out = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        out.append(str(getattr(k, attr)))
        break
    else:
      out.append(str(k))
  return "/".join(out)


def layout(names: Iterable[str], needed_for: str | None = None) -> Layout:
  """The backbone and layers found in `names`.

  A tree without a backbone (say the whole `variables` dict instead of
  `variables["params"]`) would make every shorthand select nothing or the wrong
  thing, so it is an error whenever `needed_for` names a use that relies on it.
  """
  names = list(names)
  tops = {n.split("/", 1)[0] for n in names}
  backbone = next((b for b in BACKBONES if b in tops), "")
  if not backbone:
    if needed_for:
      raise ValueError(f"{needed_for} needs the model's parameter tree with a top-level "
                       f"{' or '.join(repr(b) for b in BACKBONES)} key (pass variables['params']); "
                       f"got keys {sorted(tops)[:8]}")
    return Layout()
  found = {}
  for n in names:
    parts = n.split("/")
    if parts[0] != backbone:
      continue
    for i, part in enumerate(parts[1:-1], 1):
      if m := _LAYER.fullmatch(part):
        found.setdefault("/".join(parts[:i]), set()).add(int(m.group(1)))
        break
  if not found:
    return Layout(backbone, f"{backbone}/encoder", 0)
  if len(found) > 1:
    raise ValueError(f"{backbone} has layer_N blocks in several places: {sorted(found)}")
  (where, idx), = found.items()
  idx = sorted(idx)
  if idx != list(range(len(idx))):
    raise ValueError(f"{where} layers are not layer_0..layer_{len(idx) - 1}: {idx}")
  return Layout(backbone, where, len(idx))


def depth(name: str, lay: Layout) -> int:
  """0 for the embeddings, N + 1 for layer_N, L + 1 for the pooler and the heads."""
  b, top = lay.backbone, lay.num_layers + 1
  if not b or not name.startswith(b + "/"):
    return top
  if name.startswith(f"{b}/embeddings/"):
    return 0
  if name.startswith((f"{b}/pooler/", f"{b}/final_norm/")):
    return top
  if m := re.match(rf"{re.escape(lay.layers)}/layer_(\d+)/", name):
    return int(m.group(1)) + 1
  # A silently wrong depth would give a wrong learning rate; make the model and this
  # table agree instead.
  raise ValueError(f"no layer depth for parameter {name}; expected {b}/embeddings, "
                   f"{lay.layers}/layer_i, {b}/pooler or a head outside '{b}'")


# ----------------------------------------------------------------------------- parsing


@dataclasses.dataclass(frozen=True)
class Item:
  text: str
  shorthand: str = ""            # "" for a regular expression
  args: tuple[int, ...] = ()
  regex: re.Pattern | None = None


@dataclasses.dataclass(frozen=True)
class Selector:
  key: str                       # the config key it came from, for messages
  text: str
  items: tuple[Item, ...]
  allowed: tuple[str, ...]

  def error(self, problem: str) -> UserError:
    return UserError(f"{self.key}={self.text!r}: {problem}; {forms(self.allowed)}")

  @property
  def empty(self) -> bool:
    return all(i.shorthand == "none" for i in self.items)

  @property
  def needs_layout(self) -> bool:
    return any(i.shorthand not in ("", "none") for i in self.items)

  def patterns(self, lay: Layout) -> list[tuple[Item, str]]:
    """(item, regular expression) pairs, shorthands expanded for `lay`."""
    out = []
    for item in self.items:
      for p in self._expand(item, lay):
        out.append((item, p))
    return out

  def _expand(self, item: Item, lay: Layout) -> list[str]:
    b, n = lay.backbone, lay.num_layers
    layers = lambda idx: [f"{re.escape(lay.layers)}/layer_({'|'.join(map(str, idx))})/.*"] if idx else []
    s, args = item.shorthand, item.args
    if not s:
      return [item.regex.pattern]
    if s == "none":
      return []
    if s in ("encoder", "decoder"):
      if (s == "decoder") != (b == "decoder"):
        what, other = ("an encoder", "decoder") if s == "encoder" else ("a decoder", "encoder")
        raise self.error(f"{item.text!r} names the backbone of {what}, but this model's "
                         f"backbone is {b!r}: use {other}")
      return [f"{b}/.*"]
    if s == "pooler" and b == "decoder":
      return [f"{b}/final_norm/.*"]
    if s in ("embeddings", "pooler"):
      return [f"{b}/{s}/.*"]
    (k,) = args if s != "layers" else (None,)
    if s == "bottom" and k > n or s == "top" and not 1 <= k <= n:
      raise self.error(f"{item.text!r} is out of range for {n} layers")
    if s == "layers" and max(args) >= n:
      raise self.error(f"{item.text!r} names a layer past the last, layer_{n - 1}")
    if s == "bottom":
      return [f"{b}/embeddings/.*"] + layers(range(k))
    return layers(range(n - k, n) if s == "top" else sorted(set(args)))

  def select(self, names: Iterable[str], lay: Layout | None = None) -> set[str]:
    """The names this selector picks; an item that picks none is a UserError."""
    names = list(names)
    if lay is None:
      lay = layout(names, f"{self.key}={self.text!r}" if self.needs_layout else None)
    chosen: set[str] = set()
    hits: dict[str, int] = {}
    for item, pattern in self.patterns(lay):
      rx = re.compile(pattern)
      got = [n for n in names if rx.fullmatch(n)]
      hits[item.text] = hits.get(item.text, 0) + len(got)
      chosen.update(got)
    for item in self.items:
      if item.shorthand != "none" and not hits.get(item.text):
        raise self.error(f"{item.text!r} matches no parameter of the model (an expression "
                         "must match a whole name)")
    return chosen


def forms(allowed: Iterable[str]) -> str:
  allowed = tuple(allowed)
  return ("give regular expressions over parameter names (e.g. bert/encoder/layer_0/.*) or "
          + ", ".join(SHORTHANDS[a] for a in allowed) + ", separated by ',' or '|'")


def split(text: str) -> list[str]:
  """Items of a selector: split at ',' and '|' outside brackets; a `layers:` list keeps
  the plain numbers that follow it."""
  items, depth_, cur, escaped = [], 0, "", False
  for ch in text:
    if escaped:
      cur, escaped = cur + ch, False
      continue
    if ch == "\\":
      escaped = True
    elif ch in _OPEN:
      depth_ += 1
    elif ch in _CLOSE:
      depth_ = max(depth_ - 1, 0)
    elif ch in ",|" and depth_ == 0:
      items.append(cur.strip())
      cur = ""
      continue
    cur += ch
  items.append(cur.strip())
  merged: list[str] = []
  for it in items:
    if merged and merged[-1].startswith("layers:") and re.fullmatch(r"\d+", it):
      merged[-1] += "," + it
    else:
      merged.append(it)
  return [it for it in merged if it] if any(merged) else []


def parse(text: str, key: str, allowed: Iterable[str]) -> Selector:
  """Checks the syntax of `text` (regular expressions compile, shorthands are known and
  well formed); names are needed only to `select`."""
  allowed = tuple(allowed)
  if not isinstance(text, str):
    raise UserError(f"{key}={text!r} is invalid: must be a string; {forms(allowed)}")
  sel = Selector(key, text, (), allowed)
  items = []
  for part in split(text) or ["none"]:
    word, colon, arg = part.partition(":")
    if re.fullmatch(r"[A-Za-z_]+", word):  # a bare word or word:args is a shorthand
      items.append(_shorthand(sel, part, word, colon, arg))
      continue
    try:
      items.append(Item(part, regex=re.compile(part)))
    except re.error as e:
      raise sel.error(f"{part!r} is not a valid regular expression ({e})") from None
  return Selector(key, text, tuple(items), allowed)


def _shorthand(sel: Selector, part: str, word: str, colon: str, arg: str) -> Item:
  if word not in sel.allowed:
    close = difflib.get_close_matches(word, list(sel.allowed), n=1, cutoff=0.6)
    hint = f" (did you mean {SHORTHANDS[close[0]]}?)" if close else ""
    what = "does not apply here" if word in SHORTHANDS else "is not a shorthand"
    raise sel.error(f"{part!r} {what}{hint}")
  if (word in _WITH_ARGS) != bool(colon):
    raise sel.error(f"{part!r}: use {SHORTHANDS[word]}")
  if not colon:
    return Item(part, word)
  values = [a.strip() for a in arg.split(",")]
  if not all(re.fullmatch(r"\d+", a) for a in values) or (word != "layers" and len(values) != 1):
    raise sel.error(f"{part!r}: use {SHORTHANDS[word]} with whole numbers")
  return Item(part, word, tuple(int(a) for a in values))
