-- admissions: one row per hospital admission. Column types as in MIMIC-III's PostgreSQL build.
-- {schema} is replaced by the target schema (a quoted identifier).
CREATE TABLE {schema}.admissions (
    row_id INT,
    subject_id INT NOT NULL,
    hadm_id INT NOT NULL,
    admittime TIMESTAMP(0) NOT NULL,
    dischtime TIMESTAMP(0) NOT NULL,
    deathtime TIMESTAMP(0),
    admission_type VARCHAR(50),
    admission_location VARCHAR(50),
    discharge_location VARCHAR(50),
    insurance VARCHAR(255),
    language VARCHAR(10),
    religion VARCHAR(50),
    marital_status VARCHAR(50),
    ethnicity VARCHAR(200),
    edregtime TIMESTAMP(0),
    edouttime TIMESTAMP(0),
    diagnosis VARCHAR(255),
    hospital_expire_flag SMALLINT,
    has_chartevents_data SMALLINT
);
