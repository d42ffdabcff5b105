"""config.model keys that would be silently ignored are refused (validate runs `check`).

A size beside a preset that sets it (without model.override_preset_sizes) would be
dropped; in fine-tuning from config.init the architecture is the checkpoint's, so a
preset or size set in the config that differs from it would be too. Keys are "set"
when they differ from jaxbert/defaults.py.
"""

from __future__ import annotations

from jaxbert import defaults
from jaxbert.config import ConfigDict
from jaxbert.errors import UserError

_VOCAB = 128  # the vocabulary does not matter here

# config.model keys that describe the architecture; the others (dropout, dtype, remat, the
# initialisation scale) are the run's own even with config.init.
_SIZE_KEYS = ("num_layers", "hidden_size", "num_heads", "intermediate_size")
_ARCH_KEYS = ("preset", "override_preset_sizes", *_SIZE_KEYS, "hidden_act",
              "max_position_embeddings", "type_vocab_size", "layer_norm_eps")


def check(c: ConfigDict) -> None:
  """No config.model key is silently ignored: a size beside a preset that sets it, or
  (fine-tuning) an architecture that differs from config.init's, which the run takes."""
  if defaults.model_family(c) != "encoder":
    return
  m = c.model
  default = (defaults.pretrain_config() if c.task == "pretrain" else defaults.finetune_config()).model
  if m.preset and not m.override_preset_sizes:
    sizes = defaults.bert_config(m, _VOCAB)
    for k in _SIZE_KEYS:
      if m[k] != default[k] and m[k] != getattr(sizes, k):
        raise UserError(f"config.model.{k}={m[k]} is ignored: config.model.preset={m.preset!r} "
                        f"sets {k}={getattr(sizes, k)}; set --config.model.override_preset_sizes"
                        "=True to use it, or leave it out")
  if c.task != "finetune" or not c.init:
    return  # continued pre-training compares its whole config.model when the task is built
  explicit = [k for k in _ARCH_KEYS if m[k] != default[k]]
  from jaxbert.validate import architecture  # pylint: disable=g-import-not-at-top
  have = architecture(c) if explicit else None  # config.init's, from its small JSON files
  if have is None:  # unreadable: the run says why when it opens it
    return
  want = defaults.bert_config(m, _VOCAB)
  sizes = {"preset", "override_preset_sizes", *_SIZE_KEYS} & set(explicit)
  fields = [f for f in _ARCH_KEYS[2:] if f in explicit or (sizes and f in _SIZE_KEYS)]
  differ = [f for f in fields if getattr(want, f) != getattr(have, f)]
  if differ:
    keys = ", ".join(f"config.model.{k}={m[k]!r}" for k in explicit)
    raise UserError(
        f"{keys} asks for " + ", ".join(f"{f}={getattr(want, f)!r}" for f in differ)
        + f", but config.init={c.init} holds a model with "
        + ", ".join(f"{f}={getattr(have, f)!r}" for f in differ)
        + "; fine-tuning takes the architecture from config.init: drop those config.model "
        "keys (dropout, dtype and remat may differ), or change config.init")
