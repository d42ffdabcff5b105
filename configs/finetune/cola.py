"""Fine-tune on glue/cola (a tfds dataset).

  jaxbert finetune --config configs/finetune/cola.py --workdir runs/cola --config.init=CHECKPOINT \
      --config.data.data_dir=TFDS_DIR   # or export JAXBERT_DATA_DIR=TFDS_DIR
"""

from jaxbert.defaults import finetune_config


def get_config():
  config = finetune_config("glue/cola")
  config.train.batch_size = 32
  config.train.epochs = 3
  config.optim.lr = 5e-5
  return config
