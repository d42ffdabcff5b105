"""Fine-tune on your own files: a folder with train.tsv, dev.tsv (and test.tsv to label later).

  jaxbert finetune --config configs/finetune/local.py --workdir runs/mytask \
      --config.init=CHECKPOINT --config.data.task=path/to/folder

The folder's dev file is the evaluation split ("validation"); test.* is labeled after
training with `jaxbert predict --checkpoint runs/mytask --split test`. What the files hold
is told on the command line (README, "Your own data"):

  --config.data.options.kind=regression                 # default: classification
  --config.data.options.text_column=review              # default: text, a known pair, sentence
  --config.data.options.text_pair_column=hypothesis     # '' for single texts
  --config.data.options.label_column=stars              # default: label
  --config.data.options.labels=[neg,pos]                # default: the train file's, sorted
  --config.data.options.quoting=none                    # auto (default) | csv | none

CoNLL column files (.conll/.txt) and SQuAD JSON (.json) are read too; the prepared data
goes to WORKDIR/tfds. The run is named after the folder (finetune-<folder>).
"""

from jaxbert.defaults import finetune_config


def get_config():
  config = finetune_config("")  # --config.data.task=path/to/folder
  config.train.batch_size = 32
  config.train.epochs = 3
  config.optim.lr = 5e-5
  return config
