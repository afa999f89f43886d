"""Stage 2, ingest: events to CDR rows, pure (no I/O).

``legs`` follows each call leg from CREATE to DESTROY, ``interactions`` links
the legs of one call under one id, ``cdr`` turns a finished leg into a row of
the schema, ``live`` is the view of the legs still up that the channels route
serves. See docs/architecture.md.
"""
