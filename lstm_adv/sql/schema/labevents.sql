-- labevents: laboratory measurements (blood gases among them). Column types as in MIMIC-III's
-- PostgreSQL build. {schema} is replaced by the target schema (a quoted identifier).
CREATE TABLE {schema}.labevents (
    row_id INT,
    subject_id INT NOT NULL,
    hadm_id INT,
    itemid INT NOT NULL,
    charttime TIMESTAMP(0),
    value VARCHAR(200),
    valuenum DOUBLE PRECISION,
    valueuom VARCHAR(20),
    flag VARCHAR(20)
);
