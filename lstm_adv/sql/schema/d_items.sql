-- d_items: dictionary of chartevents (and other ICU) itemids. Column types as in MIMIC-III's
-- PostgreSQL build. {schema} is replaced by the target schema (a quoted identifier).
CREATE TABLE {schema}.d_items (
    row_id INT,
    itemid INT NOT NULL,
    label VARCHAR(200),
    abbreviation VARCHAR(100),
    dbsource VARCHAR(20),
    linksto VARCHAR(50),
    category VARCHAR(100),
    unitname VARCHAR(100),
    param_type VARCHAR(30),
    conceptid INT
);
