"""The tags that tie a sweep's runs together: one home, the search writes them and the analysis reads them."""

from __future__ import annotations

__all__ = ["SWEEP_TAG", "ROLE_TAG", "TRIAL_TAG", "CANDIDATE_TAG", "STATUS_TAG", "FAMILY_TAG", "INTERRUPTED_TAG",
           "ERROR_TAG", "SUPERSEDED_TAG", "TEACHER_WARNING_TAG", "baseline_label"]

SWEEP_TAG = "iakd.sweep"  # on the parent run: the experiment it sweeps
ROLE_TAG = "iakd.role"  # sweep, search, baseline or confirm
TRIAL_TAG = "iakd.trial_id"  # a child run's Tune trial id: the one link between a trial and its run
# The configuration a confirmation (or reused baseline) run stands for: a searched trial's name or a baseline
# label. A confirmation trial's Tune config holds it under this key too; not a run-config key, so
# iakd.search.space.trial_overrides drops it.
CANDIDATE_TAG = "iakd.candidate"
STATUS_TAG = "status"  # a child run's outcome, in the words of iakd.outcomes
FAMILY_TAG = "schedule_family"  # a child run's schedule family ("none" for a method that does not swap)
INTERRUPTED_TAG = "iakd.interrupted"  # on the parent run: "true" when the driver was interrupted
ERROR_TAG = "iakd.error"  # on the parent run: the error that ended the sweep
SUPERSEDED_TAG = "iakd.superseded_by"  # on a parent run that a rerun of the same sweep replaced
TEACHER_WARNING_TAG = "teacher_warning"  # on the parent and every child: the teacher is barely above chance


def baseline_label(method: str, init: str | None = "scratch") -> str:
    """A baseline's name in a sweep (its candidate tag): the method (``kd``), with ``.teacher-init`` when its
    student starts from the teacher's weights (``student.init: teacher``), so that each initialisation has its
    own baselines and a configuration is compared with the ones that share its start."""
    # a dot, not a plus: the label is part of MLflow metric names (confirm_<label>_test_acc_mean) and folder names
    return method if init in (None, "scratch") else f"{method}.{init}-init"
