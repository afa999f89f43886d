"""Stage 5, the hardened HTTP server shared by ``eslcdr run`` and ``eslcdr collect``.

``server`` is gevent.pywsgi with header/body/idle limits and a connection cap,
``redact`` keeps secrets out of logs and answers. See docs/configuration.md.
"""
