"""Pre-train the `medium` BERT preset with MLM + NSP.

  jaxbert pretrain --config configs/pretrain/medium.py --workdir runs/medium \
      --config.data.corpus=PATH_OR_tfds:NAME [--config.train.steps=N]
"""

from jaxbert.defaults import pretrain_config


def get_config():
  config = pretrain_config("medium")
  config.tokenizer.vocab_size = 30000
  config.train.batch_size = 128
  config.train.steps = 100_000
  config.optim.lr = 5e-4
  return config
