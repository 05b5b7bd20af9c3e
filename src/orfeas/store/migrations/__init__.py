"""Alembic migrations of the job store; `orfeas.store.migrate` runs them, no alembic.ini is needed.

`versions/` holds one file per schema change, oldest first: `0001_baseline` is the schema the code created with
`metadata.create_all` before migrations existed. To change the schema, edit the tables (store/schema.py)
and add the next file in `versions/` whose `down_revision` is the current head; write its operations
by hand or print alembic's proposal with `orfeas.store.migrate.autogenerate_diff`. SQLite cannot ALTER most things,
so use `op.batch_alter_table` there. tests/store/test_migrations.py fails while the tables and the newest revision
disagree.
"""
