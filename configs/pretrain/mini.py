"""Pre-train the `mini` BERT preset with MLM + NSP.

  jaxbert pretrain --config configs/pretrain/mini.py --workdir runs/mini \
      --config.data.corpus=PATH_OR_tfds:NAME [--config.train.steps=N]
"""

from jaxbert.defaults import pretrain_config


def get_config():
  config = pretrain_config("mini")
  config.tokenizer.vocab_size = 16000
  config.train.batch_size = 64
  config.train.steps = 20_000
  config.optim.lr = 1e-3
  return config
