"""Fine-tune on glue/sst2 (a tfds dataset).

  jaxbert finetune --config configs/finetune/sst2.py --workdir runs/sst2 --config.init=CHECKPOINT \
      --config.data.data_dir=TFDS_DIR   # or export JAXBERT_DATA_DIR=TFDS_DIR
"""

from jaxbert.defaults import finetune_config


def get_config():
  config = finetune_config("glue/sst2")
  config.train.batch_size = 32
  config.train.epochs = 3
  config.optim.lr = 2e-5
  return config
