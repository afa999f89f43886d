"""Stage 6, the Kazoo v2 CDR API: one module per resource over one read side.

``app`` assembles the resources (``cdrs``, ``stats``, ``channels``, ``feed``,
``auth``, ``health``, ``ui``) on the plumbing (``core``, ``streams``,
``wsgi``); they read through ``readside.ReadSide`` (``sqlite`` over the
node's file). ``tokens`` and ``sessions`` are the credentials. See docs/api.md.
"""
