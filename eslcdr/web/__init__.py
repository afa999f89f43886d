"""Stage 5, the hardened HTTP server shared by ``eslcdr run`` and ``eslcdr collect``.

``server`` is gevent.pywsgi held to the bounds of ``limits`` (header/body/idle
limits, a connection cap), ``redact`` keeps secrets out of logs and answers.
See docs/configuration.md.
"""
