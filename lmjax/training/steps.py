"""Pure train and eval steps. Parallelism is applied where they are compiled
(training/parallel.py); the only thing they know of it is `axis_name`, the pmap axis
to sum over (None under jit, where arrays are global and sums already are).

    step = functools.partial(train_step, model=model, objective=objective,
                             settings=settings, tx=tx, grad_accum=4)
    state, metrics = jax.jit(step, donate_argnums=0)(state, batch, rng)

Normalisation: the loss differentiated is, per term, loss_sum / weight_sum with both
sums over the *global* batch (every device, every micro-batch), so results do not
depend on the device count or on gradient accumulation. Weights do not depend on
params, so their global sums are taken before the backward pass.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def global_sum(tree, axis_name):
  return tree if axis_name is None else jax.lax.psum(tree, axis_name)


def row_ids(rows: int, axis_name):
  """Each local row's index in the global batch (under pmap, device i holds rows i*rows ...)."""
  first = 0 if axis_name is None else jax.lax.axis_index(axis_name) * rows
  return first + jnp.arange(rows)


def row_keys(rng, rows: int, axis_name):
  """One key per row, folded with the row's index in the global batch, so a row's
  masking is the same whichever device holds it."""
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(row_ids(rows, axis_name))


def split_micro_batches(tree, n: int):
  """B x ... -> n x B/n x ...; micro-batch i holds rows i, i+n, i+2n, ... Strided, not
  contiguous: each device's block of rows then holds an equal share of every
  micro-batch, so splitting a batch sharded over rows moves no data."""
  return jax.tree.map(lambda x: jnp.moveaxis(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 1, 0), tree)


def means_of(sums, weight_sums):
  return {t: {k: v / jnp.maximum(weight_sums[t], 1.0) for k, v in term.items()}
          for t, term in sums.items()}


def train_step(state, batch, rng, *, model, objective, settings, tx, grad_accum: int = 1,
               axis_name=None):
  """-> (new state, metrics). Masking and dropout draw from fold_in(rng, state.step) and each row's
  index in the global batch: the same on any device layout and with any grad_accum.

  A non-finite loss or gradient drops the update (params and optimizer state are kept;
  `skipped` counts it) and sets metrics["nonfinite"]; train.nonfinite=halt stops the loop on it.
  """
  rng = jax.random.fold_in(rng, state.step)
  mask_rng, dropout_rng = jax.random.split(rng)
  rows = batch["input_ids"].shape[0]
  inputs, targets = objective.prepare(batch, row_keys(mask_rng, rows, axis_name), settings)
  inputs = {**inputs, "row_ids": row_ids(rows, axis_name)}
  weight_sums = global_sum({t: jnp.sum(w) for t, w in targets["weights"].items()}, axis_name)

  def loss_fn(params, inputs, targets):
    outputs = model.apply({"params": params}, **inputs, deterministic=False,
                          rngs={"dropout": dropout_rng})
    sums = objective.loss(outputs, targets, settings)
    loss = sum(term["loss"] / jnp.maximum(weight_sums[t], 1.0) for t, term in sums.items())
    return loss, sums

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if grad_accum == 1:
    (_, sums), grads = grad_fn(state.params, inputs, targets)
  else:
    def accumulate(grads, micro):
      (_, sums), micro_grads = grad_fn(state.params, *micro)
      return jax.tree.map(jnp.add, grads, micro_grads), sums
    micro = split_micro_batches((inputs, targets), grad_accum)
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    grads, sums = jax.lax.scan(accumulate, zeros, micro)
    sums = jax.tree.map(lambda x: jnp.sum(x, 0), sums)
  grads, sums = global_sum((grads, sums), axis_name)

  means = means_of(sums, weight_sums)
  loss = sum(term["loss"] for term in means.values())
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

  def update(_):
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return optax.apply_updates(state.params, updates), opt_state
  # A skipped step keeps params and optimizer state. A cond, not a where over every leaf:
  # the where made XLA copy the donated moments each step to read them twice (2% on CPU).
  params, opt_state = jax.lax.cond(finite, update, lambda _: (state.params, state.opt_state), None)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            skipped=state.skipped + (~finite).astype(jnp.int32))
  metrics = {**objective.report(means), "grad_norm": grad_norm,
             "nonfinite": (~finite).astype(jnp.int32), "skipped": new_state.skipped,
             **{f"{t}_weight": w for t, w in weight_sums.items()}}
  return new_state, metrics


def eval_step(params, batch, rng, *, model, objective, settings, axis_name=None):
  """-> metrics of one batch. Pass the same rng at every evaluation to score the same
  masks each time. `{term}_weight` lets the loop average batches by tokens."""
  rows = batch["input_ids"].shape[0]
  inputs, targets = objective.prepare(batch, row_keys(rng, rows, axis_name), settings)
  weight_sums = global_sum({t: jnp.sum(w) for t, w in targets["weights"].items()}, axis_name)
  outputs = model.apply({"params": params}, **inputs, deterministic=True)
  sums = global_sum(objective.loss(outputs, targets, settings), axis_name)
  return {**objective.report(means_of(sums, weight_sums)),
          **{f"{t}_weight": w for t, w in weight_sums.items()}}
