-- labs: the eight laboratory series of the cohort from labevents, long format.
--
-- One row per valid labevents measurement of a cohort admission inside its export window
-- [window_start - lookback_hours, window_start + window_hours).
-- Columns: hadm_id, charttime, feature (name in resources/features.toml), value (feature unit).
-- Rules: values outside the feature's valid range are dropped as errors. Lab rows without a
--   hadm_id (drawn outside a hospital stay, e.g. just before admission) are attributed to the
--   subject's cohort admission whose export window contains their charttime.
-- Reads the temporary relation `cohort` (cohort.sql) and labevents.
-- Parameters: %(window_hours)s, %(lookback_hours)s.
WITH items (itemid, feature) AS (
    VALUES
        (50862, 'albumin'),      -- Albumin, g/dL, 0 < v <= 10
        (51006, 'bun'),          -- Urea Nitrogen, mg/dL, 0 < v <= 300
        (50912, 'creatinine'),   -- Creatinine, mg/dL, 0 < v <= 150
        (50983, 'sodium'),       -- Sodium, mEq/L, 0 < v <= 200
        (50882, 'bicarbonate'),  -- Bicarbonate, mEq/L, 0 < v <= 10000
        (51265, 'platelet'),     -- Platelet Count, K/uL, 0 < v <= 10000
        (50931, 'glucose'),      -- Glucose, mg/dL, 0 < v <= 10000
        (50960, 'magnesium')     -- Magnesium, mg/dL, 0 < v
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
    WHERE le.itemid IN (50862, 51006, 50912, 50983, 50882, 51265, 50931, 50960)
    UNION ALL
    SELECT w.hadm_id, le.charttime, le.itemid, le.valuenum, w.export_start, w.export_end
    FROM labevents AS le
    INNER JOIN windows AS w ON w.subject_id = le.subject_id
    WHERE le.hadm_id IS NULL
        AND le.itemid IN (50862, 51006, 50912, 50983, 50882, 51265, 50931, 50960)
),
events AS (
    SELECT m.hadm_id, m.charttime::timestamp AS charttime, it.feature, m.valuenum::double precision AS value
    FROM matched AS m
    INNER JOIN items AS it ON it.itemid = m.itemid
    WHERE m.valuenum IS NOT NULL
        AND m.charttime >= m.export_start
        AND m.charttime < m.export_end
)
SELECT hadm_id::bigint AS hadm_id, charttime, feature::text AS feature, value
FROM events
WHERE CASE
    WHEN feature = 'albumin' THEN value > 0 AND value <= 10
    WHEN feature = 'bun' THEN value > 0 AND value <= 300
    WHEN feature = 'creatinine' THEN value > 0 AND value <= 150
    WHEN feature = 'sodium' THEN value > 0 AND value <= 200
    WHEN feature = 'bicarbonate' THEN value > 0 AND value <= 10000
    WHEN feature = 'platelet' THEN value > 0 AND value <= 10000
    WHEN feature = 'glucose' THEN value > 0 AND value <= 10000
    WHEN feature = 'magnesium' THEN value > 0
END
ORDER BY hadm_id, charttime, feature, value
