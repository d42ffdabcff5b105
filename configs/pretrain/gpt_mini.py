"""Pre-train the `gpt-mini` decoder (4 layers, 256 wide) as a causal LM: the 30-minute CPU run
of docs/results.md.

  jaxbert pretrain --config configs/pretrain/gpt_mini.py --workdir runs/gpt-mini \
      --config.data.corpus=PATH_OR_tfds:NAME [--config.train.steps=N]
"""

from jaxbert.defaults import decoder_pretrain_config


def get_config():
  config = decoder_pretrain_config("gpt-mini")
  config.tokenizer.vocab_size = 8000
  config.data.max_seq_len = 256
  config.train.batch_size = 16
  config.train.steps = 800
  # Rows are cheap to build; on a small CPU the cores are better spent on the step.
  config.data.num_workers = 0
  config.train.log_every = 50
  config.train.eval_every = 200
  config.train.checkpoint_every = 100
  config.optim.lr = 2e-3
  config.optim.warmup_steps = 80
  return config
