"""Versioned schema migrations for PostgreSQL, with TimescaleDB features when the extension is there.

`migrate(conninfo)` is safe to call on every start from any number of processes: it takes a
transaction-scoped advisory lock, applies the missing versions in order inside one transaction and
records them in `schema_migrations`. A failure rolls everything back, so a half-migrated schema is
never left behind.

With TimescaleDB 2.x (2.13 or newer, for the `by_range` dimension API; the Timescale License build,
since Apache-only builds lack compression and continuous aggregates) `samples`, `state_intervals` and
`oee_results` become hypertables with compression, retention and continuous aggregates, which every
start refreshes over all time (`refresh_rollups`: late or old rows the policies' window misses). Without
it the same tables are ordinary PostgreSQL tables with ordinary indexes, and the roll-up relations are
plain views with the same names and columns, so dashboards work on both.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import psycopg
import structlog
from psycopg import errors as pg_errors
from psycopg import sql

from oee_stream.storage.schema import SECONDS_COLUMNS

log = structlog.get_logger(__name__)

Flavor = Literal["timescaledb", "postgresql"]

# Fixed key for pg_advisory_xact_lock; any constant works as long as every oee-stream process uses it.
ADVISORY_LOCK_KEY = 0x0EE5_7EA1

# Retention and compression ages. Raw samples are the bulk of the volume and only needed to recompute
# recent windows; KPI results and state intervals are the plant's history and are kept much longer.
SAMPLES_COMPRESS_AFTER = "7 days"
SAMPLES_RETENTION = "90 days"
HISTORY_COMPRESS_AFTER = "30 days"
HISTORY_RETENTION = "730 days"

ROLES: tuple[str, ...] = ("oee_writer", "oee_api", "oee_grafana")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    common: str  # DDL valid on both flavors
    timescaledb: str = ""  # applied after `common` when TimescaleDB is active
    postgresql: str = ""  # applied after `common` on plain PostgreSQL

    def statements(self, flavor: Flavor) -> str:
        extra = self.timescaledb if flavor == "timescaledb" else self.postgresql
        return self.common + "\n" + extra


_SECONDS_DDL = ",\n    ".join(f"{c} double precision NOT NULL DEFAULT 0" for c in SECONDS_COLUMNS)

_V1_COMMON = f"""
CREATE TABLE IF NOT EXISTS samples (
    time        timestamptz      NOT NULL,
    machine_id  text             NOT NULL,
    signal      text             NOT NULL,
    value       double precision,
    text_value  text,
    quality     smallint         NOT NULL DEFAULT 0,
    PRIMARY KEY (machine_id, signal, time)
);
COMMENT ON TABLE samples IS 'Raw telemetry as received from the bus; one row per machine, signal and source timestamp.';
COMMENT ON COLUMN samples.value IS 'Numeric value (booleans as 0/1); NULL when the value is text or missing.';
COMMENT ON COLUMN samples.text_value IS 'Value when the signal carries text (e.g. a product name).';
COMMENT ON COLUMN samples.quality IS '0 = good, 1 = uncertain, 2 = bad.';

CREATE TABLE IF NOT EXISTS state_intervals (
    machine_id     text        NOT NULL,
    start_time     timestamptz NOT NULL,
    end_time       timestamptz,
    time_class     text        NOT NULL,
    reason         text,
    reason_source  text,
    comment        text,
    PRIMARY KEY (machine_id, start_time)
);
COMMENT ON COLUMN state_intervals.end_time IS 'NULL while the interval is still open (the machine is in this state now).';
COMMENT ON COLUMN state_intervals.reason_source IS 'plc | rule | operator; an operator entry is never overwritten by a later automatic one.';
CREATE INDEX IF NOT EXISTS state_intervals_open_idx ON state_intervals (machine_id) WHERE end_time IS NULL;

CREATE TABLE IF NOT EXISTS oee_results (
    entity             text             NOT NULL,
    entity_kind        text             NOT NULL,
    window_kind        text             NOT NULL,
    window_start       timestamptz      NOT NULL,
    window_end         timestamptz      NOT NULL,
    computed_at        timestamptz      NOT NULL DEFAULT now(),
    availability       double precision,
    performance        double precision,
    quality            double precision,
    oee                double precision,
    teep               double precision,
    utilization        double precision,
    coverage           double precision,
    total              double precision NOT NULL DEFAULT 0,
    good               double precision NOT NULL DEFAULT 0,
    reject             double precision NOT NULL DEFAULT 0,
    {_SECONDS_DDL},
    ppt_s              double precision NOT NULL DEFAULT 0,
    run_time_s         double precision NOT NULL DEFAULT 0,
    net_run_time_s     double precision NOT NULL DEFAULT 0,
    fully_productive_s double precision NOT NULL DEFAULT 0,
    stops              integer          NOT NULL DEFAULT 0,
    mtbf_s             double precision,
    mttr_s             double precision,
    flags              text[]           NOT NULL DEFAULT '{{}}',
    config_hash        text             NOT NULL DEFAULT '',
    payload            jsonb            NOT NULL,
    PRIMARY KEY (entity, window_kind, window_start)
);
COMMENT ON TABLE oee_results IS 'One row per entity and window; late data re-emits a window and the row is replaced. Roll up by adding seconds and counts, never by averaging ratios.';
COMMENT ON COLUMN oee_results.payload IS 'The full KPI record as the engine emitted it (KpiResult.to_json()).';
-- "Latest result of a window kind" is the API's hot query.
CREATE INDEX IF NOT EXISTS oee_results_latest_idx ON oee_results (entity, window_kind, window_end DESC);

CREATE TABLE IF NOT EXISTS config_versions (
    config_hash  text        PRIMARY KEY,
    created_at   timestamptz NOT NULL DEFAULT now(),
    body         jsonb       NOT NULL
);

CREATE TABLE IF NOT EXISTS dead_letters (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    received_at  timestamptz NOT NULL DEFAULT now(),
    reason       text        NOT NULL,
    topic        text,
    payload      bytea
);
COMMENT ON COLUMN dead_letters.id IS 'Generated by the writer before the first attempt, so a retried insert cannot duplicate the row.';
CREATE INDEX IF NOT EXISTS dead_letters_received_idx ON dead_letters (received_at DESC);
"""

_V1_TIMESCALEDB = f"""
SELECT create_hypertable('samples', by_range('time', INTERVAL '1 day'), if_not_exists => TRUE);
SELECT create_hypertable('state_intervals', by_range('start_time', INTERVAL '7 days'), if_not_exists => TRUE);
SELECT create_hypertable('oee_results', by_range('window_start', INTERVAL '7 days'), if_not_exists => TRUE);

ALTER TABLE samples SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'machine_id',
    timescaledb.compress_orderby = 'signal, time DESC'
);
ALTER TABLE state_intervals SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'machine_id',
    timescaledb.compress_orderby = 'start_time DESC'
);
ALTER TABLE oee_results SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'entity',
    timescaledb.compress_orderby = 'window_kind, window_start DESC'
);

SELECT add_compression_policy('samples', INTERVAL '{SAMPLES_COMPRESS_AFTER}', if_not_exists => TRUE);
SELECT add_compression_policy('state_intervals', INTERVAL '{HISTORY_COMPRESS_AFTER}', if_not_exists => TRUE);
SELECT add_compression_policy('oee_results', INTERVAL '{HISTORY_COMPRESS_AFTER}', if_not_exists => TRUE);

SELECT add_retention_policy('samples', drop_after => INTERVAL '{SAMPLES_RETENTION}', if_not_exists => TRUE);
SELECT add_retention_policy('state_intervals', drop_after => INTERVAL '{HISTORY_RETENTION}', if_not_exists => TRUE);
SELECT add_retention_policy('oee_results', drop_after => INTERVAL '{HISTORY_RETENTION}', if_not_exists => TRUE);
"""

_V1_POSTGRESQL = """
-- Time-range scans (pruning, Grafana panels) on append-mostly tables: BRIN is tiny and good enough.
CREATE INDEX IF NOT EXISTS samples_time_brin ON samples USING brin (time);
CREATE INDEX IF NOT EXISTS oee_results_window_start_brin ON oee_results USING brin (window_start);
CREATE INDEX IF NOT EXISTS state_intervals_start_brin ON state_intervals USING brin (start_time);
"""


def _sums(source_prefix: str = "") -> str:
    cols = ["total", "good", "reject", *SECONDS_COLUMNS, "ppt_s", "run_time_s", "net_run_time_s",
            "fully_productive_s", "stops"]
    return ",\n       ".join(f"sum({source_prefix}{c}) AS {c}" for c in cols)


# Roll-ups of the engine's hourly results (window_kind = 'hour'). Only additive columns are stored;
# `oee_hourly_kpi` / `oee_daily_kpi` derive the ratios from the sums (OEE-SEMANTICS.md section 4).
# Days are UTC days: plant-local days and shifts come from the engine's own 'day'/'shift' results.
def _rollup_select(bucket_expr: str) -> str:
    return f"""SELECT entity, entity_kind,
       {bucket_expr} AS bucket,
       {_sums()},
       count(*) AS windows
FROM oee_results
WHERE window_kind = 'hour'
GROUP BY entity, entity_kind, {bucket_expr}"""


_KPI_VIEWS = """
CREATE OR REPLACE VIEW oee_hourly_kpi AS
SELECT *,
       run_time_s / NULLIF(ppt_s, 0) AS availability,
       net_run_time_s / NULLIF(run_time_s, 0) AS performance,
       good / NULLIF(total, 0) AS quality,
       CASE WHEN ppt_s > 0 THEN COALESCE(net_run_time_s * good / NULLIF(total, 0) / ppt_s, 0) END AS oee
FROM oee_hourly;
CREATE OR REPLACE VIEW oee_daily_kpi AS
SELECT *,
       run_time_s / NULLIF(ppt_s, 0) AS availability,
       net_run_time_s / NULLIF(run_time_s, 0) AS performance,
       good / NULLIF(total, 0) AS quality,
       CASE WHEN ppt_s > 0 THEN COALESCE(net_run_time_s * good / NULLIF(total, 0) / ppt_s, 0) END AS oee
FROM oee_daily;
"""

_V2_TIMESCALEDB = f"""
CREATE MATERIALIZED VIEW IF NOT EXISTS oee_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
{_rollup_select("time_bucket(INTERVAL '1 hour', window_start)")}
WITH NO DATA;

CREATE MATERIALIZED VIEW IF NOT EXISTS oee_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
{_rollup_select("time_bucket(INTERVAL '1 day', window_start)")}
WITH NO DATA;

CREATE MATERIALIZED VIEW IF NOT EXISTS samples_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT machine_id, signal,
       time_bucket(INTERVAL '1 hour', time) AS bucket,
       count(*) AS samples,
       avg(value) AS avg_value,
       min(value) AS min_value,
       max(value) AS max_value
FROM samples
GROUP BY machine_id, signal, time_bucket(INTERVAL '1 hour', time)
WITH NO DATA;

-- start_offset reaches back past the engine's allowed lateness so re-emitted hours are picked up.
SELECT add_continuous_aggregate_policy('oee_hourly',
    start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '30 minutes', if_not_exists => TRUE);
SELECT add_continuous_aggregate_policy('oee_daily',
    start_offset => INTERVAL '7 days', end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '1 hour', if_not_exists => TRUE);
SELECT add_continuous_aggregate_policy('samples_hourly',
    start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '30 minutes', if_not_exists => TRUE);
{_KPI_VIEWS}
"""

_V2_POSTGRESQL = f"""
CREATE OR REPLACE VIEW oee_hourly AS
{_rollup_select("date_trunc('hour', window_start, 'UTC')")};

CREATE OR REPLACE VIEW oee_daily AS
{_rollup_select("date_trunc('day', window_start, 'UTC')")};

CREATE OR REPLACE VIEW samples_hourly AS
SELECT machine_id, signal,
       date_trunc('hour', time, 'UTC') AS bucket,
       count(*) AS samples,
       avg(value) AS avg_value,
       min(value) AS min_value,
       max(value) AS max_value
FROM samples
GROUP BY machine_id, signal, date_trunc('hour', time, 'UTC');
{_KPI_VIEWS}
"""

# An area is named after its `area` string and a line by its id, so "extrusion" can be both (the demo
# plant does this): without entity_kind in the key the line and area rows of a window overwrote each other.
_V3_COMMON = """
ALTER TABLE oee_results DROP CONSTRAINT IF EXISTS oee_results_pkey;
ALTER TABLE oee_results ADD CONSTRAINT oee_results_pkey
    PRIMARY KEY (entity, entity_kind, window_kind, window_start);
DROP INDEX IF EXISTS oee_results_latest_idx;
CREATE INDEX IF NOT EXISTS oee_results_latest_idx
    ON oee_results (entity, entity_kind, window_kind, window_end DESC);
"""

_V4_COMMON = """
ALTER TABLE state_intervals ADD COLUMN IF NOT EXISTS reason_category text;
ALTER TABLE state_intervals ADD COLUMN IF NOT EXISTS end_locked boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN state_intervals.end_locked IS 'Set when an operator split the event: the engine re-emitting the interval must not move its end.';

CREATE TABLE IF NOT EXISTS audit_log (
    id          bigserial   PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text        NOT NULL,
    action      text        NOT NULL,
    target      jsonb       NOT NULL,
    old         jsonb,
    new         jsonb
);
COMMENT ON TABLE audit_log IS 'Every change made through the API: who (API key name), when, what it was, what it became.';
CREATE INDEX IF NOT EXISTS audit_log_at_idx ON audit_log (at DESC);

CREATE TABLE IF NOT EXISTS api_keys (
    id          text        PRIMARY KEY,
    name        text        NOT NULL,
    role        text        NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    salt        bytea       NOT NULL,
    hash        bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
COMMENT ON TABLE api_keys IS 'API keys: sha256(salt || secret) only; the plaintext is shown once at creation.';

CREATE TABLE IF NOT EXISTS api_config (
    version     bigserial   PRIMARY KEY,
    section     text        NOT NULL,
    body        jsonb       NOT NULL,
    config_hash text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text        NOT NULL
);
COMMENT ON TABLE api_config IS 'Configuration set through the API (reason_tree, targets, products), one row per version; the newest row of a section is in force.';
CREATE INDEX IF NOT EXISTS api_config_section_idx ON api_config (section, version DESC);
"""

# TimescaleDB refuses to drop or create a primary key / unique constraint on a hypertable that has
# compression enabled ("operation not supported on hypertables that have compression enabled"; the
# compression docs: "Creation of unique constraints on compressed chunks is not supported. You can add them
# by disabling compression on the hypertable and re-enabling after constraint creation"). Migration 1 enables
# it, so on TimescaleDB the key is swapped with compression off: policy removed, chunks decompressed,
# compression disabled, key swapped, compression and policy back. The new key column entity_kind joins the
# segment-by columns, so every key column is a segment-by or order-by column of the compressed chunks.
_V3_TIMESCALEDB = f"""
SELECT remove_compression_policy('oee_results', if_exists => TRUE);
SELECT decompress_chunk(c, TRUE) FROM show_chunks('oee_results') AS c;
ALTER TABLE oee_results SET (timescaledb.compress = false);
{_V3_COMMON}
ALTER TABLE oee_results SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'entity, entity_kind',
    timescaledb.compress_orderby = 'window_kind, window_start DESC'
);
SELECT add_compression_policy('oee_results', INTERVAL '{HISTORY_COMPRESS_AFTER}', if_not_exists => TRUE);
"""

# The connectors' online/offline events as the engine applied them, so that a restarted engine can rebuild
# its windows from the database (`oee_stream.storage.history`): the samples alone cannot tell a connector
# outage (unknown time) from a machine that sent nothing new. Kept as long as the samples.
_V5_COMMON = """
CREATE TABLE IF NOT EXISTS connector_events (
    time        timestamptz NOT NULL,
    machine_id  text        NOT NULL,
    connector   text        NOT NULL,
    state       text        NOT NULL CHECK (state IN ('online', 'offline')),
    session     text        NOT NULL DEFAULT '',
    PRIMARY KEY (machine_id, time, state, session)
);
COMMENT ON TABLE connector_events IS 'A connector going offline (its last will) or coming online, per machine, at the time the engine applied it; a new session after an offline event means the data in between was lost.';
"""
_V5_TIMESCALEDB = f"""
SELECT create_hypertable('connector_events', by_range('time', INTERVAL '30 days'), if_not_exists => TRUE);
SELECT add_retention_policy('connector_events', drop_after => INTERVAL '{SAMPLES_RETENTION}', if_not_exists => TRUE);
"""
_V5_POSTGRESQL = """
CREATE INDEX IF NOT EXISTS connector_events_time_idx ON connector_events (time);
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "tables", _V1_COMMON, _V1_TIMESCALEDB, _V1_POSTGRESQL),
    Migration(2, "roll-ups", "", _V2_TIMESCALEDB, _V2_POSTGRESQL),
    Migration(3, "entity kind in the result key", "", _V3_TIMESCALEDB, _V3_COMMON),
    Migration(4, "operator reasons, audit log, API keys, API config", _V4_COMMON),
    Migration(5, "connector events", _V5_COMMON, _V5_TIMESCALEDB, _V5_POSTGRESQL),
)


def _check_order(migrations: Sequence[Migration]) -> None:
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)):
        raise RuntimeError(f"migration versions must be unique and increasing, got {versions}")


_check_order(MIGRATIONS)


def _parse_version(v: str) -> tuple[int, ...]:
    out: list[int] = []
    for part in v.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def detect_flavor(conn: psycopg.Connection) -> Flavor:
    """TimescaleDB when the extension is installed (or installable here) and new enough; else PostgreSQL.

    Must run inside a transaction: creating the extension is attempted in a savepoint, because it fails
    both without privilege and when the library is not in shared_preload_libraries.
    """
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    if row is None:
        available = conn.execute(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'"
        ).fetchone()
        if available is None:
            return "postgresql"
        try:
            with conn.transaction():
                conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        except psycopg.Error as exc:
            log.warning("timescaledb_unavailable", error=str(exc).strip().splitlines()[0])
            return "postgresql"
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
        if row is None:
            return "postgresql"
    version = str(row[0])
    if _parse_version(version) < (2, 13):
        log.warning("timescaledb_too_old", version=version, needed="2.13")
        return "postgresql"
    # Apache-only builds (the "-oss" packages) refuse compression and continuous aggregates ("functionality
    # not supported under the current apache license"): migration 1 would fail and the service not start.
    lic = conn.execute("SELECT current_setting('timescaledb.license', true)").fetchone()
    if lic is not None and lic[0] == "apache":
        log.warning("timescaledb_apache_only", version=version,
                    why="compression and continuous aggregates need the Timescale License (community) build")
        return "postgresql"
    return "timescaledb"


# Continuous aggregates are created WITH NO DATA (a refresh cannot run in the migration's transaction) and
# their policies only refresh the last days: hours older than that which were never materialized -- history
# from before migration 2, results written late after a long outage -- would be missing below the
# real-time part. A refresh over all time up to the policies' end_offset catches them; it only works on
# invalidated and never-materialized buckets, so on a current database it is quick.
CONTINUOUS_AGGREGATES: tuple[str, ...] = ("oee_hourly", "oee_daily", "samples_hourly")


def refresh_rollups(conn: psycopg.Connection) -> None:
    """Materialize what the continuous aggregates lack (TimescaleDB; autocommit, outside a transaction)."""
    for view in CONTINUOUS_AGGREGATES:
        started = time.monotonic()
        try:
            conn.execute(sql.SQL("CALL refresh_continuous_aggregate({}, NULL, now() - INTERVAL '1 hour')").format(
                sql.Literal(view)))
        except psycopg.Error as exc:  # e.g. not the owner: the policies still refresh the recent days
            log.warning("continuous_aggregate_refresh_failed", view=view,
                        error=str(exc).strip().splitlines()[0] if str(exc) else type(exc).__name__)
            continue
        log.info("continuous_aggregate_refreshed", view=view, seconds=round(time.monotonic() - started, 3))


def _ensure_roles(conn: psycopg.Connection, flavor: Flavor = "postgresql") -> list[str]:
    """Create the NOLOGIN group roles and grant them; skip quietly where the user may not.

    Roles are cluster-wide and several databases may migrate at once (tests, blue/green), so a
    concurrent creation is treated like an existing role.
    """
    done: list[str] = []
    dbname = conn.info.dbname
    grants = {
        "oee_writer": [
            "GRANT USAGE ON SCHEMA public TO oee_writer",
            "GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO oee_writer",
            "GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO oee_writer",
        ],
        "oee_api": [
            "GRANT USAGE ON SCHEMA public TO oee_api",
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO oee_api",
        ],
        "oee_grafana": [
            "GRANT USAGE ON SCHEMA public TO oee_grafana",
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO oee_grafana",
        ],
    }
    for role in ROLES:
        try:
            with conn.transaction():
                exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
                if exists is None:
                    conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
        except (pg_errors.DuplicateObject, pg_errors.UniqueViolation):
            pass
        except pg_errors.InsufficientPrivilege:
            log.info("role_create_skipped", role=role, why="insufficient privilege")
            continue
        try:
            with conn.transaction():
                conn.execute(
                    sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                        sql.Identifier(dbname), sql.Identifier(role)
                    )
                )
                for stmt in grants[role]:
                    conn.execute(stmt)
                if flavor == "timescaledb":
                    # Named on each continuous aggregate so the grant reaches its materialization hypertable
                    # too (an ALL TABLES grant covers only the view: "permission denied for table
                    # _materialized_hypertable_N").
                    conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(
                        sql.SQL(", ").join(sql.Identifier(v) for v in CONTINUOUS_AGGREGATES), sql.Identifier(role)))
            done.append(role)
        except (pg_errors.InsufficientPrivilege, pg_errors.UndefinedObject) as exc:
            log.info("role_grant_skipped", role=role, error=str(exc).strip().splitlines()[0])
    return done


@dataclass(frozen=True)
class MigrationReport:
    flavor: Flavor
    applied: list[int]  # versions applied by this call (empty when the schema was current)
    current: int
    roles: list[str]


def migrate(
    conninfo: str,
    *,
    migrations: Sequence[Migration] = MIGRATIONS,
    timescaledb: bool | None = None,
) -> MigrationReport:
    """Bring the database schema up to date; idempotent and safe against concurrent callers.

    `timescaledb=None` detects the extension; False forces plain PostgreSQL (e.g. for tests).
    The flavor chosen by the first migration is kept for later ones, so a database never ends up
    half hypertables, half plain tables.
    """
    _check_order(migrations)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
            conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version     integer     PRIMARY KEY,
                       name        text        NOT NULL,
                       flavor      text        NOT NULL,
                       applied_at  timestamptz NOT NULL DEFAULT now()
                   )"""
            )
            rows = conn.execute("SELECT version, flavor FROM schema_migrations ORDER BY version").fetchall()
            done = {int(r[0]) for r in rows}
            flavor: Flavor
            if rows:
                flavor = "timescaledb" if rows[0][1] == "timescaledb" else "postgresql"
            elif timescaledb is False:
                flavor = "postgresql"
            else:
                flavor = detect_flavor(conn)
                if timescaledb is True and flavor != "timescaledb":
                    raise RuntimeError("TimescaleDB was required but is not available in this database")
            applied: list[int] = []
            for m in migrations:
                if m.version in done:
                    continue
                conn.execute(m.statements(flavor))
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, flavor) VALUES (%s, %s, %s)",
                    (m.version, m.name, flavor),
                )
                applied.append(m.version)
                log.info("migration_applied", version=m.version, name=m.name, flavor=flavor)
            roles = _ensure_roles(conn, flavor)
        if flavor == "timescaledb":
            refresh_rollups(conn)
    current = max([*done, *applied], default=0)
    return MigrationReport(flavor=flavor, applied=applied, current=current, roles=roles)


async def migrate_async(
    conninfo: str,
    *,
    migrations: Sequence[Migration] = MIGRATIONS,
    timescaledb: bool | None = None,
) -> MigrationReport:
    """`migrate` for async callers; runs in a thread so the event loop keeps serving."""
    return await asyncio.to_thread(migrate, conninfo, migrations=migrations, timescaledb=timescaledb)
