"""Example plugin: ``kl_correct``, distillation only where the teacher is right.

A real, small strategy that the workflow loads by default (this folder sits beside the Snakefile)
and the workflow test runs. Copy this file to start a plugin of your own; docs/plugins.md is the
reference for every hook.

Per sample, the student is pulled toward the teacher (KL at temperature T) only where the teacher
predicts the true class; elsewhere the sample contributes nothing. A simpler relative of kl_dp: it
keeps wrong teacher predictions out of the target but has no frozen initial student to guard what
the student already knew.
"""

from __future__ import annotations

from dataclasses import dataclass

import kt
from kt.strategies import Loss, Outputs, Strategy, kl_div


@dataclass
class KLCorrect(Strategy):
    """Fields are the options (``transfer.options.kl_correct.temperature``); ``kt plugins`` lists
    them with their defaults, and a misspelled one fails ``snakemake -n``."""

    temperature: float = 1.0

    def loss(self, out: Outputs) -> Loss:
        right = out.teacher.argmax(1) == out.labels
        per_sample = kl_div(out.student, out.teacher, self.temperature) * right
        # the mask gives the metrics' teacher_share: the share of samples taught by the teacher
        return Loss(per_sample.sum() / right.sum().clamp(min=1), teacher_mask=right)


@kt.hookimpl
def register_strategies(register):
    register("kl_correct", KLCorrect)
