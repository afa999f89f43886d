"""Stage 4, the read side: parameters, SQL and reader pools over the store.

``params`` parses request parameters and keyset cursors, ``sql`` builds the
statements, ``reader`` / ``pool`` / ``stream`` run them (bounded connections,
the heavy lane, keyset-chunked exports), ``kazoo`` holds Kazoo's CDR shapes,
``stats`` the KPI roll-ups and worst-call queries, ``list_csv`` the CSV
rendering. Nothing here speaks HTTP. See docs/api.md.
"""
