"""Optimizers and learning-rate schedules.

    tx, lr_fn = make_optimizer("adamw", lr=1e-3, schedule="cosine", warmup_steps=100,
                               total_steps=10_000, weight_decay=0.1, clip_norm=1.0)

Weight decay follows BERT and GPT-2: biases and norm parameters (leaves named "bias"
or "scale") are not decayed; kernels and embeddings are. Deciding by name keeps the
rule right when layers are scanned (a stacked bias is 2-D, so rank would mislead).

Gradient accumulation is not here: the train step scans over micro-batches and sums
loss and weight sums, which is exact under global-token normalisation (optax's
MultiSteps would average per-micro-batch means). Params and optimizer state are in
model.param_dtype (float32 by default) whatever the compute dtype.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from lmjax.errors import UserError

NO_DECAY = ("bias", "scale")
OPTIMIZERS = ("adamw", "adafactor", "lion")
SCHEDULES = ("linear", "cosine", "inverse_sqrt", "constant")  # after the linear warmup


def decay_mask(params):
  """True where weight decay applies."""
  def leaf_name(path):
    last = path[-1]
    return str(getattr(last, "key", getattr(last, "name", last)))
  return jax.tree_util.tree_map_with_path(lambda path, _: leaf_name(path) not in NO_DECAY, params)


def make_schedule(lr: float, schedule: str, warmup_steps: int, total_steps: int,
                  end_lr_ratio: float = 0.0):
  """Linear warmup from 0 to lr, then `schedule` down to lr * end_lr_ratio at total_steps."""
  decay_steps = max(total_steps - warmup_steps, 1)
  end_lr = lr * end_lr_ratio
  if schedule == "linear":
    decay = optax.linear_schedule(lr, end_lr, decay_steps)
  elif schedule == "cosine":
    decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=end_lr_ratio)
  elif schedule == "inverse_sqrt":
    # lr * sqrt(warmup / step), continuous at the end of warmup ("Attention is all you
    # need", T5); open-ended, so end_lr_ratio does not apply.
    w = max(warmup_steps, 1)
    decay = lambda count: lr * jnp.sqrt(w / (jnp.maximum(count, 0) + w))
  elif schedule == "constant":
    decay = optax.constant_schedule(lr)
  else:
    raise UserError(f"optim.schedule={schedule!r} is not one of {list(SCHEDULES)}")
  if warmup_steps <= 0:
    return decay
  warmup = optax.linear_schedule(0.0, lr, warmup_steps)
  return optax.join_schedules([warmup, decay], [warmup_steps])


def make_optimizer(name: str, lr: float, schedule: str = "cosine", warmup_steps: int = 0,
                   total_steps: int = 1, end_lr_ratio: float = 0.0, weight_decay: float = 0.0,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, clip_norm: float = 0.0):
  """-> (optax.GradientTransformation, schedule_fn(step) -> lr)."""
  lr_fn = make_schedule(lr, schedule, warmup_steps, total_steps, end_lr_ratio)
  if name == "adamw":
    tx = optax.adamw(lr_fn, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)
  elif name == "lion":
    # Lion's update has unit size per coordinate: use a ~3-10x smaller lr and larger decay than AdamW.
    tx = optax.lion(lr_fn, b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask)
  elif name == "adafactor":
    # Global-norm clipping below replaces Adafactor's own update clipping; the step size
    # is the schedule's (no relative parameter-scale step), so lr means the same as for AdamW.
    tx = optax.adafactor(lr_fn, clipping_threshold=None, multiply_by_parameter_scale=False,
                         weight_decay_rate=weight_decay or None, weight_decay_mask=decay_mask)
  else:
    raise UserError(f"optim.name={name!r} is not one of {list(OPTIMIZERS)}")
  if clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(clip_norm), tx)
  return tx, lr_fn


ENCODER_PARTS = ("embed", "embed_norm", "stack", "final_norm")  # the pretrained body; the rest are task heads


def _name(key) -> str:
  return str(getattr(key, "key", getattr(key, "name", key)))


def scale_by_layer(layer_decay: float = 1.0, freeze_encoder: bool = False) -> optax.GradientTransformation:
  """Fine-tuning: multiplies each update by decay ** depth, where depth is 0 for the heads (and the
  final norm), N - i for layer i of N, N + 1 for the embeddings (ELECTRA's layer-wise decay); with
  freeze_encoder, the body's updates are 0 and only the heads (pooler, classifier) train.
  Scanned layers (one stacked array, layer first) get one factor per slice."""
  def update(updates, state, params=None):
    del params
    leaves = jax.tree_util.tree_leaves_with_path(updates)
    layer_ids = [int(_name(k)[6:]) for p, _ in leaves for k in p if _name(k).startswith("layer_")]
    stacked = [u.shape[0] for p, u in leaves if any(_name(k) == "layers" for k in p)]
    n = max(layer_ids, default=-1) + 1 or max(stacked, default=0)

    def scale(path, u):
      part = _name(path[0])
      if part not in ENCODER_PARTS or part == "final_norm":
        return u
      if freeze_encoder:
        return jnp.zeros_like(u)
      names = [_name(k) for k in path]
      if "layers" in names:
        factor = (layer_decay ** (n - jnp.arange(n))).reshape((n,) + (1,) * (u.ndim - 1))
      else:
        layer = next((int(k[6:]) for k in names if k.startswith("layer_")), -1)
        factor = layer_decay ** (n - layer)   # embeddings (layer -1): one step below layer 0
      return u * jnp.asarray(factor, u.dtype)
    return jax.tree_util.tree_map_with_path(scale, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def optimizer_from_config(c_optim, total_steps: int):
  """The optim section of an experiment config -> (tx, lr_fn); grad_accum is the step's.
  Fine-tuning configs may add layer_decay (< 1 shrinks lower layers' steps) and freeze_encoder."""
  tx, lr_fn = make_optimizer(c_optim.name, c_optim.lr, c_optim.schedule, c_optim.warmup_steps,
                             total_steps, c_optim.end_lr_ratio, c_optim.weight_decay, c_optim.b1,
                             c_optim.b2, c_optim.eps, c_optim.clip_norm)
  layer_decay, freeze = c_optim.get("layer_decay", 1.0), c_optim.get("freeze_encoder", False)
  if layer_decay != 1.0 or freeze:
    tx = optax.chain(tx, scale_by_layer(layer_decay, freeze))
  return tx, lr_fn
