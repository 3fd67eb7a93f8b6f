-- stays: every ICU stay of the source with its admission and patient, before any filter.
--
-- One row per icustays.icustay_id (icustays ⨝ admissions ⨝ patients).
-- Columns: subject_id, hadm_id, icustay_id, intime, outtime, admittime, dischtime,
--   age_years          years from patients.dob to icustays.intime; MIMIC-III shifts the dob of
--                      patients older than 89 so that they appear ~300 years old: reported as 90.0
--   icu_los_days       (outtime - intime) in days, from the timestamps (not icustays.los)
--   hospital_los_days  (dischtime - admittime) in days
--   hospital_expire_flag  in-hospital death, the label (0/1)
--   adult, hospital_los_ok, icu_los_ok  one inclusion rule each (false when a time is missing)
--   included           all three rules hold
-- Parameters: %(min_age_years)s, %(min_hospital_los_days)s, %(min_icu_los_days)s.
-- Read with search_path set to the MIMIC-III schema.
WITH timed AS (
    SELECT
        ie.subject_id::bigint AS subject_id,
        ie.hadm_id::bigint AS hadm_id,
        ie.icustay_id::bigint AS icustay_id,
        ie.intime::timestamp AS intime,
        ie.outtime::timestamp AS outtime,
        adm.admittime::timestamp AS admittime,
        adm.dischtime::timestamp AS dischtime,
        EXTRACT(EPOCH FROM (ie.intime - pat.dob))::double precision / (365.2425 * 86400.0) AS raw_age_years,
        EXTRACT(EPOCH FROM (ie.outtime - ie.intime))::double precision / 86400.0 AS icu_los_days,
        EXTRACT(EPOCH FROM (adm.dischtime - adm.admittime))::double precision / 86400.0 AS hospital_los_days,
        adm.hospital_expire_flag::bigint AS hospital_expire_flag
    FROM icustays AS ie
    INNER JOIN admissions AS adm ON adm.hadm_id = ie.hadm_id
    INNER JOIN patients AS pat ON pat.subject_id = ie.subject_id
),
aged AS (
    SELECT
        timed.*,
        -- shifted ages (>89 at the first admission) are ~300: treat every one as 90
        CASE WHEN raw_age_years >= 300 THEN 90.0::double precision ELSE raw_age_years END AS age_years
    FROM timed
),
flagged AS (
    SELECT
        aged.*,
        COALESCE(age_years >= %(min_age_years)s, false) AS adult,
        COALESCE(hospital_los_days >= %(min_hospital_los_days)s, false) AS hospital_los_ok,
        COALESCE(icu_los_days >= %(min_icu_los_days)s, false) AS icu_los_ok
    FROM aged
)
SELECT
    subject_id, hadm_id, icustay_id, intime, outtime, admittime, dischtime,
    age_years, icu_los_days, hospital_los_days, hospital_expire_flag,
    adult, hospital_los_ok, icu_los_ok,
    (adult AND hospital_los_ok AND icu_los_ok) AS included
FROM flagged
ORDER BY subject_id, hadm_id, intime, icustay_id
