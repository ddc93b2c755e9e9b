"""Extractive QA: exact match and F1 as SQuAD v1.1's official evaluate-v1.1.py defines them, checked on
hand-made cases whose expected values are worked out by hand from that script, and the held-out split
of the shared file (whole paragraphs on one side).

The official definitions: normalize_answer(s) = white_space_fix(remove_articles(remove_punc(lower(s))))
with remove_punc dropping string.punctuation and remove_articles replacing r'\\b(a|an|the)\\b' by a
space; exact match compares normalized strings; F1 is over normalized whitespace tokens with counts
(Counter intersection) and is 0 when no token is shared; each question takes the max over its gold
answers, EM and F1 separately; the totals are 100 x the mean over questions.
"""
import pathlib

import pytest

from lmjax.config import load_config
from lmjax.tasks import squad

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("text, normalized", [
    ("  The\tQuick,  brown FOX!\n", "quick brown fox"),      # case, punctuation, every kind of whitespace
    ("Theater and another band", "theater and another band"),   # articles only as whole words
    ("An apple, a pear and THE plum.", "apple pear and plum"),
    ("U.S.A.", "usa"),                  # punctuation goes first: dotted letters join into one word
    ("the-end", "theend"),              # ... so a hyphenated article is no longer a word of its own
    ("a.", ""),                         # ... and "a." is the article a, removed
    ("Cat's", "cats"),
    ("1990–1995", "1990–1995"),         # an en dash is not in string.punctuation: kept, as officially
])
def test_normalize_answer(text, normalized):
  assert squad.normalize_answer(text) == normalized


def test_f1_counts_tokens():
  # pred [cat, cat, cat, dog], gold [cat, dog, dog]: shared min(3,1) cats + min(1,2) dogs = 2;
  # P = 2/4, R = 2/3, F1 = 2PR/(P+R) = 4/7.
  assert squad.squad_f1("cat cat cat dog", "cat dog dog") == pytest.approx(4 / 7)
  # Articles and punctuation are not tokens: [cat, sat] against [cat, sat, on]: P = 1, R = 2/3, F1 = 0.8.
  assert squad.squad_f1("The cat, sat!", "a cat sat on") == pytest.approx(0.8)
  assert squad.squad_f1("Denver Broncos", "the DENVER broncos.") == 1.0


def test_empty_predictions():
  assert squad.squad_f1("", "Paris") == 0.0
  assert squad.squad_metrics([""], [["Paris"]]) == {"exact_match": 0.0, "f1": 0.0, "examples": 1}
  # A prediction and a gold answer that both normalize to nothing: equal strings (EM 1), but no
  # shared token, and v1.1's f1_score returns 0 when none is shared (v2.0's script would give 1).
  assert squad.squad_metrics(["The"], [["a"]]) == {"exact_match": 100.0, "f1": 0.0, "examples": 1}


def test_max_over_gold_answers_and_mean_over_questions():
  predictions = ["Broncos of Denver", "Denver Broncos", "in Paris France", "The", "nothing"]
  golds = [["Denver Broncos", "Broncos"],       # EM 0; F1 max(0.8 (P=2/3, R=1), 0.5 (P=1/3, R=1)) = 0.8
           ["Broncos", "the Denver Broncos."],  # EM 1 (second answer); F1 1
           ["Paris", "France, Europe"],         # EM 0; F1 max(0.5 (P=1/3, R=1), 0.4 (P=1/3, R=1/2)) = 0.5
           ["a", "the cat"],                    # EM 1 ("" == ""); F1 max(0, 0) = 0: EM and F1 maxed apart
           ["x"]]                               # EM 0; F1 0
  m = squad.squad_metrics(predictions, golds)
  assert m["examples"] == 5
  assert m["exact_match"] == pytest.approx(100 * 2 / 5)
  assert m["f1"] == pytest.approx(100 * (0.8 + 1 + 0.5 + 0 + 0) / 5)
  # Gold order does not matter.
  assert squad.squad_metrics(predictions, [g[::-1] for g in golds]) == m


def test_held_out_split_keeps_paragraphs_whole(shared_data):
  path = shared_data / "squad" / "squad_v2_dev_2articles.json"
  cfg = load_config(REPO / "experiments" / "squad_minilm.py", [f"--config.data.path={path}"])
  train, held_out = squad.examples(cfg, "train"), squad.examples(cfg, "validation")
  assert len(train) + len(held_out) == len(squad.read_squad(path)) == 293   # the answerable questions
  train_paragraphs, held_paragraphs = {ex["context"] for ex in train}, {ex["context"] for ex in held_out}
  assert not train_paragraphs & held_paragraphs
  # The figures in experiments/squad_minilm.py and the README: 27 questions from 9 of 87 paragraphs.
  assert (len(held_out), len(held_paragraphs), len(train_paragraphs)) == (27, 9, 78)
