"""Pre-train the `gpt-tiny` decoder (a few M parameters; tests, smoke runs) as a causal LM.

  jaxbert pretrain --config configs/pretrain/gpt_tiny.py --workdir runs/gpt-tiny \
      --config.data.corpus=PATH_OR_tfds:NAME [--config.train.steps=N]
"""

from jaxbert.defaults import decoder_pretrain_config


def get_config():
  config = decoder_pretrain_config("gpt-tiny")
  config.tokenizer.vocab_size = 1000
  config.data.max_seq_len = 64
  config.data.eval_examples = 64
  config.train.batch_size = 8
  config.train.steps = 200
  config.train.log_every = 20
  config.train.eval_every = 100
  config.train.checkpoint_every = 100
  config.optim.lr = 3e-3
  config.optim.warmup_steps = 20
  return config
