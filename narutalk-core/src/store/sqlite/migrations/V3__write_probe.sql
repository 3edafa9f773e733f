-- The table of the write probe (`Database::probe_writes`): a transaction inserts one row
-- of zeros and deletes it again, to check that writes reach the disk. It never holds a row
-- between transactions and nothing reads it.
CREATE TABLE write_probe (
    id INTEGER PRIMARY KEY,
    padding BLOB NOT NULL
);
