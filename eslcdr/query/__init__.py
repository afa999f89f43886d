"""Stage 4, the read side: parameters, SQL and reader pools over the store.

``kazoo`` holds Kazoo's CDR shapes, ``queries`` the list/detail/interaction
parameters, keyset cursors and reader pools, ``stats`` the KPI roll-ups and
worst-call queries, ``list_csv`` the CSV rendering. Nothing here speaks HTTP.
See docs/api.md.
"""
