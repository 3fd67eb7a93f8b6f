-- bloodgas: the five blood-gas series of the cohort from labevents, long format.
--
-- One row per valid labevents measurement of a cohort admission inside its export window
-- [window_start - lookback_hours, window_start + window_hours).
-- Columns: hadm_id, charttime, feature (name in resources/features.toml), value (feature unit).
-- Rules: values outside the feature's valid range are dropped as errors. Rows without a hadm_id are attributed to the subject's
--   cohort admission whose export window contains their charttime (as in labs.sql).
-- Reads the temporary relation `cohort` (cohort.sql) and labevents.
-- Parameters: %(window_hours)s, %(lookback_hours)s.
WITH items (itemid, feature) AS (
    VALUES
        (50822, 'potassium'),  -- Potassium, Whole Blood, mEq/L, 0 < v
        (50808, 'calcium'),    -- Free Calcium (ionized), mmol/L, 0 < v
        (50820, 'ph'),         -- pH, units, 0 < v
        (50818, 'pco2'),       -- pCO2, mm Hg, 0 < v
        (50813, 'lactate')     -- Lactate, mmol/L, 0 < v
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
    WHERE le.itemid IN (50822, 50808, 50820, 50818, 50813)
    UNION ALL
    SELECT w.hadm_id, le.charttime, le.itemid, le.valuenum, w.export_start, w.export_end
    FROM labevents AS le
    INNER JOIN windows AS w ON w.subject_id = le.subject_id
    WHERE le.hadm_id IS NULL
        AND le.itemid IN (50822, 50808, 50820, 50818, 50813)
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
    WHEN feature = 'potassium' THEN value > 0
    WHEN feature = 'calcium' THEN value > 0
    WHEN feature = 'ph' THEN value > 0
    WHEN feature = 'pco2' THEN value > 0
    WHEN feature = 'lactate' THEN value > 0
END
ORDER BY hadm_id, charttime, feature, value
