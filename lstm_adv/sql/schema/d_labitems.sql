-- d_labitems: dictionary of labevents itemids. Column types as in MIMIC-III's PostgreSQL build.
-- {schema} is replaced by the target schema (a quoted identifier).
CREATE TABLE {schema}.d_labitems (
    row_id INT,
    itemid INT NOT NULL,
    label VARCHAR(100),
    fluid VARCHAR(100),
    category VARCHAR(100),
    loinc_code VARCHAR(100)
);
