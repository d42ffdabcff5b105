"""Fine-tune on conll2003 (a tfds dataset).

  jaxbert finetune --config configs/finetune/conll2003.py --workdir runs/conll2003 --config.init=CHECKPOINT \
      --config.data.data_dir=TFDS_DIR   # or export JAXBERT_DATA_DIR=TFDS_DIR
"""

from jaxbert.defaults import finetune_config


def get_config():
  config = finetune_config("conll2003")
  config.train.batch_size = 32
  config.train.epochs = 3
  config.optim.lr = 5e-5
  config.data.eval_split = "dev"
  return config
