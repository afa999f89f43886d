"""Stage 1, the Event Socket: bytes from FreeSWITCH to decoded events.

``frames`` splits the byte stream into ESL frames (sans-IO), ``events`` decodes
a frame into a frozen ``Event``, ``client`` holds the connection to one node
(greenswitch underneath, login, subscription, reconnect with backoff).
Imports nothing above it but the top-level settings. See docs/architecture.md.
"""
