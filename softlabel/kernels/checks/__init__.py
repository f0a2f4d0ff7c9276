"""The one set of input checks: every rule about an argument lives here, once.

``settings`` (numbers, flags, names), ``positions`` (logits, targets, weights, priors,
previous probabilities), ``references`` (dense teacher logits, top-k references, heads).

Every check raises ValueError (TypeError for a wrong type) naming the argument, the value
and what is allowed. Settings (numbers and flags) are checked where they are set: by the
public functions of ``softlabel.functional`` and by the target sources (at construction
and for every value a schedule can take). Tensors are checked once per call, at a cost of
O(N) in the number of positions, never O(N K): class indices, binary targets and previous
probabilities where they are read, while the finiteness of multiclass logits (and teacher
logits) is checked on the per-row losses the engine computes anyway (``check_finite_rows``),
since a NaN or inf logit in a row that counts makes that row's loss non-finite; probability
rows by the row minima and sums the engine takes while it reads them
(``check_probability_rows``). The offending value is only read on the error path. The
engine (``softlabel.kernels.engine``) checks nothing: it trusts its inputs.

How the task is decided (``binary`` argument of every loss):

- integer ``target`` of shape ``logits.shape[:-1]``: multiclass class indices;
- floating ``target`` of the logits' shape ``(..., K)`` with ``binary`` not True: class
  probabilities (soft targets, as ``torch.nn.functional.cross_entropy`` reads them);
- ``binary=True``: one logit per position, target of the logits' shape holding 0/1 (binary or
  multi-label, independent sigmoids); 1-D logits with a target of the same shape are binary
  by default, since they have no class dimension.
"""

from softlabel.kernels.checks.positions import (
    PROBABILITY_TOLERANCE,
    Positions,
    check_finite,
    check_finite_rows,
    check_logits,
    check_previous,
    check_prior,
    check_probability_rows,
    check_weight,
    prepare,
)
from softlabel.kernels.checks.references import (
    check_head,
    check_teacher,
    check_teacher_positions,
    check_topk,
    check_topk_buckets,
    check_vocabulary_map,
    topk_mass_tolerance,
)
from softlabel.kernels.checks.settings import (
    DEFAULT_BETA,
    DEFAULT_SKEW,
    MAX_TEMPERATURE,
    REDUCTIONS,
    check_alpha,
    check_beta,
    check_chunk_rows,
    check_confidence_margin,
    check_correct_prob,
    check_divergence,
    check_divergence_settings,
    check_flag,
    check_ignore_index,
    check_loss_weight,
    check_margin,
    check_number,
    check_penalty,
    check_power,
    check_reduction,
    check_skew,
    check_smoothing,
    check_target_needed,
    check_temperature,
)

__all__ = [
    "check_number",
    "REDUCTIONS",
    "MAX_TEMPERATURE",
    "check_reduction",
    "check_smoothing",
    "check_alpha",
    "check_margin",
    "check_penalty",
    "check_confidence_margin",
    "check_power",
    "check_correct_prob",
    "check_divergence",
    "check_beta",
    "DEFAULT_BETA",
    "DEFAULT_SKEW",
    "check_skew",
    "check_divergence_settings",
    "check_target_needed",
    "check_ignore_index",
    "check_chunk_rows",
    "check_flag",
    "check_loss_weight",
    "check_temperature",
    "PROBABILITY_TOLERANCE",
    "Positions",
    "check_logits",
    "check_finite",
    "check_finite_rows",
    "check_weight",
    "prepare",
    "check_prior",
    "check_previous",
    "check_probability_rows",
    "check_teacher",
    "check_teacher_positions",
    "topk_mass_tolerance",
    "check_topk",
    "check_topk_buckets",
    "check_vocabulary_map",
    "check_head",
]
