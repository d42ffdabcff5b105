"""Instruction tuning of a decoder on your own JSONL examples (jaxbert/instruct.py).

    jaxbert finetune --config configs/finetune/instruct.py --workdir W \
        --config.init=BUNDLE --config.data.train_file=FOLDER_OR_train.jsonl \
        [--config.data.eval_file=dev.jsonl] [--config.lora.rank=8]

BUNDLE is a decoder (`jaxbert import-hf` of a GPT-2/Llama folder or GGUF file, or a
causal-LM run's workdir). A line of the JSONL files is {"prompt": ..., "completion": ...}
or {"messages": [{"role": ..., "content": ...}, ...]} (rendered with the model's chat
template); the loss counts the completion / assistant pieces only.
"""

from jaxbert import defaults


def get_config():
  c = defaults.instruct_config()
  c.data.max_seq_len = 256
  c.data.max_new_tokens = 32
  c.optim.lr = 5e-5
  c.optim.warmup_fraction = 0.05
  c.train.batch_size = 8
  c.train.epochs = 2.0
  c.train.eval_every = 10**9  # once, at the end (early stopping would evaluate more often)
  return c
