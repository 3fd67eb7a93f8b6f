"""The query stage: the cohort SQL run against MIMIC-III (:mod:`.run`), the checks of its source
(:mod:`.checks`), the SQL's parameters (:mod:`.parameters`) and the reader of its runs (:mod:`.tables`)."""

from lstm_adv.query.checks import SOURCE_COLUMNS, SOURCE_TABLES, check_source
from lstm_adv.query.parameters import cohort_params, item_params
from lstm_adv.query.run import load_sql, run_cohort_query, statement, window_start_rule
from lstm_adv.query.tables import Measurements, QueryTables
from lstm_adv.results.artifacts import MEASUREMENT_TABLES

__all__ = [
    "MEASUREMENT_TABLES",
    "SOURCE_COLUMNS",
    "SOURCE_TABLES",
    "Measurements",
    "QueryTables",
    "check_source",
    "cohort_params",
    "item_params",
    "load_sql",
    "run_cohort_query",
    "statement",
    "window_start_rule",
]
