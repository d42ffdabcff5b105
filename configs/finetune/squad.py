"""Fine-tune extractive QA on SQuAD v1.1.

For a copy of SQuAD v1.1 that holds only its validation split: train on the questions of
the first 80 % of its articles and evaluate on the rest, so no context is in both (plain
`validation[:80%]` slicing would cut articles in half, since tfds stores the split shuffled).

  jaxbert finetune --config configs/finetune/squad.py --workdir runs/squad --config.init=CHECKPOINT \
      --config.data.data_dir=TFDS_DIR   # or export JAXBERT_DATA_DIR=TFDS_DIR
"""

from jaxbert.defaults import finetune_config


def get_config():
  config = finetune_config("squad/v1.1")
  config.data.train_split = "validation"
  config.data.eval_split = "validation"
  config.data.train_options.article_split = (0.0, 0.8)
  config.data.eval_options.article_split = (0.8, 1.0)
  config.data.max_seq_len = 384
  config.data.options.doc_stride = 128
  config.train.batch_size = 32
  config.train.epochs = 2
  config.optim.lr = 1e-4
  return config
