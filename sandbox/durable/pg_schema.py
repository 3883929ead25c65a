"""The PostgreSQL journal's schema, as numbered migrations the server applies at start-up.

`MIGRATIONS[n - 1]` takes a database from version n - 1 to n; each runs in one
transaction with the version it reaches, under an advisory lock, so replicas starting
together apply it once and a replica never sees half a schema. A released migration is
never edited: a change is a new one appended."""

from __future__ import annotations

import psycopg

from sandbox.errors import ConfigError

# pg_advisory_xact_lock's key for migrations ("sandbox" in ASCII, as a number).
_LOCK = 0x73616E64626F78

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: executions with leases (owner, generation, lease_until) and their tool answers.
    (
        """CREATE TABLE executions (
            tenant text NOT NULL,
            key text NOT NULL,
            digest text NOT NULL,
            state text NOT NULL CHECK (state IN ('running', 'suspended', 'done')),
            owner text NOT NULL,
            generation bigint NOT NULL DEFAULT 1,
            lease_until timestamptz NOT NULL DEFAULT now(),
            pinned_time text NOT NULL,
            pinned_seed bigint NOT NULL,
            result_json text,
            checkpoint_seq integer,
            checkpoint bytea,
            checkpoint_mac bytea,
            checkpoint_output text,
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            entry_mac bytea NOT NULL DEFAULT '',
            result_mac bytea NOT NULL DEFAULT '',
            PRIMARY KEY (tenant, key)
        )""",
        "CREATE INDEX executions_updated ON executions (updated_at)",
        """CREATE TABLE tool_answers (
            tenant text NOT NULL,
            key text NOT NULL,
            seq integer NOT NULL,
            name text NOT NULL,
            args_json text NOT NULL,
            kwargs_json text NOT NULL,
            answer_json text NOT NULL,
            answered_at double precision NOT NULL,
            mac bytea NOT NULL DEFAULT '',
            PRIMARY KEY (tenant, key, seq),
            FOREIGN KEY (tenant, key) REFERENCES executions ON DELETE CASCADE
        )""",
    ),
    # 2: tenants' quotas shared by the replicas: a token bucket per tenant, and one leased
    # row per concurrency slot held.
    (
        """CREATE TABLE quota_buckets (
            tenant text PRIMARY KEY,
            tokens double precision NOT NULL,
            stamp timestamptz NOT NULL
        )""",
        """CREATE TABLE quota_slots (
            id bigserial PRIMARY KEY,
            tenant text NOT NULL,
            owner text NOT NULL,
            lease_until timestamptz NOT NULL
        )""",
        "CREATE INDEX quota_slots_tenant ON quota_slots (tenant)",
        "CREATE INDEX quota_slots_owner ON quota_slots (owner)",
    ),
    # 3: where each replica serves, so that a call for a session another replica holds
    # can be told where it lives.
    (
        """CREATE TABLE replicas (
            tag text PRIMARY KEY,
            address text NOT NULL,
            seen_at timestamptz NOT NULL DEFAULT now()
        )""",
    ),
)

VERSION = len(MIGRATIONS)


def migrate(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    """Brings the database `conn` is connected to up to VERSION; returns the version it
    found. Raises ConfigError for a database a newer server migrated."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS sandbox_schema_version ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        row = conn.execute("SELECT max(version) FROM sandbox_schema_version").fetchone()
        found = int(str(row[0])) if row is not None and row[0] is not None else 0
        if found > VERSION:
            raise ConfigError(
                f"the journal database is at schema version {found}, newer than this "
                f"server's {VERSION}: run the newer server, or point journal.url elsewhere"
            )
        for version in range(found + 1, VERSION + 1):
            for statement in MIGRATIONS[version - 1]:
                conn.execute(statement)
            conn.execute("INSERT INTO sandbox_schema_version (version) VALUES (%s)", (version,))
    return found
