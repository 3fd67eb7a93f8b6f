-- vitals: the vital-sign series of the cohort from chartevents, long format.
--
-- One row per valid chartevents measurement of a cohort admission inside its export window
-- [window_start - lookback_hours, window_start + window_hours).
-- Columns: hadm_id, charttime, feature (its name in the feature definitions), value (feature unit).
-- Rules: rows flagged error = 1 are dropped; values outside their item's valid range are dropped
--   as charting errors; Fahrenheit items are range-checked in °F, then converted to °C.
-- Reads the relation `cohort` (cohort.sql; the query stage supplies it as a WITH query) and chartevents.
-- Parameters: %(window_hours)s, %(lookback_hours)s, and the items of the features of source "vital"
--   (resources/features.toml unless the user gives a file), one array per column, aligned by position:
--   %(itemid)s, %(feature)s, %(fahrenheit)s, %(lower_bound)s and %(upper_bound)s (NULL: no bound),
--   %(lower_inclusive)s, %(upper_inclusive)s. A Fahrenheit item's bounds are in °F.
WITH items AS (
    SELECT *
    FROM unnest(
        %(itemid)s::int[], %(feature)s::text[], %(fahrenheit)s::boolean[],
        %(lower_bound)s::double precision[], %(upper_bound)s::double precision[],
        %(lower_inclusive)s::boolean[], %(upper_inclusive)s::boolean[]
    ) AS item (itemid, feature, fahrenheit, lower_bound, upper_bound, lower_inclusive, upper_inclusive)
),
windows AS (
    SELECT
        hadm_id,
        window_start - make_interval(hours => %(lookback_hours)s::int) AS export_start,
        window_start + make_interval(hours => %(window_hours)s::int) AS export_end
    FROM cohort
),
events AS (
    SELECT w.hadm_id, ce.charttime::timestamp AS charttime, it.feature, it.fahrenheit,
           ce.valuenum::double precision AS valuenum,
           it.lower_bound, it.upper_bound, it.lower_inclusive, it.upper_inclusive
    FROM chartevents AS ce
    INNER JOIN windows AS w ON w.hadm_id = ce.hadm_id
    INNER JOIN items AS it ON it.itemid = ce.itemid
    -- the constant itemid array lets the planner use itemid indexes and partitions (mimic-code's build)
    WHERE ce.itemid = ANY(%(itemid)s::int[])
        AND ce.error IS DISTINCT FROM 1
        AND ce.valuenum IS NOT NULL
        AND ce.charttime >= w.export_start
        AND ce.charttime < w.export_end
),
checked AS (
    SELECT
        hadm_id, charttime, feature,
        CASE WHEN fahrenheit THEN (valuenum - 32.0) / 1.8 ELSE valuenum END AS value
    FROM events
    WHERE (lower_bound IS NULL OR valuenum > lower_bound OR (lower_inclusive AND valuenum = lower_bound))
        AND (upper_bound IS NULL OR valuenum < upper_bound OR (upper_inclusive AND valuenum = upper_bound))
)
SELECT hadm_id::bigint AS hadm_id, charttime, feature::text AS feature, value::double precision AS value
FROM checked
ORDER BY hadm_id, charttime, feature, value
