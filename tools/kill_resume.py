"""Kill -9 tiny training runs at many moments; each restart must end bitwise equal.

    .venv/bin/python tools/kill_resume.py                  # pre-training and fine-tuning
    .venv/bin/python tools/kill_resume.py --task finetune --keep --root /tmp/kr
    .venv/bin/python tools/kill_resume.py --task gpt       # causal-LM pre-training (gpt-tiny)

For each task, one uninterrupted run is the reference. Then, for every kill moment
below, a fresh run is killed with SIGKILL at that moment (no handler runs, nothing
is flushed), started again with the same command, and its final train state (step,
parameters, optimizer state) compared bitwise with the reference's. Prints a line
per kill and `N/N resumed bitwise` per task; exits 1 if any differs.

Kill moments (K is a step):
  time:S      S seconds after the process started (start-up, data preparation, compile)
  file:PATH   as soon as WORKDIR/PATH exists (e.g. the tokenizer, before the corpus is
              tokenized; the task files' preparation)
  step:K      when the trainer takes the batch of step K (steps before it may still run)
  write:K     as soon as Orbax has created the temporary folder of checkpoint K
  seal:K      checkpoint K written, before its integrity record
  sealed:K    integrity record written, before the folder is committed (renamed)
  committed:K just after checkpoint K is committed
  full:K      not a kill: writing checkpoint K fails with ENOSPC (a full disk)

The runs are the real command (`jaxbert.cli.main`) in a child process of this script
(`kill_resume.py child --kill MOMENT -- pretrain --config ...`), which arms the kill.
The child's `--slow S` sleeps S seconds per step, so that a signal sent from outside
lands mid-training (tests use it for SIGTERM and multi-process runs). Runs share a
JAX compilation cache, so only the first one compiles.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

TOOL = os.path.abspath(__file__)
REPO = os.path.dirname(os.path.dirname(TOOL))

PRETRAIN_STEPS, PRETRAIN_CKPT = 12, 3
FINETUNE_STEPS, FINETUNE_CKPT = 24, 4  # 2 epochs of 96 examples, batch 8

# Kill moments per task: setup, before the first checkpoint, inside every phase of a
# checkpoint write (first, middle and last checkpoint), and between checkpoints.
PRETRAIN_KILLS = ("file:tokenizer/spm.model", "step:1", "write:3", "step:4", "seal:6",
                  "sealed:6", "committed:6", "step:8", "write:9", "sealed:12", "committed:12",
                  "step:11")
GPT_KILLS = ("file:tokenizer/spm_lm.model",) + PRETRAIN_KILLS[1:]
FINETUNE_KILLS = ("file:tfds", "file:handover.json", "write:4", "step:6", "seal:8", "sealed:12",
                  "committed:12", "step:15", "write:16", "seal:24", "committed:24", "step:23")


# ----------------------------------------------------------------------------- data, configs


def write_corpus(path: str, num_docs: int = 80, seed: int = 0) -> str:
  """Synthetic documents with topic words, one bad UTF-8 byte and one over-long line."""
  rng = np.random.default_rng(seed)
  syll = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "be", "da", "fe", "go"]
  words = sorted({"".join(rng.choice(syll, rng.integers(1, 4))) for _ in range(300)})
  common = ["the", "a", "of", "and", "to", "is", "in", "it"]
  docs = []
  for _ in range(num_docs):
    topic = rng.choice(words, 10, replace=False)
    lines = []
    for _ in range(rng.integers(3, 8)):
      n = rng.integers(4, 14)
      toks = [rng.choice(common) if rng.random() < 0.4 else
              (rng.choice(topic) if rng.random() < 0.6 else rng.choice(words)) for _ in range(n)]
      lines.append(" ".join(toks).capitalize() + ".")
    docs.append("\n".join(lines))
  docs[1] += "\n" + " ".join(rng.choice(words, 200)) + " without an end"  # > max_seq_len
  data = "\n\n".join(docs).encode()
  data = data.replace(b"the", b"th\xff", 1)  # not UTF-8: decoded with a replacement
  with open(path, "wb") as f:
    f.write(data + b"\n")
  return path


def write_task(folder: str, seed: int = 0) -> str:
  """A two-class TSV task (does the sentence contain 'kalo'?), train 96 / dev 37 rows.

  train.tsv holds one row longer than max_seq_len and one byte that is not UTF-8.
  """
  rng = np.random.default_rng(seed)
  words = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "the", "of", "and"]
  os.makedirs(folder, exist_ok=True)
  for split, n in (("train", 96), ("dev", 37)):
    rows = ["text\tlabel"]
    for i in range(n):
      toks = list(rng.choice(words, 60 if split == "train" and i == 3 else rng.integers(4, 10)))
      label = rng.random() < 0.5
      if label:
        toks.insert(rng.integers(len(toks)), "kalo")
      rows.append(" ".join(toks) + "\t" + ("yes" if label else "no"))
    data = ("\n".join(rows) + "\n").encode()
    if split == "train":
      data = data.replace(b"the", b"th\xff", 1)
    with open(os.path.join(folder, f"{split}.tsv"), "wb") as f:
      f.write(data)
  return folder


_PRETRAIN_CONFIG = '''"""A 2-layer, 32-wide BERT on a tiny corpus (tools/kill_resume.py)."""
from jaxbert.defaults import pretrain_config


def get_config():
  c = pretrain_config("tiny")
  c.name = "kill-resume-pretrain"
  c.model.override_preset_sizes = True
  c.model.update(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                 max_position_embeddings=64)
  c.data.update(corpus={corpus!r}, max_seq_len=32, max_predictions_per_seq=5, num_workers=0,
                eval_examples=16, heldout_fraction=0.1)
  c.tokenizer.update(vocab_size=400, train_sentences=5000)
  c.optim.update(lr=1e-3, warmup_steps=2)
  c.train.update(steps={steps}, batch_size=8, log_every=2, eval_every=6,
                 checkpoint_every={ckpt}, keep_checkpoints=3, progress=False, peak_flops=1e12)
  return c
'''

# The same run as a narrow gpt-tiny decoder (causal LM; --task gpt).
_GPT_CONFIG = (_PRETRAIN_CONFIG.replace("pretrain_config", "decoder_pretrain_config")
               .replace('"tiny"', '"gpt-tiny"').replace("kill-resume-pretrain", "kill-resume-gpt")
               .replace("c.model.override_preset_sizes = True", "c.model.num_kv_heads = 2")
               .replace(" max_predictions_per_seq=5,", "").replace("BERT", "decoder"))

_FINETUNE_CONFIG = '''"""Fine-tune the tiny BERT on a local TSV task (tools/kill_resume.py)."""
from jaxbert.defaults import finetune_config


def get_config():
  c = finetune_config({task!r})
  c.name = "kill-resume-finetune"
  c.init = {init!r}
  c.data.update(train_split="train", eval_split="dev", max_seq_len=32)
  c.train.update(batch_size=8, epochs=2.0, log_every=4, eval_every=12,
                 checkpoint_every={ckpt}, keep_checkpoints=3, progress=False, peak_flops=1e12)
  c.optim.update(lr=1e-3, warmup_fraction=0.1)
  return c
'''


def write_pretrain_config(path: str, corpus: str, steps: int = PRETRAIN_STEPS,
                          ckpt: int = PRETRAIN_CKPT) -> str:
  with open(path, "w") as f:
    f.write(_PRETRAIN_CONFIG.format(corpus=corpus, steps=steps, ckpt=ckpt))
  return path


def write_finetune_config(path: str, init: str, task: str, ckpt: int = FINETUNE_CKPT) -> str:
  with open(path, "w") as f:
    f.write(_FINETUNE_CONFIG.format(init=init, task=task, ckpt=ckpt))
  return path


# ----------------------------------------------------------------------------- the child


def _kill_self():
  os.kill(os.getpid(), signal.SIGKILL)


def _watch(path_test, interval=0.0005):
  """Kills this process as soon as `path_test()` holds (polled from a thread)."""

  def loop():
    while not path_test():
      time.sleep(interval)
    _kill_self()

  threading.Thread(target=loop, daemon=True).start()


def arm(moment: str, workdir: str, slow: float = 0.0) -> None:
  """Installs the kill `moment` (see the module docstring) and the per-step sleep."""
  from jaxbert import checkpoint  # pylint: disable=g-import-not-at-top
  from jaxbert import clm, finetune, pretrain  # pylint: disable=g-import-not-at-top
  kind, _, arg = moment.partition(":")
  root = os.path.join(os.path.abspath(workdir), "checkpoints")
  kill_step = int(arg) if kind == "step" else None
  for cls in (pretrain.PretrainTask, finetune.FinetuneTask, clm.CausalLMTask):
    original = cls.batches

    def batches(self, start_step, *args, original=original):
      for step, batch in enumerate(original(self, start_step, *args), start_step):
        if step == kill_step:
          _kill_self()
        if slow:
          time.sleep(slow)
        yield batch

    cls.batches = batches
  if kind == "time":
    threading.Timer(float(arg), _kill_self).start()
  elif kind == "write":
    prefix = f"{arg}.orbax-checkpoint-tmp"
    _watch(lambda: os.path.isdir(root) and any(n.startswith(prefix) for n in os.listdir(root)))
  elif kind == "committed":
    _watch(lambda: os.path.isdir(os.path.join(root, arg)))
  elif kind == "file":
    _watch(lambda: os.path.exists(os.path.join(workdir, arg)))
  elif kind == "full":  # not a kill: the disk fills while checkpoint K is written
    seal = checkpoint.seal

    def disk_full(directory):
      if os.path.basename(directory).split(".")[0] == arg:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC),
                      os.path.join(directory, checkpoint.INTEGRITY_JSON))
      seal(directory)

    checkpoint.seal = disk_full
  elif kind in ("seal", "sealed"):
    seal = checkpoint.seal

    def sealing(directory):
      if os.path.basename(directory).split(".")[0] == arg:
        if kind == "sealed":
          seal(directory)
        _kill_self()
      seal(directory)

    checkpoint.seal = sealing
  elif kind not in ("", "none", "step"):  # step: armed in `batches` above
    raise SystemExit(f"unknown kill moment {moment!r}")


def child_main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog="kill_resume.py child")
  p.add_argument("--kill", default="none")
  p.add_argument("--slow", type=float, default=0.0)
  args, rest = p.parse_known_args(argv)
  rest = rest[1:] if rest[:1] == ["--"] else rest
  workdir = rest[rest.index("--workdir") + 1]
  arm(args.kill, workdir, args.slow)
  from jaxbert import cli  # pylint: disable=g-import-not-at-top
  return cli.main(rest)


# ----------------------------------------------------------------------------- the parent


def child_env(cache_dir: str | None = None, devices: int = 1) -> dict[str, str]:
  """A child's environment: CPU, `devices` devices, a shared compilation cache."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    env.pop(k, None)
  if cache_dir:
    env.update(JAX_COMPILATION_CACHE_DIR=cache_dir,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
  return env


def child_command(command: str, config: str, workdir: str, kill: str = "none",
                  slow: float = 0.0, overrides=()) -> list[str]:
  return [sys.executable, TOOL, "child", "--kill", kill, "--slow", str(slow), "--",
          command, "--config", config, "--workdir", workdir, *overrides]


def run_child(command, config, workdir, *, env, kill="none", slow=0.0, overrides=(),
              timeout=600) -> subprocess.CompletedProcess:
  return subprocess.run(child_command(command, config, workdir, kill, slow, overrides),
                        env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def final_state(workdir: str, step: int | None = None) -> tuple[int, dict[str, np.ndarray]]:
  """(step, {path: array}) of the whole train state in a workdir's checkpoint `step`
  (default: the newest)."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top
  root = os.path.join(workdir, "checkpoints")
  if step is None:
    step = max(int(n) for n in os.listdir(root) if n.isdigit())
  path = os.path.join(root, str(step), "default")
  # Onto one local device, whatever devices (and processes) wrote it: without a target
  # Orbax wants the writers' device mesh back.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  handler = ocp.StandardCheckpointHandler()
  try:
    saved = handler.metadata(epath.Path(path))
  finally:
    handler.close()
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved)
  with ocp.StandardCheckpointer() as c:
    state = c.restore(path, target)
  flat = {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_flatten_with_path(state)[0]}
  return step, flat


def differing_leaves(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> list[str]:
  """Paths whose arrays differ (or exist on one side only); [] when equal bit for bit."""
  return [k for k in sorted(set(a) | set(b))
          if k not in a or k not in b or a[k].dtype != b[k].dtype
          or a[k].tobytes() != b[k].tobytes()]


def resumed_step(stderr: str) -> int:
  """The step a run says it resumed from (0 when it started afresh)."""
  for line in stderr.splitlines():
    if " resumed " in line and " at step " in line:
      return int(line.rsplit(" at step ", 1)[1].split()[0])
  return 0


def kill_trial(command, config, workdir, kill, ref_state, *, env) -> tuple[bool, str]:
  """Kill at `kill`, restart; (bitwise equal to `ref_state`, a description)."""
  killed = run_child(command, config, workdir, env=env, kill=kill)
  if killed.returncode != -signal.SIGKILL:
    return False, f"was not killed (exit {killed.returncode}): {killed.stderr[-2000:]}"
  again = run_child(command, config, workdir, env=env)
  if again.returncode != 0:
    return False, f"restart failed (exit {again.returncode}): {again.stderr[-2000:]}"
  step, state = final_state(workdir)
  ref_step, ref_arrays = ref_state
  differ = differing_leaves(state, ref_arrays)
  how = f"restarted from step {resumed_step(again.stderr)}, ended at step {step}"
  if step != ref_step or differ:
    return False, f"{how}; differs from the reference in {differ[:3]} (+{max(len(differ) - 3, 0)})"
  return True, how


def reference(task: str, paths: dict[str, str], root: str, env) -> str:
  """The uninterrupted run of `task` (run once; its stderr kept in <task>_ref.log)."""
  workdir = os.path.join(root, f"{task}_ref")
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    ref = run_child(COMMANDS[task], paths[f"{task}_config"], workdir, env=env)
    with open(workdir + ".log", "w") as f:
      f.write(ref.stderr)
    if ref.returncode:
      raise RuntimeError(f"the {task} reference run failed:\n{ref.stderr[-4000:]}")
  return workdir


COMMANDS = {"pretrain": "pretrain", "finetune": "finetune", "gpt": "pretrain"}


def prepare(root: str, env, tasks=("pretrain", "finetune")) -> dict[str, str]:
  """Corpus, task and configs under `root`, and the pre-training reference run (for the
  fine-tuning it starts from)."""
  paths = {"corpus": write_corpus(os.path.join(root, "corpus.txt")),
           "task": write_task(os.path.join(root, "task"))}
  paths["gpt_config"] = os.path.join(root, "gpt_config.py")
  with open(paths["gpt_config"], "w") as f:
    f.write(_GPT_CONFIG.format(corpus=paths["corpus"], steps=PRETRAIN_STEPS, ckpt=PRETRAIN_CKPT))
  if tasks == ("gpt",):
    return paths
  paths["pretrain_config"] = write_pretrain_config(os.path.join(root, "pretrain_config.py"),
                                                   paths["corpus"])
  paths["pretrain_ref"] = reference("pretrain", paths, root, env)
  paths["finetune_config"] = write_finetune_config(os.path.join(root, "finetune_config.py"),
                                                   paths["pretrain_ref"], paths["task"])
  return paths


def run_task(task: str, paths: dict[str, str], root: str, env, kills) -> tuple[int, int]:
  ref = final_state(reference(task, paths, root, env))
  ok_count = 0
  for i, kill in enumerate(kills):
    workdir = os.path.join(root, f"{task}_kill{i}")
    shutil.rmtree(workdir, ignore_errors=True)
    t = time.perf_counter()
    ok, how = kill_trial(COMMANDS[task], paths[f"{task}_config"], workdir, kill, ref, env=env)
    ok_count += ok
    print(f"{task:8s} kill -9 at {kill:24s} {'bitwise equal' if ok else 'FAILED':13s} "
          f"{how} ({time.perf_counter() - t:.0f} s)", flush=True)
  print(f"{task}: {ok_count}/{len(kills)} resumed bitwise", flush=True)
  return ok_count, len(kills)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if argv[:1] == ["child"]:
    return child_main(argv[1:])
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--task", choices=("pretrain", "finetune", "gpt", "both"), default="both",
                 help="both: pretrain and finetune; gpt: causal-LM pre-training")
  p.add_argument("--root", default=None, help="working folder (default: a temporary one)")
  p.add_argument("--keep", action="store_true", help="keep the working folder")
  args = p.parse_args(argv)
  root = os.path.abspath(args.root or tempfile.mkdtemp(prefix="kill_resume_"))
  os.makedirs(root, exist_ok=True)
  env = child_env(os.path.join(root, "jax_cache"))
  t = time.perf_counter()
  try:
    tasks = ("pretrain", "finetune") if args.task == "both" else (args.task,)
    paths = prepare(root, env, tasks)
    kills = {"pretrain": PRETRAIN_KILLS, "finetune": FINETUNE_KILLS, "gpt": GPT_KILLS}
    results = [run_task(task, paths, root, env, kills[task]) for task in tasks]
  finally:
    if not args.keep and not args.root:
      shutil.rmtree(root, ignore_errors=True)
  print(f"total {time.perf_counter() - t:.0f} s")
  return 0 if all(ok == n for ok, n in results) else 1


if __name__ == "__main__":
  sys.exit(main())
