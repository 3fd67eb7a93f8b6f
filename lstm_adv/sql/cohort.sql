-- cohort: the samples of the study, the hospital admissions with at least one included ICU stay.
--
-- One row per admissions.hadm_id.
-- Reads the temporary relation `stays` (stays.sql) created earlier in the same session.
-- Columns: subject_id, hadm_id,
--   window_start      earliest intime among the admission's included stays (the 48 h window starts here)
--   n_icustays        number of included stays of the admission
--   first_icustay_id  the included stay that starts the window (ties broken by the smaller icustay_id)
--   age_years         age at that stay's intime
--   label             admissions.hospital_expire_flag (in-hospital death, 0/1)
-- Parameters: none.
WITH included AS (
    SELECT
        s.*,
        ROW_NUMBER() OVER (PARTITION BY s.hadm_id ORDER BY s.intime, s.icustay_id) AS stay_rank,
        COUNT(*) OVER (PARTITION BY s.hadm_id) AS n_included
    FROM stays AS s
    WHERE s.included
)
SELECT
    subject_id,
    hadm_id,
    intime AS window_start,
    n_included::bigint AS n_icustays,
    icustay_id AS first_icustay_id,
    age_years,
    hospital_expire_flag AS label
FROM included
WHERE stay_rank = 1
ORDER BY subject_id, hadm_id
