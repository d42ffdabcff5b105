"""Fine-tune on glue/sst2 (read from ../shared/data/tfds; set data.data_dir for your own copy).

  jaxbert finetune --config configs/finetune/sst2.py --workdir runs/sst2 --config.init=CHECKPOINT
"""

from jaxbert.defaults import finetune_config


def get_config():
  config = finetune_config("glue/sst2")
  config.data.data_dir = "../shared/data/tfds"
  config.train.batch_size = 32
  config.train.epochs = 3
  config.optim.lr = 2e-5
  return config
