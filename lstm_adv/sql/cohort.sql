-- cohort: the samples of the study, the hospital admissions with at least one included ICU stay.
--
-- One row per admissions.hadm_id.
-- Reads the relation `stays` (stays.sql), which the query stage supplies as a WITH query.
-- Columns: subject_id, hadm_id,
--   window_start      where the admission's 48 h window starts (see the parameter window_start)
--   n_icustays        number of included stays of the admission
--   first_icustay_id  the stay that starts the window (ties broken by the smaller icustay_id)
--   age_years         age at that stay's intime
--   label             admissions.hospital_expire_flag (in-hospital death, 0/1)
-- Parameters: %(window_start)s: 'all' starts the window at the earliest intime among all ICU stays
--   of the admission, included or not; 'included' at the earliest intime among its included stays.
--   Either way an admission is a sample only if at least one of its stays is included.
WITH candidates AS (
    SELECT
        s.*,
        ROW_NUMBER() OVER (PARTITION BY s.hadm_id ORDER BY s.intime, s.icustay_id) AS stay_rank,
        COUNT(*) FILTER (WHERE s.included) OVER (PARTITION BY s.hadm_id) AS n_included
    FROM stays AS s
    WHERE s.included OR %(window_start)s = 'all'
)
SELECT
    subject_id,
    hadm_id,
    intime AS window_start,
    n_included::bigint AS n_icustays,
    icustay_id AS first_icustay_id,
    age_years,
    hospital_expire_flag AS label
FROM candidates
WHERE stay_rank = 1 AND n_included > 0
ORDER BY subject_id, hadm_id
