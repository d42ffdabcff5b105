"""The selector language over parameter names (jaxbert/params.py)."""

import re

import jax
import pytest

from jaxbert import handover, optim
from jaxbert import params as P
from jaxbert.errors import UserError
from jaxbert.model import BertForPreTraining, dummy_batch, preset

L = 3


@pytest.fixture(scope="module")
def names():
  """The real parameter names of a 3-layer BertForPreTraining."""
  cfg = preset("tiny", vocab_size=64).replace(num_layers=L)
  shapes = jax.eval_shape(lambda: BertForPreTraining(cfg).init(jax.random.key(0), dummy_batch(cfg)))
  return P.tree_names(shapes["params"])


def pick(text, names, allowed=P.FREEZE):
  return P.parse(text, "optim.freeze", allowed).select(names)


def under(names, *prefixes):
  return {n for n in names if n.startswith(prefixes)}


def test_layout_of_the_real_model(names):
  assert P.layout(names) == P.Layout("bert", "bert/encoder", L)
  assert "bert/encoder/layer_2/attention/query/kernel" in names


def test_shorthands_select_what_they_did_before(names):
  emb, pooler = "bert/embeddings/", "bert/pooler/"
  layer = lambda *i: tuple(f"bert/encoder/layer_{k}/" for k in i)
  assert pick("none", names) == pick("", names) == set()
  assert pick("encoder", names) == under(names, "bert/")
  assert pick("embeddings", names) == under(names, emb)
  assert pick("bottom:0", names) == under(names, emb)
  assert pick("bottom:2", names) == under(names, emb, *layer(0, 1))
  assert pick("layers:0,2", names) == under(names, *layer(0, 2))
  top = P.parse("pooler, top:2", "config.reinit", P.REINIT).select(names)
  assert top == under(names, pooler, *layer(1, 2))
  # The same patterns that handover applies to a checkpoint of L layers.
  patterns = handover.reinit_prefixes("pooler, top:2", L)
  assert {n for n in names if any(re.fullmatch(p, n) for p in patterns)} == top


def test_regular_expressions_and_unions(names):
  q_v = pick(".*/attention/(query|value)/kernel", names)
  assert len(q_v) == 2 * L and all(n.endswith("/kernel") for n in q_v)
  # ',' and '|' separate items outside brackets; inside they belong to the expression.
  both = pick("bert/encoder/layer_(0|1)/output/.*|bert/pooler/.*,mlm/.*", names)
  assert both == (under(names, "bert/pooler/", "mlm/")
                  | under(names, "bert/encoder/layer_0/output/", "bert/encoder/layer_1/output/"))
  assert pick("bert/encoder/layer_[0-9]{1,2}/intermediate/dense/kernel", names) == {
      f"bert/encoder/layer_{i}/intermediate/dense/kernel" for i in range(L)}
  assert pick("layers:1,2|embeddings", names) == under(
      names, "bert/encoder/layer_1/", "bert/encoder/layer_2/", "bert/embeddings/")


@pytest.mark.parametrize("bad,problem", [
    ("bert/encoder/layr_0/.*", "matches no parameter"),
    ("bert/encoder/layer_1", "matches no parameter"),   # a whole name, not a prefix
    ("pooler,nsp/dense/.*", "matches no parameter"),    # one item of several
    ("bert/(pooler", "not a valid regular expression"),
    ("encodr", "did you mean encoder"),
    ("top:1", "does not apply here"),
    ("bottom:4", "out of range"),
    ("layers:0,3", "past the last"),
    ("layers:", "whole numbers"),
    ("bottom", "use bottom:K"),
])
def test_bad_selectors_name_the_key_and_the_forms(names, bad, problem):
  with pytest.raises(UserError, match=problem) as e:
    pick(bad, names)
  assert str(e.value).startswith(f"optim.freeze={bad!r}: ") and "bottom:K" in str(e.value)


def test_depth_for_layer_wise_rates(names):
  lay = P.layout(names)
  assert P.depth("bert/embeddings/LayerNorm/scale", lay) == 0
  assert P.depth("bert/encoder/layer_2/output/dense/bias", lay) == 3
  assert P.depth("bert/pooler/dense/kernel", lay) == P.depth("nsp/kernel", lay) == L + 1
  with pytest.raises(ValueError, match="bert/extra/w"):
    P.depth("bert/extra/w", lay)


def test_freezing_by_regex_in_the_optimizer(names):
  import numpy as np
  from test_optim import fake_params
  params = fake_params()
  labels = {P.path_name(p): l for p, l in jax.tree_util.tree_flatten_with_path(
      optim.param_labels(params, {"freeze": ".*/attention/.*, embeddings"}))[0]}
  frozen = {n for n, l in labels.items() if l == optim.FROZEN}
  assert frozen == {n for n in labels if "/attention/" in n or n.startswith("bert/embeddings/")}
  trainable, total = optim.trainable_count(params, "bert/encoder/layer_1/.*")
  sizes = {P.path_name(p): int(np.size(v)) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  assert total - trainable == sum(n for k, n in sizes.items() if k.startswith("bert/encoder/layer_1/"))
