"""The train step: state, the pure `train_step`, the NaN guard, and `build_step`,
the one place the jitted step is assembled (the trainer, side-by-side trials and
tools/bench.py all call it).

`train_step(state, batch, rng)` is pure: the step's random key is the run's base key
folded with the step counter, so a run restored at step s continues exactly as if it
had never stopped. The optimizer is wrapped in `skip_nonfinite`: a step whose loss
or gradient is not finite changes nothing but the step counter and the guard's
counters, which join the step's metrics.

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
  """`inner`, except that a step whose loss or gradient is not finite is skipped.

  Skipped means: zero updates and `inner`'s state unchanged (no Adam moment or
  accumulator sees the NaN). Unlike `optax.apply_if_finite` it never gives up and
  applies a non-finite update; the trainer stops the run instead. The loss comes in
  as the `loss` extra argument (`optax.with_extra_args_support(tx).update(..., loss=l)`).

  The check comes before `inner` runs, so `inner` runs inside one branch of a
  `lax.cond` and writes its new state in place; choosing between a new and an old
  state computed beforehand makes XLA copy both (every Adam moment, every step). An
  update that overflows from finite gradients is not caught here; the trainer checks
  the whole state before each save and never saves a non-finite one.
  """

  def init(params):
    zero = jnp.zeros((), jnp.int32)
    return NonFiniteGuardState(zero, zero, inner.init(params))

  def update(grads, state, params=None, *, loss=None, **extra_args):
    del extra_args
    checked = [grads] + ([] if loss is None else [loss])
    ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(checked)]))
    updates, inner_state = _update_if(inner, ok, grads, state.inner_state, params)
    in_a_row = jnp.where(ok, 0, state.in_a_row + 1).astype(jnp.int32)
    total = (state.total + jnp.where(ok, 0, 1)).astype(jnp.int32)
    return updates, NonFiniteGuardState(in_a_row, total, inner_state)

  return optax.GradientTransformationExtraArgs(init, update)


def _update_if(inner: optax.GradientTransformation, ok, grads, inner_state, params):
  """`inner.update(grads, inner_state, params)` if `ok` (a scalar bool), else zero
  updates and `inner_state` as it is.

  Side by side (under `jax.vmap`, one `ok` per trial), a batched `lax.cond` would
  become a select of every leaf on a predicate that depends on every gradient, which
  XLA's fusion and copy-insertion passes take minutes over (a 30-layer decoder). So
  the vmap rule computes every trial's update, then keeps one `lax.cond`, on "every
  trial is finite", and does the per-trial select only inside its other branch. The
  update is computed outside the cond so that a trial's result does not depend on
  whether another one was skipped (each branch would be compiled apart, and may round
  differently); that costs a copy of the state per step, side by side only.
  """
  skip = lambda g, s, p: (jax.tree.map(jnp.zeros_like, g), s)

  @jax.custom_batching.custom_vmap
  def run(ok, grads, inner_state, params):
    return jax.lax.cond(ok, inner.update, skip, grads, inner_state, params)

  @run.def_vmap
  def _vmap_rule(axis_size, in_batched, ok, grads, inner_state, params):
    ok_batched, *args_batched = in_batched
    ok = ok if ok_batched else jnp.broadcast_to(ok, (axis_size,))
    stack = lambda x, b: x if b else jnp.broadcast_to(x, (axis_size, *x.shape))
    grads, inner_state, params = (jax.tree.map(stack, x, b) for x, b in
                                  zip((grads, inner_state, params), args_batched))
    new = jax.vmap(inner.update)(grads, inner_state, params)
    old = skip(grads, inner_state, params)

    def per_trial(new, old):
      return jax.tree.map(
          lambda n, o: jnp.where(ok.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, old)

    out = jax.lax.cond(jnp.all(ok), lambda new, old: new, per_trial, new, old)
    return out, jax.tree.map(lambda _: True, out)

  return run(ok, grads, inner_state, params)


def scale_updates(tx: optax.GradientTransformationExtraArgs,
                  rate) -> optax.GradientTransformationExtraArgs:
  """`tx` with every update multiplied by `rate` (a traced scalar); same state as `tx`,
  extra arguments passed on to it."""

  def update(updates, state, params=None, **extra_args):
    updates, state = tx.update(updates, state, params, **extra_args)
    return jax.tree.map(lambda u: u * rate.astype(u.dtype), updates), state

  return optax.GradientTransformationExtraArgs(tx.init, update)


def compute_gradients(state: TrainState, batch, rng, *, loss_fn: LossFn) -> tuple[Any, dict]:
  """The gradients of the loss at `state.params` and the step's metrics (the loss among
  them); `rng` is the run's base key, folded with the step."""
  rng = jax.random.fold_in(rng, state.step)
  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
  return grads, dict(metrics, loss=loss)


def apply_gradients(state: TrainState, grads, metrics: dict, *, tx) -> tuple[TrainState, dict]:
  """One optimizer update of `state` with `grads`; adds the gradient norm to `metrics`."""
  # The loss goes to transformations that take it (skip_nonfinite); others ignore it.
  updates, opt_state = optax.with_extra_args_support(tx).update(
      grads, state.opt_state, state.params, loss=metrics["loss"])
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def train_step(state: TrainState, batch, rng, *, loss_fn: LossFn, tx) -> tuple[TrainState, dict]:
  """One pure optimizer step: `compute_gradients`, then `apply_gradients`."""
  grads, metrics = compute_gradients(state, batch, rng, loss_fn=loss_fn)
  return apply_gradients(state, grads, metrics, tx=tx)


def guarded_apply(state: TrainState, grads, metrics: dict, *, tx) -> tuple[TrainState, dict]:
  """`apply_gradients` with a `skip_nonfinite` optimizer; its counters join the metrics."""
  state, metrics = apply_gradients(state, grads, metrics, tx=tx)
  guard = state.opt_state
  return state, dict(metrics, nonfinite_in_a_row=guard.in_a_row, nonfinite_skipped=guard.total)


def guarded_train_step(state: TrainState, batch, rng, *, loss_fn: LossFn, tx):
  """`train_step` with a `skip_nonfinite` optimizer; its counters join the metrics."""
  grads, metrics = compute_gradients(state, batch, rng, loss_fn=loss_fn)
  return guarded_apply(state, grads, metrics, tx=tx)


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
               donate: bool = True) -> Step:
  """The guarded train step, jitted as two programs (see `Step`).

  One run (`sh.trials == 0`): `(state, batch, rng) -> (state, metrics)`, where `tx`
  holds the run's schedule. Stacked trials: `(states, batches, rngs, rates) ->
  (states, metrics)` with a trial axis first everywhere; `tx` is built with a
  constant rate of 1 and `rates` (one per trial) scale each trial's update.
  """
  grads_sh = sh.state.params
  gradients = functools.partial(compute_gradients, loss_fn=loss_fn)
  if not sh.trials:
    apply = functools.partial(guarded_apply, tx=skip_nonfinite(tx))
    rate_sh = ()
  else:
    gradients = jax.vmap(gradients)
    apply = jax.vmap(lambda state, grads, metrics, rate: guarded_apply(
        state, grads, metrics, tx=scale_updates(skip_nonfinite(tx), rate)))
    rate_sh = (sh.replicated,)
  grad_fn = jax.jit(gradients, in_shardings=(sh.state, sh.batch, sh.replicated),
                    out_shardings=(grads_sh, sh.replicated))
  apply_fn = jax.jit(apply, in_shardings=(sh.state, grads_sh, sh.replicated) + rate_sh,
                     out_shardings=(sh.state, sh.replicated),
                     donate_argnums=(0,) if donate else ())
  return Step(grad_fn, apply_fn)


class Step:
  """The train step as two jitted programs: the gradients (forward and backward, one
  program per batch shape) and the optimizer update (one program for every shape).

  Fine-tuning batches come in several lengths (jaxbert/data/buckets.py); compiled
  apart, the update is compiled once, and each of the two programs compiles in less
  than half the time the fused step took (XLA's passes grow faster than linearly in
  the size of a program; measured in docs/performance.md). The gradients travel
  between the two as device arrays.
  """

  def __init__(self, grad_fn, apply_fn, compiled: bool = False):
    self._grad, self._apply, self.compiled = grad_fn, apply_fn, compiled

  def __call__(self, state, batch, rng, *rate):
    grads, metrics = self._grad(state, batch, rng)
    return self._apply(state, grads, metrics, *rate)

  def compile(self, state, batch, rng, *rate) -> Step:
    """Ahead of time, for `batch`'s shape: a Step of compiled programs (memory_analysis)."""
    grad = self._grad.lower(state, batch, rng).compile()
    grads, metrics = jax.eval_shape(self._grad, state, batch, rng)
    return Step(grad, self._apply.lower(state, grads, metrics, *rate).compile(), compiled=True)

  def as_texts(self) -> tuple[str, str]:
    """The compiled programs' HLO: (gradients, update)."""
    return self._grad.as_text(), self._apply.as_text()

  def peak_bytes(self) -> int | None:
    """XLA's buffer plan of a compiled step, the larger of its two programs': the state
    (resident throughout) with the gradient program's temporaries and outputs, or the
    update's arguments (state, gradients), temporaries and outputs not aliased to an
    argument. None where the backend gives no plan."""
    grad, apply = self._grad.memory_analysis(), self._apply.memory_analysis()
    if grad is None or apply is None:
      return None
    during_apply = (apply.argument_size_in_bytes + apply.temp_size_in_bytes
                    + apply.output_size_in_bytes - apply.alias_size_in_bytes)
    state = apply.argument_size_in_bytes - grad.output_size_in_bytes
    during_grad = state + grad.temp_size_in_bytes + grad.output_size_in_bytes
    return max(during_grad, during_apply)


@jax.jit
def all_finite(tree) -> jax.Array:
  """Whether every floating-point value in `tree` is finite (a scalar bool)."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def make_predict(model: nn.Module, mesh, param_shardings):
  """A jitted deterministic forward pass: (params, global batch) -> outputs."""
  fn = lambda params, batch: model.apply({"params": params}, batch, deterministic=True)
  return jax.jit(fn, in_shardings=(param_shardings, shd.batch_sharding(mesh)))
