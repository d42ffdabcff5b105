"""A learning-rate x seed sweep on glue/sst2 (the sst2.py settings otherwise).

  jaxbert sweep --config configs/finetune/sst2_sweep.py --workdir runs/sst2_sweep \
      --config.init=CHECKPOINT

Eight trials, trained side by side in one program; the best learning rate is the
one with the best median validation accuracy over the two seeds.
"""

import importlib.util
import os


def get_config():
  spec = importlib.util.spec_from_file_location(
      "sst2", os.path.join(os.path.dirname(os.path.abspath(__file__)), "sst2.py"))
  sst2 = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(sst2)
  config = sst2.get_config()
  config.sweep.space.optim.lr = [1e-5, 2e-5, 3e-5, 5e-5]
  config.sweep.space.train.seed = [0, 1]
  return config
