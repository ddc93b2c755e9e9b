"""`lmjax bench train --config experiments/NAME.py [--steps N] [--vs-torch] [--json]`

Speed of lmjax's real training step (the one `lmjax train` compiles: same model,
objective, optimizer and parallel.mode) on random batches of the config's shape.
Compilation is timed apart; then 2 warm-up steps, then --steps steps timed with one
block_until_ready at the end. Printed: step time, tokens/s, model TFLOP/s, MFU and
peak memory.

Model FLOPs per token (training/flops.py, forward + backward):
  6 * N_matmul                       dense (N_matmul: params in matmuls, tied head once)
  + 6 * 2 * layers * seq_len * D     attention scores and values, x0.5 when causal
  MLM head (V x D + D x D) counted only on the objective.max_predictions masked positions.
TFLOP/s = tokens/s x FLOPs per token; MFU divides by flops.peak_flops() x device count.

--vs-torch also builds the same model in Hugging Face PyTorch (GPT2LMHeadModel or
BertForPreTraining, float32, AdamW, eager) and times its steps interleaved with lmjax's,
ROUNDS alternating blocks each, so machine noise hits both alike. HF's BERT projects
every position onto the vocabulary, lmjax's only the masked ones: that is part of
what is compared.
"""
from __future__ import annotations

import functools
import json
import os
import resource
import time

import jax
import numpy as np

from lmjax import models, objectives
from lmjax.errors import UserError
from lmjax.training import optim, parallel, steps
from lmjax.training.flops import peak_flops, train_flops_per_token

WARMUP = 2
ROUNDS = 5        # --vs-torch: alternating blocks per side
CLS, SEP = 2, 3   # lmjax tokenizers' ids; 0..6 are the specials
FIRST_ID = 7


def random_batch(model_cfg, batch_size: int, seq_len: int, seed: int = 0) -> dict:
  """A numpy batch of the config's shape, as the data pipeline would yield it."""
  rng = np.random.default_rng(seed)
  ids_BxL = rng.integers(FIRST_ID, model_cfg.vocab_size, (batch_size, seq_len), dtype=np.int32)
  if model_cfg.causal:
    return {"input_ids": ids_BxL, "segment_ids": np.ones_like(ids_BxL),
            "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), ids_BxL.shape).copy()}
  # A valid pair on every row: [CLS] A [SEP] B [SEP], segment A (with CLS and its SEP) of type 0.
  sep_B = rng.integers(2, seq_len - 2, batch_size)
  pos_BxL = np.arange(seq_len)[None, :]
  ids_BxL[:, 0] = CLS
  ids_BxL[np.arange(batch_size), sep_B] = SEP
  ids_BxL[:, -1] = SEP
  return {"input_ids": ids_BxL, "token_type_ids": (pos_BxL > sep_B[:, None]).astype(np.int32),
          "attention_mask": np.ones_like(ids_BxL), "nsp_label": rng.integers(0, 2, batch_size, dtype=np.int32),
          "word_start": np.ones(ids_BxL.shape, bool)}


def peak_memory() -> tuple[int, str]:
  """(bytes, what was measured): the device's peak where it reports one, else this process's max RSS."""
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"], f"peak bytes in use on {jax.devices()[0].device_kind}"
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process max RSS (host, all of it)"


class LmjaxSide:
  """lmjax's train step, built as training/loop.py builds it, and its running state."""

  def __init__(self, cfg, model_cfg):
    mode = cfg.parallel.mode
    mesh = parallel.mesh_from_config(cfg.parallel)
    parallel.check_batch_size(cfg.data.batch_size, mode, mesh, cfg.optim.grad_accum)
    objective = objectives.get(cfg.objective.name, model_cfg)
    settings = objectives.Settings(**cfg.objective, mask_id=4, special_ids=tuple(range(FIRST_ID)),
                                   vocab_size=model_cfg.vocab_size)
    tx, _ = optim.optimizer_from_config(cfg.optim, cfg.train.steps)
    step_fn = functools.partial(steps.train_step, model=models.build(model_cfg), objective=objective,
                                settings=settings, tx=tx, grad_accum=cfg.optim.grad_accum)
    self.rng = jax.random.key(cfg.seed)
    self.state = parallel.create_state(mode, model_cfg, tx, self.rng, mesh)
    np_batch = random_batch(model_cfg, cfg.data.batch_size, cfg.data.seq_len, cfg.seed)
    self.batch = parallel.put_batch(np_batch, mode, mesh)
    t0 = time.perf_counter()
    jitted = parallel.compile_train_step(step_fn, mode, self.state, mesh)
    self.step = jitted.lower(self.state, self.batch, self.rng).compile()
    self.compile_s = time.perf_counter() - t0
    self.n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(parallel.host_state(self.state, mode).params))

  def run(self, n: int) -> float:
    """Seconds for n steps, waiting for the device only at the end."""
    t0 = time.perf_counter()
    for _ in range(n):
      self.state, metrics = self.step(self.state, self.batch, self.rng)
    jax.block_until_ready((self.state, metrics))
    return time.perf_counter() - t0


class TorchSide:
  """The same model in Hugging Face PyTorch, trained eagerly with torch.optim.AdamW."""

  def __init__(self, cfg, model_cfg, np_batch):
    import torch  # a dev extra: only this path needs it
    import transformers
    from lmjax.convert import hf
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(cfg.seed)
    self.torch = torch
    config = hf.gpt2_config(model_cfg) if model_cfg.causal else hf.bert_config(model_cfg)
    config = {k: v for k, v in config.items() if k not in ("architectures", "model_type")}
    if model_cfg.causal:
      self.model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**config))
      ids = torch.from_numpy(np_batch["input_ids"]).long()
      self.inputs = {"input_ids": ids, "labels": ids}   # HF shifts the labels itself
    else:
      self.model = transformers.BertForPreTraining(transformers.BertConfig(**config))
      ids_BxL = np_batch["input_ids"]
      # MLM labels on max_predictions random positions per row (-100 elsewhere), as lmjax selects.
      rng = np.random.default_rng(cfg.seed)
      M = min(cfg.objective.max_predictions or ids_BxL.shape[1], ids_BxL.shape[1] - 1)
      labels_BxL = np.full(ids_BxL.shape, -100, np.int64)
      for row in range(ids_BxL.shape[0]):
        picked_M = rng.choice(np.arange(1, ids_BxL.shape[1]), M, replace=False)
        labels_BxL[row, picked_M] = ids_BxL[row, picked_M]
      masked_BxL = np.where(labels_BxL >= 0, 4, ids_BxL)
      self.inputs = {"input_ids": torch.from_numpy(masked_BxL).long(),
                     "attention_mask": torch.from_numpy(np_batch["attention_mask"]).long(),
                     "token_type_ids": torch.from_numpy(np_batch["token_type_ids"]).long(),
                     "labels": torch.from_numpy(labels_BxL),
                     "next_sentence_label": torch.from_numpy(np_batch["nsp_label"]).long()}
    self.model.float().train()
    o = cfg.optim
    self.opt = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=(o.b1, o.b2), eps=o.eps,
                                 weight_decay=o.weight_decay)

  def run(self, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
      loss = self.model(**self.inputs).loss
      loss.backward()
      self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)   # lmjax clips too
      self.opt.step()
      self.opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main(cfg, args) -> dict:
  if args.steps < 1:
    raise UserError(f"--steps {args.steps}; time at least 1 step")
  model_cfg = models.model_config(cfg.model)
  B, L = cfg.data.batch_size, cfg.data.seq_len
  if L > model_cfg.max_len:
    raise UserError(f"data.seq_len={L} > model.max_len={model_cfg.max_len}; pass --config.model.max_len={L}")
  lm = LmjaxSide(cfg, model_cfg)
  lm.run(WARMUP)
  seconds = lm.run(args.steps)

  tokens_per_step = B * L
  objective = objectives.get(cfg.objective.name, model_cfg)
  flops_per_token = train_flops_per_token(model_cfg, L, objective.heads, cfg.objective.max_predictions,
                                          objective.prefix)
  peak, peak_source = peak_flops()
  tokens_per_s = tokens_per_step * args.steps / seconds
  memory, memory_source = peak_memory()
  result = {
      "config": f"{'decoder' if model_cfg.causal else 'encoder'} {lm.n_params:,} params, batch {B} x seq {L}, "
                f"objective {cfg.objective.name}, parallel.mode {cfg.parallel.mode}",
      "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
      "compile_s": round(lm.compile_s, 2), "steps": args.steps,
      "step_ms": round(1e3 * seconds / args.steps, 2), "tokens_per_s": round(tokens_per_s, 1),
      "model_tflops_per_s": round(tokens_per_s * flops_per_token / 1e12, 4),
      "mfu": round(tokens_per_s * flops_per_token / (peak * jax.device_count()), 4),
      "mflops_per_token": round(flops_per_token / 1e6, 2), "peak_source": peak_source,
      "peak_memory_mb": round(memory / 2 ** 20, 1), "memory_source": memory_source,
  }

  if args.vs_torch:
    torch_side = TorchSide(cfg, model_cfg, random_batch(model_cfg, B, L, cfg.seed))
    torch_side.run(WARMUP)
    block = max(1, args.steps // ROUNDS)
    lm_s = torch_s = 0.0
    for _ in range(ROUNDS):
      lm_s += lm.run(block)
      torch_s += torch_side.run(block)
    lm_rate, torch_rate = tokens_per_step * block * ROUNDS / lm_s, tokens_per_step * block * ROUNDS / torch_s
    result.update({"interleaved": f"{ROUNDS} rounds of {block} steps each side",
                   "lmjax_tokens_per_s": round(lm_rate, 1), "torch_tokens_per_s": round(torch_rate, 1),
                   "lmjax_over_torch": round(lm_rate / torch_rate, 2),
                   "torch_model": type(torch_side.model).__name__, "torch_threads": torch_side.torch.get_num_threads()})

  if args.json:
    print(json.dumps(result))
    return result
  print(f"bench train: {result['config']} on {result['devices']}")
  print(f"  compile          {result['compile_s']:.2f} s (lower + compile, once)")
  print(f"  step             {result['step_ms']:.2f} ms (mean of {args.steps} after {WARMUP} warm-up)")
  print(f"  tokens/s         {result['tokens_per_s']:,.0f}")
  print(f"  model TFLOP/s    {result['model_tflops_per_s']:.4f} ({result['mflops_per_token']} MFLOP/token)")
  print(f"  MFU              {100 * result['mfu']:.2f}% (peak from {peak_source})")
  print(f"  peak memory      {result['peak_memory_mb']:,.1f} MiB ({memory_source})")
  if args.vs_torch:
    print(f"  vs PyTorch ({result['torch_model']}, eager, {result['torch_threads']} threads; {result['interleaved']}):")
    print(f"    lmjax {result['lmjax_tokens_per_s']:,.0f} tokens/s, torch {result['torch_tokens_per_s']:,.0f} "
          f"tokens/s, lmjax/torch = {result['lmjax_over_torch']:.2f}x")
  return result
