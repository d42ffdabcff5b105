"""The device mesh and how arrays are laid out on it.

Two axes: `data` (replicated parameters, split batch) and `fsdp` (parameters and
optimizer state split along their largest divisible dimension, batch split too).
A batch's leading dimension is split over both axes, so every device sees
`global_batch / num_devices` examples whatever the mesh shape.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Callable, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxbert.errors import UserError

BATCH_AXES = ("data", "fsdp")
# Seconds without a heartbeat after which a process counts as dead (JAX's default is
# 100); the survivors then stop instead of waiting. JAXBERT_HEARTBEAT_TIMEOUT overrides.
HEARTBEAT_TIMEOUT_S = 20
# Words in a runtime error that mean another process of the run went away.
_PEER_LOST_MARKERS = ("gloo", "connection closed", "connection reset", "heartbeat",
                      "coordination service", "barrier", "unavailable", "deadline_exceeded")
T = TypeVar("T")


def _env_int(name: str) -> int:
  try:
    return int(os.environ[name])
  except (KeyError, ValueError):
    raise UserError(f"a multi-process run needs the environment variable {name} as an integer "
                    f"(with JAX_COORDINATOR_ADDRESS={os.environ.get('JAX_COORDINATOR_ADDRESS')})"
                    ) from None


def maybe_initialize_distributed() -> None:
  """Joins a multi-process run when the environment describes one.

  TPU VMs and SLURM are detected by `jax.distributed.initialize()` itself; an
  explicit coordinator comes from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
  JAX_PROCESS_ID. Single-process runs skip it. CPU processes talk through gloo
  (jax's default CPU collectives), so several processes on one machine work too.
  """
  if jax.distributed.is_initialized():
    return
  timeouts = {"heartbeat_timeout_seconds":
              int(os.environ.get("JAXBERT_HEARTBEAT_TIMEOUT", HEARTBEAT_TIMEOUT_S))}
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=_env_int("JAX_NUM_PROCESSES"),
        process_id=_env_int("JAX_PROCESS_ID"), **timeouts)
  elif any(k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID", "MEGASCALE_COORDINATOR_ADDRESS")):
    if int(os.environ.get("SLURM_NTASKS", "2")) > 1:
      jax.distributed.initialize(**timeouts)


def process_0_first(fn: Callable[[], T]) -> T:
  """`fn()` on process 0, then, once it has returned, on the other processes.

  For steps that fill caches in a shared workdir: process 0 writes them, the others
  find them written. One process: just `fn()`.
  """
  if jax.process_count() == 1:
    return fn()
  out = fn() if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices("jaxbert: process 0 prepared")
  return fn() if jax.process_index() != 0 else out


def exit_if_multiprocess(e: BaseException, exit_code: int, message: str | None = None) -> None:
  """In a multi-process run, reports `e` in one line and ends the process at once.

  The other processes wait for this one in collectives and barriers; leaving without
  JAX's orderly shutdown (which would wait for them in turn) closes its connections,
  so they fail fast too. A lost peer is named as such. Returns if single-process.
  """
  if not jax.distributed.is_initialized():
    return
  text = f"{type(e).__name__}: {e}".lower()
  where = f"process {jax.process_index()} of {jax.process_count()}"
  if message is None and any(m in text for m in _PEER_LOST_MARKERS):
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    message = (f"{where} lost contact with another process of the run (it died, was killed "
               f"or stopped on an error of its own); start all processes again to resume from "
               f"the last checkpoint ({first[:300]})")
  if message is None:
    traceback.print_exception(e, file=sys.stderr)
    message = f"{where} stopped on {type(e).__name__}; see the traceback above"
  print(f"jaxbert: error: {message}", file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(exit_code)  # pylint: disable=protected-access


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
  """A (data, fsdp) mesh over all devices; -1 means 'the rest'."""
  devices = jax.devices() if devices is None else devices
  n = len(devices)
  if data == -1 and fsdp == -1:
    raise UserError("mesh.data and mesh.fsdp cannot both be -1")
  if data == -1:
    data = n // fsdp if fsdp > 0 and n % fsdp == 0 else 0
  if fsdp == -1:
    fsdp = n // data if data > 0 and n % data == 0 else 0
  if data * fsdp != n or data <= 0:
    raise UserError(f"mesh.data={data} x mesh.fsdp={fsdp} does not match the {n} available devices; "
                    "set --config.mesh.data and --config.mesh.fsdp so their product is the device count")
  # Explicit Auto axes: the GSPMD-style sharding rules below rely on them (jax >= 0.10).
  return jax.make_mesh((data, fsdp), BATCH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2,
                       devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int = 2 ** 12) -> P:
  """Splits the largest dimension divisible by the fsdp axis; small arrays stay whole."""
  if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def state_shardings(mesh: Mesh, abstract_state):
  """NamedShardings for every leaf of a (params, optimizer state, ...) tree by its shape."""
  fsdp = mesh.shape["fsdp"]
  return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(tuple(x.shape), fsdp)), abstract_state)


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Process-local numpy arrays -> one global array each, split over the batch axes."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
