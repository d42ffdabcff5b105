"""Pre-train the `base` BERT preset with MLM + NSP.

  jaxbert pretrain --config configs/pretrain/base.py --workdir runs/base \
      --config.data.corpus=PATH_OR_tfds:NAME [--config.train.steps=N]
"""

from jaxbert.defaults import pretrain_config


def get_config():
  config = pretrain_config("base")
  # BERT's recipe: batch 256, 1M steps, lr 1e-4, 10k warm-up, linear decay.
  config.tokenizer.vocab_size = 30000
  config.train.batch_size = 256
  config.train.steps = 1_000_000
  config.optim.lr = 1e-4
  config.optim.warmup_steps = 10_000
  return config
