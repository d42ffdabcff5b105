"""The device mesh and how arrays are laid out on it.

Two axes: `data` (replicated parameters, split batch) and `fsdp` (parameters and
optimizer state split along their largest divisible dimension, batch split too).
A batch's leading dimension is split over both axes, so every device sees
`global_batch / num_devices` examples whatever the mesh shape.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxbert.errors import UserError

BATCH_AXES = ("data", "fsdp")


def maybe_initialize_distributed() -> None:
  """Joins a multi-process run when the environment describes one.

  TPU VMs and SLURM are detected by `jax.distributed.initialize()` itself; an
  explicit coordinator comes from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
  JAX_PROCESS_ID. Single-process runs skip it.
  """
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]))
  elif any(k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID", "MEGASCALE_COORDINATOR_ADDRESS")):
    if int(os.environ.get("SLURM_NTASKS", "2")) > 1:
      jax.distributed.initialize()


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
