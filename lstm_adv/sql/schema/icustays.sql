-- icustays: one row per ICU stay. Column types as in MIMIC-III's PostgreSQL build.
-- {schema} is replaced by the target schema (a quoted identifier).
CREATE TABLE {schema}.icustays (
    row_id INT,
    subject_id INT NOT NULL,
    hadm_id INT NOT NULL,
    icustay_id INT NOT NULL,
    dbsource VARCHAR(20),
    first_careunit VARCHAR(20),
    last_careunit VARCHAR(20),
    first_wardid SMALLINT,
    last_wardid SMALLINT,
    intime TIMESTAMP(0) NOT NULL,
    outtime TIMESTAMP(0),
    los DOUBLE PRECISION
);
