"""Fine-tune on glue/mrpc (read from ../shared/data/tfds; set data.data_dir for your own copy).

  jaxbert finetune --config configs/finetune/mrpc.py --workdir runs/mrpc --config.init=CHECKPOINT
"""

from jaxbert.defaults import finetune_config


def get_config():
  config = finetune_config("glue/mrpc")
  config.data.data_dir = "../shared/data/tfds"
  config.train.batch_size = 32
  config.train.epochs = 3
  config.optim.lr = 5e-5
  return config
