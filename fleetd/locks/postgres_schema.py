"""Schema of the PostgreSQL state store, and its migrations.

fleetd creates and migrates its own objects, all named `fleetd_*`. Each
migration brings the schema from the version before it to its own, in one
transaction, under an advisory lock so that fleetd processes that start
together migrate once.
"""

from __future__ import annotations

import asyncpg
import structlog

from fleetd.locks.common import SchemaError, require_schema_version
from fleetd.pgurl import connect_arguments

log = structlog.get_logger()

#: Key of the advisory lock that serializes schema migrations.
MIGRATION_LOCK = 0x666C65657464  # "fleetd" in ASCII

MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "CREATE SEQUENCE fleetd_tokens",
        """CREATE TABLE fleetd_locks (
            workflow text NOT NULL, record text NOT NULL, mnemonic text NOT NULL,
            agent text NOT NULL,
            owner_host text NOT NULL, owner_pid integer NOT NULL,
            owner_started bigint NOT NULL, owner_instance text NOT NULL,
            token bigint NOT NULL,
            since float8 NOT NULL, expires float8 NOT NULL,
            run_id text NOT NULL,
            PRIMARY KEY (workflow, record, mnemonic))""",
        """CREATE TABLE fleetd_marks (
            workflow text NOT NULL, record text NOT NULL, mnemonic text NOT NULL,
            agent text NOT NULL, resolution text NOT NULL, reason text,
            at float8 NOT NULL,
            PRIMARY KEY (workflow, record, mnemonic))""",
        """CREATE TABLE fleetd_history (
            id bigserial PRIMARY KEY,
            workflow text NOT NULL, record text NOT NULL, mnemonic text NOT NULL,
            agent text NOT NULL, resolution text NOT NULL, reason text,
            run_id text NOT NULL, owner text NOT NULL, token bigint NOT NULL,
            started float8 NOT NULL, at float8 NOT NULL)""",
        "CREATE INDEX fleetd_history_by_record ON fleetd_history (record, workflow)",
        "CREATE INDEX fleetd_history_by_token ON fleetd_history (token)",
    ),
    # Claims and resolutions as functions: one round trip each instead of
    # one per statement. Every statement of a volatile PL/pgSQL function
    # takes a new snapshot, which the second mark check below relies on.
    2: (
        """CREATE OR REPLACE FUNCTION fleetd_acquire(
            p_workflow text, p_record text, p_mnemonic text, p_agent text,
            p_host text, p_pid integer, p_started bigint, p_instance text,
            p_lease float8, p_run_id text, p_check_mark boolean)
        RETURNS TABLE (r_outcome text, r_token bigint, r_expires float8,
            r_agent text, r_host text, r_pid integer, r_started bigint,
            r_instance text, r_since float8, r_run_id text,
            r_resolution text, r_reason text, r_at float8)
        LANGUAGE plpgsql AS $$
        DECLARE
            v_now float8 := extract(epoch from now());
        BEGIN
            LOOP
                IF p_check_mark THEN
                    SELECT m.agent, m.resolution, m.reason, m.at
                        INTO r_agent, r_resolution, r_reason, r_at
                        FROM fleetd_marks m WHERE m.workflow = p_workflow
                        AND m.record = p_record AND m.mnemonic = p_mnemonic;
                    IF FOUND THEN
                        r_outcome := 'done';
                        RETURN NEXT;
                        RETURN;
                    END IF;
                END IF;
                -- A held lock refuses the claim without the insert (and
                -- without taking a token).
                SELECT l.token, l.expires, l.agent, l.owner_host, l.owner_pid,
                        l.owner_started, l.owner_instance, l.since, l.run_id
                    INTO r_token, r_expires, r_agent, r_host, r_pid,
                        r_started, r_instance, r_since, r_run_id
                    FROM fleetd_locks l WHERE l.workflow = p_workflow
                    AND l.record = p_record AND l.mnemonic = p_mnemonic;
                IF FOUND THEN
                    r_outcome := 'locked';
                    RETURN NEXT;
                    RETURN;
                END IF;
                INSERT INTO fleetd_locks AS l (workflow, record, mnemonic,
                    agent, owner_host, owner_pid, owner_started,
                    owner_instance, token, since, expires, run_id)
                VALUES (p_workflow, p_record, p_mnemonic, p_agent, p_host,
                    p_pid, p_started, p_instance, nextval('fleetd_tokens'),
                    v_now, v_now + p_lease, p_run_id)
                ON CONFLICT DO NOTHING
                RETURNING l.token, l.expires INTO r_token, r_expires;
                IF FOUND THEN
                    -- The insert may have waited for a commit of this record
                    -- that released its lock; that commit's mark is visible
                    -- only to a statement that starts now.
                    IF p_check_mark THEN
                        SELECT m.agent, m.resolution, m.reason, m.at
                            INTO r_agent, r_resolution, r_reason, r_at
                            FROM fleetd_marks m WHERE m.workflow = p_workflow
                            AND m.record = p_record AND m.mnemonic = p_mnemonic;
                        IF FOUND THEN
                            DELETE FROM fleetd_locks l
                                WHERE l.workflow = p_workflow
                                AND l.record = p_record
                                AND l.mnemonic = p_mnemonic
                                AND l.token = r_token;
                            r_outcome := 'done';
                            RETURN NEXT;
                            RETURN;
                        END IF;
                    END IF;
                    r_outcome := 'granted';
                    RETURN NEXT;
                    RETURN;
                END IF;
                SELECT l.token, l.expires, l.agent, l.owner_host, l.owner_pid,
                        l.owner_started, l.owner_instance, l.since, l.run_id
                    INTO r_token, r_expires, r_agent, r_host, r_pid,
                        r_started, r_instance, r_since, r_run_id
                    FROM fleetd_locks l WHERE l.workflow = p_workflow
                    AND l.record = p_record AND l.mnemonic = p_mnemonic;
                IF FOUND THEN
                    r_outcome := 'locked';
                    RETURN NEXT;
                    RETURN;
                END IF;
                -- Released between the insert and the select: claim again.
            END LOOP;
        END
        $$""",
        """CREATE OR REPLACE FUNCTION fleetd_resolve(
            p_workflow text, p_record text, p_mnemonic text, p_token bigint,
            p_resolution text, p_agent text, p_run_id text, p_reason text,
            p_mark boolean)
        RETURNS text
        LANGUAGE plpgsql AS $$
        DECLARE
            v_lock fleetd_locks%ROWTYPE;
            v_now float8 := extract(epoch from now());
        BEGIN
            SELECT * INTO v_lock FROM fleetd_locks l
                WHERE l.workflow = p_workflow AND l.record = p_record
                AND l.mnemonic = p_mnemonic FOR UPDATE;
            IF NOT FOUND THEN
                RETURN 'released';
            ELSIF v_lock.token <> p_token THEN
                RETURN 'token';
            ELSIF v_lock.expires < v_now THEN
                RETURN 'expired';
            END IF;
            DELETE FROM fleetd_locks l WHERE l.workflow = p_workflow
                AND l.record = p_record AND l.mnemonic = p_mnemonic;
            IF p_mark THEN
                INSERT INTO fleetd_marks AS m (workflow, record, mnemonic, agent,
                    resolution, reason, at)
                VALUES (p_workflow, p_record, p_mnemonic, p_agent, p_resolution,
                    p_reason, v_now)
                ON CONFLICT (workflow, record, mnemonic) DO UPDATE SET
                    agent = excluded.agent, resolution = excluded.resolution,
                    reason = excluded.reason, at = excluded.at;
            END IF;
            INSERT INTO fleetd_history (workflow, record, mnemonic, agent,
                resolution, reason, run_id, owner, started, at, token)
            VALUES (p_workflow, p_record, p_mnemonic, p_agent, p_resolution,
                p_reason, p_run_id, v_lock.owner_host || ':' || v_lock.owner_pid,
                v_lock.since, v_now, v_lock.token);
            RETURN 'ok';
        END
        $$""",
    ),
    # Claims and resolutions in batches: the concurrent calls of one
    # process share one round trip and one commit (one WAL flush). Each
    # item runs the single-record function, in key order, so that two
    # batches that claim the same records wait for each other instead of
    # deadlocking. Parameters are arrays of equal length, and the rows
    # returned carry the 1-based index of their item.
    3: (
        """CREATE OR REPLACE FUNCTION fleetd_acquire_many(
            p_workflow text[], p_record text[], p_mnemonic text[],
            p_agent text[], p_host text[], p_pid integer[], p_started bigint[],
            p_instance text[], p_lease float8[], p_run_id text[],
            p_check_mark boolean[])
        RETURNS TABLE (r_index integer, r_outcome text, r_token bigint,
            r_expires float8, r_agent text, r_host text, r_pid integer,
            r_started bigint, r_instance text, r_since float8, r_run_id text,
            r_resolution text, r_reason text, r_at float8)
        LANGUAGE plpgsql AS $$
        BEGIN
            FOR r_index IN
                SELECT k.i::integer FROM unnest(p_workflow, p_record, p_mnemonic)
                    WITH ORDINALITY AS k(workflow, record, mnemonic, i)
                    ORDER BY k.workflow, k.record, k.mnemonic, k.i
            LOOP
                SELECT a.r_outcome, a.r_token, a.r_expires, a.r_agent,
                        a.r_host, a.r_pid, a.r_started, a.r_instance,
                        a.r_since, a.r_run_id, a.r_resolution, a.r_reason,
                        a.r_at
                    INTO r_outcome, r_token, r_expires, r_agent, r_host,
                        r_pid, r_started, r_instance, r_since, r_run_id,
                        r_resolution, r_reason, r_at
                    FROM fleetd_acquire(p_workflow[r_index],
                        p_record[r_index], p_mnemonic[r_index],
                        p_agent[r_index], p_host[r_index], p_pid[r_index],
                        p_started[r_index], p_instance[r_index],
                        p_lease[r_index], p_run_id[r_index],
                        p_check_mark[r_index]) a;
                RETURN NEXT;
            END LOOP;
        END
        $$""",
        """CREATE OR REPLACE FUNCTION fleetd_resolve_many(
            p_workflow text[], p_record text[], p_mnemonic text[],
            p_token bigint[], p_resolution text[], p_agent text[],
            p_run_id text[], p_reason text[], p_mark boolean[])
        RETURNS TABLE (r_index integer, r_status text)
        LANGUAGE plpgsql AS $$
        BEGIN
            FOR r_index IN
                SELECT k.i::integer FROM unnest(p_workflow, p_record, p_mnemonic)
                    WITH ORDINALITY AS k(workflow, record, mnemonic, i)
                    ORDER BY k.workflow, k.record, k.mnemonic, k.i
            LOOP
                r_status := fleetd_resolve(p_workflow[r_index],
                    p_record[r_index], p_mnemonic[r_index], p_token[r_index],
                    p_resolution[r_index], p_agent[r_index], p_run_id[r_index],
                    p_reason[r_index], p_mark[r_index]);
                RETURN NEXT;
            END LOOP;
        END
        $$""",
    ),
}

#: Version of the PostgreSQL schema this fleetd writes.
SCHEMA_VERSION = max(MIGRATIONS)

#: Migrations that take locks long enough to stall running daemons; they
#: run only from `fleetd db upgrade`, never automatically at start.
OFFLINE_MIGRATIONS: frozenset[int] = frozenset()


async def migrate(connection: asyncpg.Connection, *, offline: bool) -> int:
    """Create or upgrade the schema; return its version.

    Concurrent callers serialize on an advisory lock, so fleetd processes
    starting together migrate once. Without `offline`, a pending migration
    in OFFLINE_MIGRATIONS raises SchemaError instead of running.
    """
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS fleetd_schema (version integer NOT NULL)"
        )
        version = await connection.fetchval("SELECT max(version) FROM fleetd_schema")
        version = version or 0
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"state database schema version {version} is newer than this"
                f" fleetd supports ({SCHEMA_VERSION}); upgrade fleetd"
            )
        pending = range(version + 1, SCHEMA_VERSION + 1)
        if not offline and OFFLINE_MIGRATIONS.intersection(pending):
            raise SchemaError(
                f"state database schema version {version} needs an upgrade that"
                f" must run while no fleetd runs; run `fleetd db upgrade`"
            )
        for target in pending:
            for statement in MIGRATIONS[target]:
                await connection.execute(statement)
            await connection.execute("DELETE FROM fleetd_schema")
            await connection.execute(
                "INSERT INTO fleetd_schema (version) VALUES ($1)", target
            )
            log.info("state_store_migrated", version=target)

    return SCHEMA_VERSION


async def check_schema(connection: asyncpg.Connection) -> int:
    """Raise SchemaError unless the schema is at this fleetd's version."""
    exists = await connection.fetchval("SELECT to_regclass('fleetd_schema')")
    version = 0
    if exists is not None:
        version = await connection.fetchval("SELECT max(version) FROM fleetd_schema")
    version = version or 0
    require_schema_version(version, SCHEMA_VERSION)

    return version


async def upgrade(url: str) -> int:
    """Create or migrate the schema at `url`, offline migrations included."""
    address, arguments = connect_arguments(url)
    connection = await asyncpg.connect(address, **arguments)
    try:
        return await migrate(connection, offline=True)
    finally:
        await connection.close()
