"""Synthetic MIMIC-III: a seeded cohort whose physiology and mortality share a latent severity.

:func:`generate_cohort` draws the tables, :func:`run_synth` loads them into PostgreSQL and records a
``synth`` run; :func:`lstm_adv.metrics.oracle_auroc` scores the true death probabilities (the best any
model can do) and :func:`lstm_adv.results.artifacts.load_truth` reads them from a synth run.

Modules: ``timeline`` (patients, admissions, ICU stays and their times), ``physiology`` (how each
feature responds to severity), ``events`` (chartevents and labevents rows), ``cohort`` (the
MIMIC-III tables), ``service`` (load and record the run).
"""

from __future__ import annotations

from lstm_adv.synth.cohort import MAX_ADMISSIONS, TABLES, SyntheticCohort, check_request, generate_cohort
from lstm_adv.synth.service import TRUTH_TABLE, load_cohort, run_synth

__all__ = [
    "MAX_ADMISSIONS",
    "TABLES",
    "TRUTH_TABLE",
    "SyntheticCohort",
    "check_request",
    "generate_cohort",
    "load_cohort",
    "run_synth",
]
