-- vitals: the six vital-sign series of the cohort from chartevents, long format.
--
-- One row per valid chartevents measurement of a cohort admission inside its export window
-- [window_start - lookback_hours, window_start + window_hours).
-- Columns: hadm_id, charttime, feature (name in resources/features.toml), value (feature unit).
-- Rules: rows flagged error = 1 are dropped; values outside the feature's valid range are dropped
--   as charting errors; Fahrenheit temperatures are range-checked in °F, then converted to °C.
-- Reads the temporary relation `cohort` (cohort.sql) and chartevents.
-- Parameters: %(window_hours)s, %(lookback_hours)s.
WITH items (itemid, feature, fahrenheit) AS (
    VALUES
        -- heartrate, bpm, 0 < v < 300
        (211, 'heartrate', false),     -- Heart Rate (CareVue)
        (220045, 'heartrate', false),  -- Heart Rate (MetaVision)
        -- sysbp, mmHg, 0 < v < 400
        (51, 'sysbp', false),          -- Arterial BP [Systolic]
        (442, 'sysbp', false),         -- Manual BP [Systolic]
        (455, 'sysbp', false),         -- NBP [Systolic]
        (6701, 'sysbp', false),        -- Arterial BP #2 [Systolic]
        (220179, 'sysbp', false),      -- Non Invasive Blood Pressure systolic
        (220050, 'sysbp', false),      -- Arterial Blood Pressure systolic
        -- diasbp, mmHg, 0 < v < 300
        (8368, 'diasbp', false),       -- Arterial BP [Diastolic]
        (8440, 'diasbp', false),       -- Manual BP [Diastolic]
        (8441, 'diasbp', false),       -- NBP [Diastolic]
        (8555, 'diasbp', false),       -- Arterial BP #2 [Diastolic]
        (220180, 'diasbp', false),     -- Non Invasive Blood Pressure diastolic
        (220051, 'diasbp', false),     -- Arterial Blood Pressure diastolic
        -- tempc, °C, 10 < v < 50; °F items 70 < v < 120, then (v - 32) / 1.8
        (676, 'tempc', false),         -- Temperature C
        (223762, 'tempc', false),      -- Temperature Celsius
        (678, 'tempc', true),          -- Temperature F
        (223761, 'tempc', true),       -- Temperature Fahrenheit
        -- resprate, breaths/min, 0 < v < 70
        (615, 'resprate', false),      -- Resp Rate (Total)
        (618, 'resprate', false),      -- Respiratory Rate
        (220210, 'resprate', false),   -- Respiratory Rate
        (224690, 'resprate', false),   -- Respiratory Rate (Total)
        -- spo2, percent, 0 < v <= 100
        (646, 'spo2', false),          -- SpO2
        (220277, 'spo2', false)        -- O2 saturation pulseoxymetry
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
           ce.valuenum::double precision AS valuenum
    FROM chartevents AS ce
    INNER JOIN windows AS w ON w.hadm_id = ce.hadm_id
    INNER JOIN items AS it ON it.itemid = ce.itemid
    -- the constant list lets the planner use itemid indexes and partitions (mimic-code's build)
    WHERE ce.itemid IN (
            211, 220045, 51, 442, 455, 6701, 220179, 220050, 8368, 8440, 8441, 8555, 220180, 220051,
            676, 223762, 678, 223761, 615, 618, 220210, 224690, 646, 220277
        )
        AND ce.error IS DISTINCT FROM 1
        AND ce.valuenum IS NOT NULL
        AND ce.charttime >= w.export_start
        AND ce.charttime < w.export_end
),
checked AS (
    SELECT
        hadm_id, charttime, feature,
        CASE WHEN fahrenheit THEN (valuenum - 32.0) / 1.8 ELSE valuenum END AS value,
        CASE
            WHEN feature = 'heartrate' THEN valuenum > 0 AND valuenum < 300
            WHEN feature = 'sysbp' THEN valuenum > 0 AND valuenum < 400
            WHEN feature = 'diasbp' THEN valuenum > 0 AND valuenum < 300
            WHEN feature = 'tempc' AND fahrenheit THEN valuenum > 70 AND valuenum < 120
            WHEN feature = 'tempc' THEN valuenum > 10 AND valuenum < 50
            WHEN feature = 'resprate' THEN valuenum > 0 AND valuenum < 70
            WHEN feature = 'spo2' THEN valuenum > 0 AND valuenum <= 100
        END AS valid
    FROM events
)
SELECT hadm_id::bigint AS hadm_id, charttime, feature::text AS feature, value::double precision AS value
FROM checked
WHERE valid
ORDER BY hadm_id, charttime, feature, value
