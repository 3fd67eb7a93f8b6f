"""The query stage: the cohort SQL run against MIMIC-III (:mod:`.run`) and the reader of its runs (:mod:`.tables`)."""

from lstm_adv.query.run import SOURCE_TABLES, check_source_tables, cohort_params, load_sql, run_cohort_query
from lstm_adv.query.tables import Measurements, QueryTables
from lstm_adv.results.artifacts import MEASUREMENT_TABLES

__all__ = [
    "MEASUREMENT_TABLES",
    "SOURCE_TABLES",
    "Measurements",
    "QueryTables",
    "check_source_tables",
    "cohort_params",
    "load_sql",
    "run_cohort_query",
]
