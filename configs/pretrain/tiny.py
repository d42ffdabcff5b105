"""Pre-train the `tiny` BERT preset with MLM + NSP.

  jaxbert pretrain --config configs/pretrain/tiny.py --workdir runs/tiny \
      --config.data.corpus=PATH_OR_tfds:NAME [--config.train.steps=N]
"""

from jaxbert.defaults import pretrain_config


def get_config():
  config = pretrain_config("tiny")
  config.tokenizer.vocab_size = 2000
  config.train.batch_size = 32
  return config
