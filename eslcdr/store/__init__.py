"""Stage 3, the SQLite store: one writer, read-only readers.

``schema`` holds the columns and the literal SQL migrations, ``db`` the
connections and the insert/ack statements, ``writer`` the single writer
greenlet, ``spool`` the on-disk queue used when the database refuses a write,
``retention`` the purge between batches (its statements too) and the storage
figures. See docs/database.md.
"""
