"""Complementary knowledge of every ordered (teacher, student) pair, computed for all pairs at once.

For teacher t and student s on an evaluation set of N samples (Roth et al., ICLR 2024, §3):

* ``pos_flips`` — % of samples t classifies correctly and s does not (t's complementary knowledge);
  ``neg_flips`` — the reverse (= ``pos_flips`` of the swapped pair).
* ``pos_flip_entropy`` — entropy (natural log) of the distribution of positive flips over classes; 0
  when there are none. Low entropy = knowledge concentrated in few classes (typical of weak teachers).
* ``top{p}`` for p in :data:`TOP_P` — the smallest number of classes that holds p % of all positive
  flips: sort the per-class counts descending, the smallest k with ``cumsum[k-1] >= p/100 * total``
  (compared exactly, in integers); 0 when there are no flips.
* ``forecast_dp`` — % of samples on which t gives the true class a strictly higher softmax probability
  than s: the share of the transfer set on which KL+DP would follow the teacher (ties go to the
  student). ``forecast_dp_unsup`` — the same with top-1 confidence (max softmax), as ``kl_dp_unsup``.

Modules, in the order the step runs them: :mod:`.loading` (eval logits files → correctness and
softmax statistics, checked to describe the same samples), :mod:`.flips` (bit-packed per-class
positive flip counts with entropy and top-p), :mod:`.forecast` (the pairwise forecast columns),
:mod:`.table` (the pair table and its naive per-pair reference), :mod:`.writing` (parquet + HDF5).
How the all-pairs computation works and what it costs: benchmarks/README.md, "complementarity".
"""

from kt.complementarity.flips import TOP_P, flip_stats
from kt.complementarity.forecast import pairwise_greater
from kt.complementarity.loading import Predictions, load_predictions, softmax_stats
from kt.complementarity.table import COLUMNS, naive_pair, pair_table
from kt.complementarity.writing import complementarity, write_complementarity

__all__ = ["COLUMNS", "TOP_P", "Predictions", "complementarity", "flip_stats", "load_predictions", "naive_pair",
           "pair_table", "pairwise_greater", "softmax_stats", "write_complementarity"]
