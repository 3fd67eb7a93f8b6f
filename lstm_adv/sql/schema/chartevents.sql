-- chartevents: charted observations (vital signs among them). Column types as in MIMIC-III's
-- PostgreSQL build (which also partitions the table by itemid; a plain table is enough here).
-- {schema} is replaced by the target schema (a quoted identifier).
CREATE TABLE {schema}.chartevents (
    row_id INT,
    subject_id INT NOT NULL,
    hadm_id INT,
    icustay_id INT,
    itemid INT,
    charttime TIMESTAMP(0),
    storetime TIMESTAMP(0),
    cgid INT,
    value VARCHAR(255),
    valuenum DOUBLE PRECISION,
    valueuom VARCHAR(50),
    warning INT,
    error INT,
    resultstatus VARCHAR(50),
    stopped VARCHAR(50)
);
