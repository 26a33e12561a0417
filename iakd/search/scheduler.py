"""ASHA that judges a swap schedule only after it hands over.

While a trial's student still trains inside hybrids (its epoch's ``swap_prob`` above 0), the pure student's
score says how far the curriculum has got, not how good it is: scoring it at a rung would stop every
late-handover schedule by construction. ``HandoverASHA`` passes such results by: no stop, nothing recorded at
any rung. The first result after the handover is recorded at the highest rung the trial has passed (ASHA's own
rule for a trial that reaches a rung late), and compared with what other trials recorded there. A schedule that
never reaches 0 is never recorded and runs to its end, where it is judged. Trials that do not swap (baselines)
are ASHA's as usual, so its saving stays where it is fair.
"""

from __future__ import annotations

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from iakd.judging import handed_over

__all__ = ["HandoverASHA"]


class HandoverASHA(AsyncHyperBandScheduler):
    """``AsyncHyperBandScheduler`` that neither stops a trial nor records its score while it swaps."""

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if not handed_over(result):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)
