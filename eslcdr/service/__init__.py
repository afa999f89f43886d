"""Stage 7, the process: wiring, supervision, signals, status and its outlets.

``daemon`` wires ESL -> ingest -> store, ``http`` serves the API, ``status``
is the one snapshot that ``monitor`` (summary log, systemd STATUS=),
``metrics`` (Prometheus) and ``demo`` read; ``notify`` speaks sd_notify,
``logs`` configures structlog; ``backfill`` and ``importer`` replay stored
events and JSON CDRs through the same pipeline. See docs/architecture.md.
"""
