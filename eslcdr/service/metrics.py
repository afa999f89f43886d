"""Prometheus metrics of the daemon, read at scrape time.

The event path only bumps plain integer counters on its own objects; this
collector turns the daemon's status snapshot (``Daemon.status()``) into
metric families when ``/metrics`` is scraped, so metrics cost nothing per
event.
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..ingest.legs import GREGORIAN_OFFSET


class DaemonCollector:
    def __init__(self, daemon) -> None:
        self._daemon = daemon

    def collect(self):
        status = self._daemon.status()
        events = CounterMetricFamily("eslcdr_events", "Events received from FreeSWITCH", labels=["node"])
        cdrs = CounterMetricFamily("eslcdr_cdrs_built", "CDRs built from finished legs", labels=["node"])
        errors = CounterMetricFamily("eslcdr_protocol_errors", "Malformed frames or events skipped", labels=["node"])
        reconnects = CounterMetricFamily("eslcdr_reconnects", "Event Socket reconnects", labels=["node"])
        unresponsive = CounterMetricFamily(
            "eslcdr_esl_unresponsive", "Event Socket connections declared dead: no reply to the idle ping",
            labels=["node"],
        )
        connected = GaugeMetricFamily("eslcdr_connected", "1 when the Event Socket is connected", labels=["node"])
        live = GaugeMetricFamily("eslcdr_live_legs", "Legs being tracked", labels=["node"])
        for node in status.nodes:
            events.add_metric([node.name], node.events)
            cdrs.add_metric([node.name], node.cdrs)
            errors.add_metric([node.name], node.protocol_errors)
            reconnects.add_metric([node.name], node.reconnects)
            unresponsive.add_metric([node.name], node.unresponsive)
            connected.add_metric([node.name], 1 if node.connected else 0)
            live.add_metric([node.name], node.live_legs)
        yield from (events, cdrs, errors, reconnects, unresponsive, connected, live)
        writer = status.writer
        if writer is not None:
            yield CounterMetricFamily("eslcdr_cdrs_written", "CDR rows committed to SQLite", value=writer.written)
            yield CounterMetricFamily("eslcdr_cdrs_duplicate", "CDRs already stored (ignored)", value=writer.duplicates)
            yield CounterMetricFamily("eslcdr_cdrs_refused", "CDRs refused: writer backlog full", value=writer.refused)
            yield CounterMetricFamily("eslcdr_write_failures", "Failed SQLite transactions (retried)", value=writer.failures)
            yield GaugeMetricFamily("eslcdr_writer_backlog", "CDRs waiting to be written", value=writer.backlog)
            yield CounterMetricFamily("eslcdr_cdrs_deleted", "CDR rows deleted by retention", value=writer.deleted)
            yield GaugeMetricFamily("eslcdr_spool_backlog", "CDRs in the spool file, not yet in SQLite",
                                    value=writer.spool_backlog)
            yield CounterMetricFamily("eslcdr_cdrs_spooled", "CDRs written to the spool file", value=writer.spooled)
            yield CounterMetricFamily("eslcdr_cdrs_lost", "CDRs neither stored nor spooled (logged in full)",
                                      value=writer.lost + writer.refused)
            yield GaugeMetricFamily("eslcdr_spool_merges", "Interaction merges in the spool file, not yet applied in SQLite",
                                    value=writer.spool_merges)
            yield CounterMetricFamily("eslcdr_interaction_merges_lost",
                                      "Interaction merges neither applied nor spooled (logged at error)",
                                      value=writer.merges_lost)
        backfill = status.backfill
        if backfill is not None:
            yield CounterMetricFamily(
                "eslcdr_backfill_legs", "Legs stored from their mod_json_cdr file (hangup not heard)",
                value=backfill["backfilled"] + backfill["rescued"],
            )
            yield CounterMetricFamily(
                "eslcdr_backfill_replaced", "Not-seen rows replaced from a json_cdr file that came later",
                value=backfill["replaced"],
            )
            yield CounterMetricFamily("eslcdr_backfill_bad_files", "Unreadable json_cdr files skipped",
                                      value=backfill["bad_files"])
            yield GaugeMetricFamily("eslcdr_backfill_awaiting", "Not-seen legs whose json_cdr file is awaited",
                                    value=backfill["awaiting"])
        store = status.store
        if store.get("bytes") is not None:  # after the first storage check
            yield GaugeMetricFamily("eslcdr_db_bytes", "Size of the SQLite file (without its WAL)", value=store["bytes"])
            yield GaugeMetricFamily("eslcdr_db_wal_bytes", "Size of the SQLite WAL file", value=store["wal_bytes"])
            if store["oldest_timestamp"] is not None:
                yield GaugeMetricFamily(
                    "eslcdr_db_oldest_cdr_timestamp_seconds",
                    "Hangup time of the oldest stored CDR, Unix seconds",
                    value=store["oldest_timestamp"] - GREGORIAN_OFFSET,
                )
            unpulled = GaugeMetricFamily(
                "eslcdr_feed_unpulled_rows", "Rows a registered collector has not pulled yet",
                labels=["collector"],
            )
            for name, collector in store["collectors"].items():  # named sha256:<first 12 hex>
                unpulled.add_metric([name], collector["unpulled"])
            yield unpulled
            yield GaugeMetricFamily(
                "eslcdr_feed_unpulled_rows_max", "Most rows any registered collector has not pulled yet",
                value=store["unpulled_max"],
            )
