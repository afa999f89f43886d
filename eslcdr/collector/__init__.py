"""``eslcdr collect``: every media server's CDRs in one PostgreSQL.

config (collector.ini) -> one worker per node: feed (HTTP, NDJSON) ->
records -> pgstore (one transaction: rows + the node's cursor) ->
PostgreSQL; service runs the workers, /health and /metrics.
"""
