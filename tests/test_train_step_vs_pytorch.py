"""lmjax's training step is nanoGPT's: from the same GPT-2 weights and the same windows of
tinyshakespeare, lmjax's clm train step (optax AdamW with its decay mask, global-norm clipping,
the lr schedule) gives the losses, gradient norms and weights of Hugging Face's GPT2LMHeadModel
trained by torch.optim.AdamW the way nanoGPT's train.py does it (decay on every parameter of two
or more dimensions, clip_grad_norm_, the lr set on each group before each step). So the optimizer
and the step's arithmetic are nanoGPT's; its model differs only where the Shakespeare config says
(biases here, as HF's GPT-2 has them), and its schedule warms up from lr/101 where lmjax's (used on
both sides here) starts at 0."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

import lmjax
from lmjax import objectives
from lmjax.convert import hf
from lmjax.objectives import Settings
from lmjax.training import optim, steps
from lmjax.training.state import TrainState

V, L, B, STEPS = 65, 16, 4, 8
LR, WARMUP, WEIGHT_DECAY, B2, CLIP = 1e-2, 3, 0.1, 0.99, 1.0   # nanoGPT's beta2, decay and clip


def shakespeare_batches(shared_data):
  """nanoGPT's get_batch on its train split: windows at random offsets, targets one char on."""
  text = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
  stoi = {ch: i for i, ch in enumerate(sorted(set(text)))}
  data = np.array([stoi[c] for c in text[:int(len(text) * 0.9)]], np.int32)
  rng = np.random.default_rng(1337)
  for _ in range(STEPS):
    windows_BxL1 = data[rng.integers(0, len(data) - L, B)[:, None] + np.arange(L + 1)]
    yield windows_BxL1[:, :-1], windows_BxL1[:, 1:]


def test_clm_steps_equal_torch_adamw_on_gpt2(shared_data, tmp_path):
  torch.manual_seed(0)   # HF's init: std 0.02, the residual projections scaled by 1/sqrt(2 N)
  config = transformers.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=L,
                                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
  torch_model = transformers.GPT2LMHeadModel(config)
  torch_model.save_pretrained(tmp_path / "hf")
  hf.import_hf(tmp_path / "hf", tmp_path / "work")
  model, params = lmjax.load(tmp_path / "work")

  tx, lr_fn = optim.make_optimizer("adamw", LR, "cosine", WARMUP, STEPS, end_lr_ratio=0.1,
                                   weight_decay=WEIGHT_DECAY, b2=B2, clip_norm=CLIP)
  step = jax.jit(functools.partial(steps.train_step, model=model, objective=objectives.get("clm", model.cfg),
                                   settings=Settings(name="clm", vocab_size=V), tx=tx))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     skipped=jnp.zeros((), jnp.int32))
  # nanoGPT's configure_optimizers: weight decay on every tensor of 2+ dims (tied embedding,
  # positions, kernels), none on biases and LayerNorm gains.
  groups = [{"params": [p for p in torch_model.parameters() if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
            {"params": [p for p in torch_model.parameters() if p.dim() < 2], "weight_decay": 0.0}]
  torch_opt = torch.optim.AdamW(groups, lr=LR, betas=(0.9, B2), eps=1e-8)
  torch_model.train()

  lmjax_losses, torch_losses, lmjax_norms, torch_norms = [], [], [], []
  for i, (ids_BxL, labels_BxL) in enumerate(shakespeare_batches(shared_data)):
    state, metrics = step(state, {"input_ids": ids_BxL, "labels": labels_BxL,
                                  "segment_ids": np.ones_like(ids_BxL)}, jax.random.key(0))
    lmjax_losses.append(float(metrics["loss"]))
    lmjax_norms.append(float(metrics["grad_norm"]))

    for group in torch_opt.param_groups:
      group["lr"] = float(lr_fn(i))
    logits_BxLxV = torch_model(input_ids=torch.tensor(ids_BxL, dtype=torch.long)).logits
    loss = torch.nn.functional.cross_entropy(logits_BxLxV.reshape(-1, V),
                                             torch.tensor(labels_BxL, dtype=torch.long).reshape(-1))
    torch_opt.zero_grad()
    loss.backward()
    torch_norms.append(float(torch.nn.utils.clip_grad_norm_(torch_model.parameters(), CLIP)))
    torch_opt.step()
    torch_losses.append(loss.item())

  np.testing.assert_allclose(lmjax_losses, torch_losses, rtol=2e-6)   # measured: 2.3e-7
  np.testing.assert_allclose(lmjax_norms, torch_norms, rtol=2e-6)   # measured: 3.7e-7
  assert min(torch_norms) < CLIP < max(torch_norms)   # steps with and without clipping
  assert lmjax_losses[-1] < lmjax_losses[0] - 0.3   # the weights moved: lr and decay are exercised

  # The weights after STEPS updates, under transformers' names (as `convert --to-hf` writes them;
  # lm_head.weight is the tied wte.weight). The key biases are left out: softmax ignores a shift
  # shared by every key, so their gradient is 0 in exact arithmetic and float32 noise, which Adam
  # scales to lr-sized steps of either sign in each framework alike.
  _, trained = hf.hf_state(model.cfg, jax.device_get(state.params))
  torch_weights = torch_model.state_dict()
  assert set(trained) <= set(torch_weights) and set(torch_weights) - set(trained) == {"lm_head.weight"}
  D = config.n_embd
  for name, got in trained.items():
    want = torch_weights[name].detach().numpy()
    if name.endswith("c_attn.bias"):
      got, want = np.delete(got, np.s_[D:2 * D]), np.delete(want, np.s_[D:2 * D])
    np.testing.assert_allclose(got, want, atol=3e-6, err_msg=name)   # measured: 4.2e-7 (the steps: 8 x 1e-2 lr)
