-- bloodgas: the blood-gas series of the cohort from labevents, long format.
--
-- One row per valid labevents measurement of a cohort admission inside its export window
-- [window_start - lookback_hours, window_start + window_hours).
-- Columns: hadm_id, charttime, feature (its name in the feature definitions), value (feature unit).
-- Rules: values outside their item's valid range are dropped as errors. Rows without a hadm_id
--   are attributed to the subject's cohort admission whose export window contains their
--   charttime (as in labs.sql).
-- Reads the relation `cohort` (cohort.sql; the query stage supplies it as a WITH query) and labevents.
-- Parameters: %(window_hours)s, %(lookback_hours)s, and the items of the features of source "bloodgas"
--   (resources/features.toml unless the user gives a file), one array per column, aligned by position:
--   %(itemid)s, %(feature)s, %(lower_bound)s and %(upper_bound)s (NULL: no bound),
--   %(lower_inclusive)s, %(upper_inclusive)s.
WITH items AS (
    SELECT *
    FROM unnest(
        %(itemid)s::int[], %(feature)s::text[],
        %(lower_bound)s::double precision[], %(upper_bound)s::double precision[],
        %(lower_inclusive)s::boolean[], %(upper_inclusive)s::boolean[]
    ) AS item (itemid, feature, lower_bound, upper_bound, lower_inclusive, upper_inclusive)
),
windows AS (
    SELECT
        subject_id,
        hadm_id,
        window_start - make_interval(hours => %(lookback_hours)s::int) AS export_start,
        window_start + make_interval(hours => %(window_hours)s::int) AS export_end
    FROM cohort
),
matched AS (
    SELECT w.hadm_id, le.charttime, le.itemid, le.valuenum, w.export_start, w.export_end
    FROM labevents AS le
    INNER JOIN windows AS w ON w.hadm_id = le.hadm_id
    WHERE le.itemid = ANY(%(itemid)s::int[])
    UNION ALL
    SELECT w.hadm_id, le.charttime, le.itemid, le.valuenum, w.export_start, w.export_end
    FROM labevents AS le
    INNER JOIN windows AS w ON w.subject_id = le.subject_id
    WHERE le.hadm_id IS NULL
        AND le.itemid = ANY(%(itemid)s::int[])
),
events AS (
    SELECT m.hadm_id, m.charttime::timestamp AS charttime, it.feature, m.valuenum::double precision AS value,
           it.lower_bound, it.upper_bound, it.lower_inclusive, it.upper_inclusive
    FROM matched AS m
    INNER JOIN items AS it ON it.itemid = m.itemid
    WHERE m.valuenum IS NOT NULL
        AND m.charttime >= m.export_start
        AND m.charttime < m.export_end
)
SELECT hadm_id::bigint AS hadm_id, charttime, feature::text AS feature, value
FROM events
WHERE (lower_bound IS NULL OR value > lower_bound OR (lower_inclusive AND value = lower_bound))
    AND (upper_bound IS NULL OR value < upper_bound OR (upper_inclusive AND value = upper_bound))
ORDER BY hadm_id, charttime, feature, value
