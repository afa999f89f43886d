"""Stage 6, the Kazoo v2 CDR API: routes over the query side.

``app`` builds the bottle application, ``tokens`` and ``sessions`` are the
credentials, ``webpage`` the operator page's files. See docs/api.md.
"""
