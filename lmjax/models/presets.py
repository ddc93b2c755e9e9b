"""Named model sizes. `TransformerConfig(**PRESETS["bert-base"])`, or `model.preset` in a config.

BERT presets follow Google's BERT release (bert-tiny/mini from Turc et al. 2019);
GPT-2 presets follow OpenAI's GPT-2 (vocab 50257, 1024 positions, tanh GELU, pre-LN).
Every preset initialises every kernel as N(0, 0.02), so the arms of a comparison start alike;
GPT-2's own init (its residual projections at 0.02 / sqrt(2 N), as nanoGPT's and HF's) is
`model.scale_residual_init=True`; measured on nanoGPT's Shakespeare it did worse (README
"Reproducing nanoGPT's Shakespeare"), so the Shakespeare configs leave it off too.
tests/test_models.py pins each preset's exact parameter count.
"""
BERT = dict(vocab_size=30522, max_len=512, type_vocab_size=2, causal=False, pre_ln=False,
            norm="layernorm", norm_eps=1e-12, position="learned", activation="gelu",
            tie_embeddings=True, heads=("mlm", "nsp"))
GPT2 = dict(vocab_size=50257, max_len=1024, type_vocab_size=0, causal=True, pre_ln=True,
            norm="layernorm", norm_eps=1e-5, position="learned", activation="gelu_tanh",
            tie_embeddings=True, heads=())

PRESETS = {
    "bert-tiny": dict(BERT, hidden=128, num_layers=2, num_heads=2, mlp_dim=512),
    "bert-mini": dict(BERT, hidden=256, num_layers=4, num_heads=4, mlp_dim=1024),
    "bert-base": dict(BERT, hidden=768, num_layers=12, num_heads=12, mlp_dim=3072),
    "bert-large": dict(BERT, hidden=1024, num_layers=24, num_heads=16, mlp_dim=4096),
    "gpt-tiny": dict(GPT2, vocab_size=8192, max_len=512, hidden=256, num_layers=4, num_heads=4,
                     mlp_dim=1024),
    "gpt2-small": dict(GPT2, hidden=768, num_layers=12, num_heads=12, mlp_dim=3072),
    "gpt2-medium": dict(GPT2, hidden=1024, num_layers=24, num_heads=16, mlp_dim=4096),
}
