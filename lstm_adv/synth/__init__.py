"""Synthetic MIMIC-III: a seeded cohort whose physiology and mortality share a latent severity.

:func:`generate_cohort` draws the tables, :func:`run_synth` loads them into PostgreSQL and records a
``synth`` run, :func:`oracle_auroc` scores the true death probabilities (the best any model can do).

Modules: ``timeline`` (patients, admissions, ICU stays and their times), ``physiology`` (how each
feature responds to severity), ``events`` (chartevents and labevents rows), ``cohort`` (the
MIMIC-III tables), ``oracle`` (true-risk AUROC), ``service`` (load and record the run).
"""

from __future__ import annotations

from lstm_adv.synth.cohort import MAX_ADMISSIONS, TABLES, SyntheticCohort, check_request, generate_cohort
from lstm_adv.synth.oracle import TRUTH_FILE, auroc, find_synth_run, load_truth, oracle_auroc
from lstm_adv.synth.service import TRUTH_TABLE, load_cohort, run_synth

__all__ = [
    "MAX_ADMISSIONS",
    "TABLES",
    "TRUTH_FILE",
    "TRUTH_TABLE",
    "SyntheticCohort",
    "auroc",
    "check_request",
    "find_synth_run",
    "generate_cohort",
    "load_cohort",
    "load_truth",
    "oracle_auroc",
    "run_synth",
]
