"""Fine-tune on conll2003 (read from ../shared/data/tfds; set data.data_dir for your own copy).

  jaxbert finetune --config configs/finetune/conll2003.py --workdir runs/conll2003 --config.init=CHECKPOINT
"""

from jaxbert.defaults import finetune_config


def get_config():
  config = finetune_config("conll2003")
  config.data.data_dir = "../shared/data/tfds"
  config.train.batch_size = 32
  config.train.epochs = 3
  config.optim.lr = 5e-5
  config.data.eval_split = "dev"
  return config
