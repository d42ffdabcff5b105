"""A learning-rate x seed sweep on glue/sst2 (settings as configs/finetune/sst2.py).

  jaxbert sweep --config configs/finetune/sst2_sweep.py --workdir runs/sst2_sweep \
      --config.init=CHECKPOINT --config.data.data_dir=TFDS_DIR  # or export JAXBERT_DATA_DIR

Eight trials, trained side by side in one program; the best learning rate is the
one with the best median validation accuracy over the two seeds.
"""

from jaxbert.defaults import finetune_config


def get_config():
  config = finetune_config("glue/sst2")
  config.train.batch_size = 32
  config.train.epochs = 3
  config.sweep.space.optim.lr = [1e-5, 2e-5, 3e-5, 5e-5]
  config.sweep.space.train.seed = [0, 1]
  return config
