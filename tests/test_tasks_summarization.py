"""Summarization: ROUGE-1/2/L as rouge-score computes them (values, not keys) and their aggregation
(mean F-measure over pairs, x100) checked by hand, the lead baseline's first sentence, and the held-out
split of the shared XSum file."""
import pathlib

import numpy as np
import pytest
from rouge_score import rouge_scorer

from lmjax.config import load_config
from lmjax.tasks import summarization

REPO = pathlib.Path(__file__).resolve().parent.parent

# (reference, prediction, hand-computed F-measures of rouge-score's stemmed ROUGE-1, -2, -L). Its
# tokenizer lowercases, splits at anything not [a-z0-9] and Porter-stems tokens longer than 3 letters.
PAIRS = [
    # 5 of 6 unigrams, 3 of 5 bigrams, LCS "the cat on the mat" 5 of 6.
    ("the cat sat on the mat", "the cat lay on the mat", 5 / 6, 3 / 5, 5 / 6),
    # Same words, other order: unigrams all shared, 4 of 5 bigrams, LCS "the sat on the" 4 of 6.
    ("the cat sat on the mat", "the mat sat on the cat", 1.0, 4 / 5, 4 / 6),
    # Stemmed: dogs -> dog, running and runs -> run; "a" and "are" are not shared. LCS "dog run".
    ("Dogs are running", "a dog runs", 2 / 3, 0.0, 2 / 3),
    # [3, 000, us, troop, were, kill] against [u, s, troop, 3, 000, kill]: 4 shared unigrams of 6,
    # the bigram "3 000" of 5, LCS "3 000 kill" 3 of 6.
    ("3,000 US troops were killed.", "U.S. troops: 3,000 killed", 4 / 6, 1 / 5, 3 / 6),
    ("Paris is lovely.", "", 0.0, 0.0, 0.0),   # an empty summary scores 0
]


@pytest.mark.parametrize("reference, prediction, r1, r2, rl", PAIRS)
def test_rouge_of_one_pair_is_rouge_scores_by_hand(reference, prediction, r1, r2, rl):
  expected = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True).score(reference, prediction)
  np.testing.assert_allclose([expected[k].fmeasure for k in ("rouge1", "rouge2", "rougeL")], [r1, r2, rl])
  got = summarization.rouge([reference], [prediction])
  np.testing.assert_allclose([got["rouge1"], got["rouge2"], got["rougeL"]], [100 * r1, 100 * r2, 100 * rl])


def test_rouge_is_the_mean_over_pairs_in_percent():
  got = summarization.rouge([p[0] for p in PAIRS], [p[1] for p in PAIRS])
  for key, column in (("rouge1", 2), ("rouge2", 3), ("rougeL", 4)):
    assert got[key] == pytest.approx(100 * sum(p[column] for p in PAIRS) / len(PAIRS))


def test_lead_sentence():
  # XSum stores one sentence a line: the first non-empty line, even when it holds an abbreviation.
  assert summarization.lead_sentence("\n Mr. Sodje, 37, denied it.\nHe was charged.\n") == "Mr. Sodje, 37, denied it."
  # One line of running text: up to the first sentence end that a space follows.
  assert summarization.lead_sentence("It rained. Then it stopped!") == "It rained."
  assert summarization.lead_sentence("Scores were 3.5 and 4.0 today? Yes.") == "Scores were 3.5 and 4.0 today?"
  assert summarization.lead_sentence("No full stop at all") == "No full stop at all"


def test_xsum_held_out_rows(shared_data):
  path = shared_data / "xsum" / "xsum_200.jsonl"
  cfg = load_config(REPO / "experiments" / "xsum_gpt.py", [f"--config.data.path={path}"])
  train, held_out = summarization.examples(cfg, "train"), summarization.examples(cfg, "validation")
  assert len(train) + len(held_out) == 200
  assert not {ex["source"] for ex in train} & {ex["source"] for ex in held_out}
  assert len(held_out) == 39                 # the figure in experiments/xsum_gpt.py and the README
  assert all("\n" in ex["source"] for ex in held_out)   # one sentence a line: the lead is the first line
