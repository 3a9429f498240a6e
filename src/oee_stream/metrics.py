"""Prometheus metrics of the service itself (served at /metrics by the API)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SAMPLES_INGESTED = Counter("oee_samples_ingested_total", "Samples accepted by the engine")
SAMPLES_DUPLICATE = Counter("oee_samples_duplicate_total", "Exact duplicate samples counted once")
REDERIVED_MACHINES = Counter(
    "oee_engine_rederived_machines_total",
    "Machines derived again from the engine's log because a late sample landed before rows derived from it")
SAMPLES_LATE_DROPPED = Counter("oee_samples_late_dropped_total", "Samples later than allowed_lateness_s")
DEAD_LETTERS = Counter("oee_dead_letters_total", "Messages or samples refused, by reason", ["reason"])
RESULTS_PUBLISHED = Counter("oee_results_published_total", "KPI records published to the bus")
INGEST_LAG = Gauge("oee_ingest_lag_seconds", "Now minus the newest source timestamp, per machine", ["machine"])
TICK_SECONDS = Histogram("oee_engine_tick_seconds", "Time to advance all windows and format results")
# A restart of a big plant reads minutes of history back before live figures move again: the board, an
# alert or an orchestrator can tell that wait from a stalled engine.
ENGINE_READY = Gauge("oee_engine_ready", "1 once the engine has read its memory back and takes live data, else 0")
WARM_START_PROGRESS = Gauge("oee_engine_warm_start_progress_ratio",
                            "Share of the warm start's span read back from the database (0 to 1)")
WARM_START_SECONDS = Gauge("oee_engine_warm_start_seconds", "How long the last warm start took")
COUNTER_RESETS = Gauge("oee_counter_resets", "Counter resets seen in the retained horizon", ["machine"])
COUNTER_ROLLOVERS = Gauge("oee_counter_rollovers", "Counter rollovers seen in the retained horizon", ["machine"])
DB_WRITE_RETRIES = Gauge("oee_db_write_retries", "Failed database flush attempts so far")
DB_DROPPED_ROWS = Gauge("oee_db_dropped_rows", "Rows the writer had to drop")
DB_BUFFERED_ROWS = Gauge("oee_db_buffered_rows", "Rows waiting for the database")
RETENTION_DELETED = Counter("oee_retention_deleted_rows_total",
                            "Rows deleted by the retention job (plain PostgreSQL)", ["table"])
RETENTION_LAST_RUN = Gauge("oee_retention_last_run_timestamp_seconds", "When the retention job last finished")
API_CACHE_REFRESHED = Gauge("oee_api_cache_refreshed_timestamp_seconds",
                            "When the API's live cache last refreshed from the database")
API_CACHE_REFRESH_FAILURES = Counter("oee_api_cache_refresh_failures_total",
                                     "Live-cache refreshes that failed (database unavailable)")
API_CACHE_FED_ROWS = Counter("oee_api_cache_fed_rows_total",
                             "Rows the writer handed to the API's live cache after committing them")
