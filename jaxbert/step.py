"""The train step: state, the pure `train_step`, the NaN guard, and `build_step`,
the one place the jitted step is assembled (the trainer, side-by-side trials and
tools/bench.py all call it).

`train_step(state, batch, rng)` is pure: the step's random key is the run's base key
folded with the step counter, so a run restored at step s continues exactly as if it
had never stopped. The optimizer is wrapped in `skip_nonfinite`: a step whose loss,
gradient or update is not finite changes nothing but the step counter and the
guard's counters, which join the step's metrics.

Trials trained side by side (a learning-rate x seed grid) are one program: their
states are stacked on a leading trial axis and the step is `jax.vmap`-ed over
(state, batch, rng, rate). Their optimizer is built with a constant rate of 1 and
each trial's update is multiplied by its own schedule value, passed in as data; the
AdamW and LAMB updates are linear in the rate, so this is the same update.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxbert import sharding as shd

LossFn = Callable[[Any, dict, jax.Array], tuple[jax.Array, dict]]
# Metrics that count (reported as their last value in a logging window, not the mean).
COUNTERS = ("nonfinite_in_a_row", "nonfinite_skipped")


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


class NonFiniteGuardState(NamedTuple):
  in_a_row: jax.Array  # int32: consecutive skipped steps, up to and including the last
  total: jax.Array     # int32: skipped steps since the run began
  inner_state: Any


def skip_nonfinite(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """`inner`, except that a step whose loss, gradient or update is not finite is skipped.

  Skipped means: zero updates and `inner`'s state unchanged (no Adam moment or
  accumulator sees the NaN). Unlike `optax.apply_if_finite` it never gives up and
  applies a non-finite update; the trainer stops the run instead. The loss comes in
  as the `loss` extra argument (`optax.with_extra_args_support(tx).update(..., loss=l)`).
  """

  def init(params):
    zero = jnp.zeros((), jnp.int32)
    return NonFiniteGuardState(zero, zero, inner.init(params))

  def update(grads, state, params=None, *, loss=None, **extra_args):
    del extra_args
    updates, inner_state = inner.update(grads, state.inner_state, params)
    checked = [grads, updates] + ([] if loss is None else [loss])
    ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(checked)]))
    updates, inner_state = select_tree(
        ok, (updates, inner_state), (jax.tree.map(jnp.zeros_like, updates), state.inner_state))
    in_a_row = jnp.where(ok, 0, state.in_a_row + 1).astype(jnp.int32)
    total = (state.total + jnp.where(ok, 0, 1)).astype(jnp.int32)
    return updates, NonFiniteGuardState(in_a_row, total, inner_state)

  return optax.GradientTransformationExtraArgs(init, update)


@jax.custom_batching.custom_vmap
def select_tree(ok, new, old):
  """`new` if `ok` (a scalar bool) else `old`: two pytrees of the same structure.

  A `lax.cond`, not a `jnp.where` per leaf: with the predicate depending on every
  gradient and every leaf depending on the predicate, XLA's fusion and copy-insertion
  passes grow faster than linearly in the number of leaves (a 30-layer decoder's step
  compiled in minutes). A branch computation keeps that graph apart.
  """
  return jax.lax.cond(ok, lambda: new, lambda: old)


@select_tree.def_vmap
def _select_tree_vmap(axis_size, in_batched, ok, new, old):
  # Trials side by side: one predicate per trial. The usual step (all finite) takes
  # `new` whole; otherwise a per-trial `where`, inside the branch for the same reason.
  ok_batched, new_batched, old_batched = in_batched
  ok = ok if ok_batched else jnp.broadcast_to(ok, (axis_size,))
  stack = lambda x, b: x if b else jnp.broadcast_to(x, (axis_size, *x.shape))
  new = jax.tree.map(stack, new, new_batched)
  old = jax.tree.map(stack, old, old_batched)

  def per_trial(new, old):
    return jax.tree.map(lambda n, o: jnp.where(ok.reshape((-1,) + (1,) * (n.ndim - 1)), n, o),
                        new, old)

  out = jax.lax.cond(jnp.all(ok), lambda new, old: new, per_trial, new, old)
  return out, jax.tree.map(lambda _: True, out)


def scale_updates(tx: optax.GradientTransformation, rate) -> optax.GradientTransformation:
  """`tx` with every update multiplied by `rate` (a traced scalar); same state as `tx`."""

  def update(updates, state, params=None):
    updates, state = tx.update(updates, state, params)
    return jax.tree.map(lambda u: u * rate.astype(u.dtype), updates), state

  return optax.GradientTransformation(tx.init, update)


def train_step(state: TrainState, batch, rng, *, loss_fn: LossFn, tx) -> tuple[TrainState, dict]:
  """One pure optimizer step; `rng` is the run's base key, folded with the step."""
  rng = jax.random.fold_in(rng, state.step)
  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
  # The loss goes to transformations that take it (skip_nonfinite); others ignore it.
  updates, opt_state = optax.with_extra_args_support(tx).update(
      grads, state.opt_state, state.params, loss=loss)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def guarded_train_step(state: TrainState, batch, rng, *, loss_fn: LossFn, tx):
  """`train_step` with a `skip_nonfinite` optimizer; its counters join the metrics."""
  state, metrics = train_step(state, batch, rng, loss_fn=loss_fn, tx=tx)
  guard = state.opt_state
  return state, dict(metrics, nonfinite_in_a_row=guard.in_a_row, nonfinite_skipped=guard.total)


def new_state(params, tx: optax.GradientTransformation) -> TrainState:
  """Step 0 with a fresh (guarded) optimizer state for `params`."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=skip_nonfinite(tx).init(params))


@dataclasses.dataclass(frozen=True)
class Shardings:
  """Where the step's inputs live: one trial's state as the mesh lays it out, or
  `trials` of them stacked on a leading (unsplit) axis."""

  state: Any
  batch: NamedSharding
  replicated: NamedSharding
  trials: int = 0  # 0: one run, not stacked

  @classmethod
  def for_state(cls, mesh, abstract_state: TrainState, trials: int = 0) -> Shardings:
    state = shd.state_shardings(mesh, abstract_state).replace(step=shd.replicated(mesh))
    batch = shd.batch_sharding(mesh)
    if trials:
      state = jax.tree.map(lambda s: NamedSharding(mesh, P(None, *s.spec)), state)
      batch = NamedSharding(mesh, P(None, shd.BATCH_AXES))
    return cls(state, batch, shd.replicated(mesh), trials)


def build_step(loss_fn: LossFn, tx: optax.GradientTransformation, sh: Shardings, *,
               donate: bool = True) -> Callable:
  """The jitted, guarded train step.

  One run (`sh.trials == 0`): `(state, batch, rng) -> (state, metrics)`, where `tx`
  holds the run's schedule. Stacked trials: `(states, batches, rngs, rates) ->
  (states, metrics)` with a trial axis first everywhere; `tx` is built with a
  constant rate of 1 and `rates` (one per trial) scale each trial's update.
  """
  if not sh.trials:
    fn = functools.partial(guarded_train_step, loss_fn=loss_fn, tx=skip_nonfinite(tx))
    in_shardings = (sh.state, sh.batch, sh.replicated)
  else:
    def one_trial(state, batch, rng, rate):
      return guarded_train_step(state, batch, rng, loss_fn=loss_fn,
                                tx=skip_nonfinite(scale_updates(tx, rate)))
    fn = jax.vmap(one_trial)
    in_shardings = (sh.state, sh.batch, sh.replicated, sh.replicated)
  return jax.jit(fn, in_shardings=in_shardings, out_shardings=(sh.state, sh.replicated),
                 donate_argnums=(0,) if donate else ())


@jax.jit
def all_finite(tree) -> jax.Array:
  """Whether every floating-point value in `tree` is finite (a scalar bool)."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def make_predict(model: nn.Module, mesh, param_shardings):
  """A jitted deterministic forward pass: (params, global batch) -> outputs."""
  fn = lambda params, batch: model.apply({"params": params}, batch, deterministic=True)
  return jax.jit(fn, in_shardings=(param_shardings, shd.batch_sharding(mesh)))
