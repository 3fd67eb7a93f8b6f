-- patients: one row per patient. Column types as in MIMIC-III's PostgreSQL build.
-- {schema} is replaced by the target schema (a quoted identifier).
CREATE TABLE {schema}.patients (
    row_id INT,
    subject_id INT NOT NULL,
    gender VARCHAR(5),
    dob TIMESTAMP(0) NOT NULL,
    dod TIMESTAMP(0),
    dod_hosp TIMESTAMP(0),
    dod_ssn TIMESTAMP(0),
    expire_flag INT
);
