"""The store: the engine and driver, the tables, the one writer of job rows, migrations."""
