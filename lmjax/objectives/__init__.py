"""Training objectives by name. A new objective is one file and one line here.

    objective = objectives.get("mlm_nsp", model_cfg)       # UserError if the model cannot serve it
    settings = objectives.Settings(**c.objective, mask_id=tok.mask_id,
                                   special_ids=tok.special_ids, vocab_size=tok.vocab_size)

See common.py for the two functions every objective provides.
"""
from __future__ import annotations

from lmjax.errors import UserError
from lmjax.objectives import classify, clm, electra, mlm, nsp, prefix_lm, seq2seq, sop, span
from lmjax.objectives.common import Objective, Settings, cross_entropy_sums

OBJECTIVES = {
    "clm": clm.OBJECTIVE,
    "mlm": mlm.OBJECTIVE,
    "mlm_nsp": nsp.OBJECTIVE,   # BERT's joint MLM + NSP loss
    "mlm_sop": sop.OBJECTIVE,   # ALBERT's MLM + sentence-order prediction
    "electra": electra.OBJECTIVE,  # ELECTRA: generator MLM + lambda x replaced-token detection
    "prefix_lm": prefix_lm.OBJECTIVE,  # decoder: bidirectional prefix, causal LM loss after a random split
    "classify": classify.OBJECTIVE,   # fine-tuning: sentence classification on [CLS]
    "span": span.OBJECTIVE,           # fine-tuning: extractive QA
    "seq2seq": seq2seq.OBJECTIVE,     # fine-tuning: decoder prompt -> target
}


def get(name: str, model_cfg) -> Objective:
  """The objective `name`, after checking that the model (a TransformerConfig) can serve it."""
  if name not in OBJECTIVES:
    raise UserError(f"objective.name={name!r} is not one of {sorted(OBJECTIVES)}")
  objective = OBJECTIVES[name]
  if objective.causal is True and not model_cfg.causal:
    raise UserError(f"objective {name!r} needs a decoder (model.causal=True); this model is an "
                    f"encoder: use objective mlm or mlm_nsp, or a GPT preset")
  if objective.causal is False and model_cfg.causal:
    raise UserError(f"objective {name!r} needs an encoder with heads {objective.heads}; this model "
                    f"is a decoder (model.causal=True): use objective clm, or a BERT preset")
  missing = [h for h in objective.heads if h not in model_cfg.heads]
  if missing:
    raise UserError(f"objective {name!r} needs model heads {list(objective.heads)}; model.heads="
                    f"{list(model_cfg.heads)} lacks {missing}")
  return objective


__all__ = ["OBJECTIVES", "Objective", "Settings", "cross_entropy_sums", "get"]
