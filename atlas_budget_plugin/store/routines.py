"""Server-side reserve and settle: one round trip each on PostgreSQL and MariaDB.

The ledger's Python path takes ~20 statements and four BEGIN/COMMITs per call on a
server; these routines do the steady state of a call in one statement each, in the
server's own transaction (autocommit), with the same locks in the same order:

* ``reserve`` finds the counters of the call's targets, locks them in ascending id
  order, reads the standings (rolling windows summed, rollover carry from the previous
  window's counter), and holds the estimate on every target when it fits every limit.
  When it does not fit everywhere nothing is written and the standings go back to
  Python, whose policy logic decides (a denial costs no further round trip; a call that
  warn or an override lets through takes the Python path).
* ``settle`` locks the call's holds, then the counters of the policies it is charged to
  and of its holds (ascending ids), gives back exactly what each hold held, adds the
  cost, deletes the holds, inserts the usage row and adds it to its hourly rollups.

Whenever a routine meets something only the Python path does — a counter that does not
exist yet (it starts from the spend already recorded, matched in Python), a hold taken
in another process, a total near the store's range — it writes nothing and answers
``missing``/``moved``/``range``, and the ledger runs the Python path, which is kept
for exactly those cases and for servers where the routines cannot be created.

Names carry a version (``_1``): a later body gets a new name in a new migration, so
processes of two versions sharing one database each call their own.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import peewee as pw

from .models import exact_collation

log = logging.getLogger(__name__)

#: Version suffix of the routines this code calls.
VERSION = 1
RESERVE = f"atlas_budget_reserve_{VERSION}"
SETTLE = f"atlas_budget_settle_{VERSION}"
STANDING = f"atlas_budget_standing_{VERSION}"

MAX_STORED = 2**62
#: Text of the error a settle routine raises to undo its work and hand the call to the Python path.
FALLBACK = "atlas_budget: settle needs the Python path"

_TARGET_PARAMS = """
    p_policy bigint[], p_part text[], p_key timestamp[], p_from timestamp[], p_to timestamp[],
    p_limit bigint[], p_cap bigint[], p_prev timestamp[]"""

_PG_STANDING = f"""
CREATE OR REPLACE FUNCTION {STANDING}({_TARGET_PARAMS},
    OUT ok boolean, OUT spent numeric[], OUT reserved numeric[], OUT carry numeric[])
LANGUAGE plpgsql AS $body$
DECLARE
    i int;
    s numeric;
    r numeric;
    c numeric;
    used numeric;
BEGIN
    ok := true;
    spent := '{{}}';
    reserved := '{{}}';
    carry := '{{}}';
    FOR i IN 1 .. coalesce(array_length(p_policy, 1), 0) LOOP
        c := 0;
        IF p_from[i] IS NULL THEN
            SELECT spent_units, reserved_units INTO s, r FROM budget_spend_counter
             WHERE policy_id = p_policy[i] AND part = p_part[i] AND window_start = p_key[i];
            IF NOT FOUND THEN
                ok := false;
                RETURN;
            END IF;
            IF p_prev[i] IS NOT NULL THEN
                SELECT spent_units::numeric + reserved_units INTO used FROM budget_spend_counter
                 WHERE policy_id = p_policy[i] AND part = p_part[i] AND window_start = p_prev[i];
                IF NOT FOUND THEN
                    ok := false;
                    RETURN;
                END IF;
                c := greatest(0, least(p_cap[i], p_limit[i] - used));
            END IF;
        ELSE
            SELECT coalesce(sum(spent_units), 0), coalesce(sum(reserved_units), 0) INTO s, r
              FROM budget_spend_counter
             WHERE policy_id = p_policy[i] AND part = p_part[i]
               AND window_start >= p_from[i] AND window_start < p_to[i];
        END IF;
        spent := spent || s;
        reserved := reserved || r;
        carry := carry || c;
    END LOOP;
END
$body$
"""

#: The first check of every PostgreSQL routine: the policies the caller matched against are still current.
_PG_STALE = """
    IF p_generation IS NOT NULL
       AND p_generation IS DISTINCT FROM (SELECT value FROM budget_meta WHERE name = 'policy_generation') THEN
        status := 'stale';  -- the caller matched the call against policies that have changed since
        RETURN;
    END IF;
"""

#: Find the targets' current counters and lock them with ``also`` in ascending id order (PL/pgSQL fragment).
_PG_LOCK = """
    FOR i IN 1 .. coalesce(array_length(p_policy, 1), 0) LOOP
        SELECT id INTO cid FROM budget_spend_counter
         WHERE policy_id = p_policy[i] AND part = p_part[i] AND window_start = p_key[i];
        IF NOT FOUND THEN
            status := 'missing';
            RETURN;
        END IF;
        ids := ids || cid;
    END LOOP;
    SELECT count(*) INTO locked FROM (
        SELECT id FROM budget_spend_counter WHERE id = ANY(ids || also) ORDER BY id FOR UPDATE
    ) AS l;
    IF locked < (SELECT count(DISTINCT x) FROM unnest(ids || also) AS x) THEN
        status := 'missing';  -- a policy change dropped them after they were found
        RETURN;
    END IF;
"""

_PG_RESERVE = f"""
CREATE OR REPLACE FUNCTION {RESERVE}(
    p_call text, p_amount bigint, p_now timestamp, p_expires timestamp, {_TARGET_PARAMS}, p_generation bigint,
    OUT status text, OUT spent numeric[], OUT reserved numeric[], OUT carry numeric[])
LANGUAGE plpgsql AS $body$
DECLARE
    ids bigint[] := '{{}}';
    also bigint[] := '{{}}';
    cid bigint;
    i int;
    locked int;
    ok boolean;
BEGIN
    {_PG_STALE}
    {_PG_LOCK}
    SELECT s.ok, s.spent, s.reserved, s.carry INTO ok, spent, reserved, carry
      FROM {STANDING}(p_policy, p_part, p_key, p_from, p_to, p_limit, p_cap, p_prev) AS s;
    IF NOT ok THEN
        status := 'missing';
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM budget_hold WHERE call_id = p_call) THEN
        status := 'held';
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM budget_usage WHERE call_id = p_call) THEN
        status := 'recorded';
        RETURN;
    END IF;
    FOR i IN 1 .. coalesce(array_length(p_policy, 1), 0) LOOP
        IF spent[i] + reserved[i] + p_amount > p_limit[i] + carry[i] THEN
            status := 'check';
            RETURN;
        END IF;
    END LOOP;
    IF p_amount > 0 THEN
        IF EXISTS (SELECT 1 FROM budget_spend_counter
                    WHERE id = ANY(ids) AND reserved_units > {MAX_STORED} - p_amount) THEN
            status := 'range';
            RETURN;
        END IF;
        UPDATE budget_spend_counter SET reserved_units = reserved_units + p_amount WHERE id = ANY(ids);
        INSERT INTO budget_hold (call_id, counter_id, policy_id, amount_units, created_at, expires_at)
        SELECT p_call, ids[k], p_policy[k], p_amount, p_now, p_expires FROM generate_subscripts(ids, 1) AS k;
    END IF;
    status := 'hold';
END
$body$
"""

_PG_SETTLE = f"""
CREATE OR REPLACE FUNCTION {SETTLE}(
    p_call text, p_cost bigint, p_moment timestamp, p_recorded timestamp, {_TARGET_PARAMS},
    p_tenant text, p_actor text, p_provider text, p_model text, p_operation text, p_category text,
    p_tags text, p_input bigint, p_output bigint, p_cache_read bigint, p_cache_write bigint,
    p_units text, p_source text, p_error text, p_lineage text, p_generation bigint,
    OUT status text, OUT spent numeric[], OUT reserved numeric[], OUT carry numeric[])
LANGUAGE plpgsql AS $body$
DECLARE
    ids bigint[] := '{{}}';
    also bigint[];
    first_hold timestamp;
    cid bigint;
    i int;
    locked int;
    ok boolean;
    v_hour timestamp := date_trunc('hour', p_recorded);
BEGIN
    {_PG_STALE}
    SELECT min(h.created_at), coalesce(array_agg(h.counter_id), '{{}}') INTO first_hold, also FROM (
        SELECT created_at, counter_id FROM budget_hold WHERE call_id = p_call ORDER BY counter_id, id FOR UPDATE
    ) AS h;
    IF EXISTS (SELECT 1 FROM budget_usage WHERE call_id = p_call) THEN
        status := 'recorded';
        RETURN;
    END IF;
    IF first_hold IS DISTINCT FROM p_moment THEN
        status := 'moved';  -- held in another process, expired, or not held as this process thought
        RETURN;
    END IF;
    {_PG_LOCK}
    IF p_cost > 0 AND EXISTS (SELECT 1 FROM budget_spend_counter
                               WHERE id = ANY(ids) AND spent_units > {MAX_STORED} - p_cost) THEN
        status := 'range';
        RETURN;
    END IF;
    UPDATE budget_spend_counter AS c SET reserved_units = c.reserved_units - d.back
      FROM (SELECT counter_id, sum(amount_units) AS back FROM budget_hold
             WHERE call_id = p_call GROUP BY counter_id) AS d
     WHERE c.id = d.counter_id;
    IF p_cost > 0 THEN
        UPDATE budget_spend_counter SET spent_units = spent_units + p_cost WHERE id = ANY(ids);
    END IF;
    DELETE FROM budget_hold WHERE call_id = p_call;
    INSERT INTO budget_usage (call_id, tenant, actor, provider, model, operation, category, tags_json,
        input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_units, units_json,
        price_source, error, recorded_at, lineage_json)
    VALUES (p_call, p_tenant, p_actor, p_provider, p_model, p_operation, p_category, p_tags,
        p_input, p_output, p_cache_read, p_cache_write, p_cost, p_units, p_source, p_error, p_recorded, p_lineage);
    INSERT INTO budget_usage_hourly AS u (tenant, dimension, dim_value, hour, calls, cost_units,
        input_tokens, output_tokens, cache_read_tokens, cache_write_tokens)
    SELECT p_tenant, d.dimension, d.dim_value, v_hour, 1, p_cost, p_input, p_output, p_cache_read, p_cache_write
      FROM (VALUES ('*', ''), ('actor', coalesce(p_actor, '')), ('provider', p_provider), ('model', p_model),
                   ('operation', p_operation), ('category', coalesce(p_category, ''))) AS d (dimension, dim_value)
    ON CONFLICT (tenant, dimension, dim_value, hour) DO UPDATE SET
        calls = u.calls + excluded.calls, cost_units = u.cost_units + excluded.cost_units,
        input_tokens = u.input_tokens + excluded.input_tokens,
        output_tokens = u.output_tokens + excluded.output_tokens,
        cache_read_tokens = u.cache_read_tokens + excluded.cache_read_tokens,
        cache_write_tokens = u.cache_write_tokens + excluded.cache_write_tokens;
    SELECT s.ok, s.spent, s.reserved, s.carry INTO ok, spent, reserved, carry
      FROM {STANDING}(p_policy, p_part, p_key, p_from, p_to, p_limit, p_cap, p_prev) AS s;
    IF NOT ok THEN  -- a previous window's counter vanished meanwhile: undo all of it, the Python path will do it
        RAISE EXCEPTION '{FALLBACK}' USING ERRCODE = 'P0002';
    END IF;
    status := 'settled';
END
$body$
"""

POSTGRES = (_PG_STANDING, _PG_RESERVE, _PG_SETTLE)


def _kind(db: pw.Database) -> str | None:
    if isinstance(db, pw.PostgresqlDatabase):
        return "postgres"
    if isinstance(db, pw.MySQLDatabase):
        return "mysql"
    return None


def present(db: pw.Database) -> bool:
    """Whether this version's routines exist in ``db`` and this user may run them (False on SQLite).

    On MariaDB a user sees only the routines it has a privilege on; on PostgreSQL ``EXECUTE`` is checked.
    """
    kind = _kind(db)
    if kind == "postgres":
        sql = (
            "SELECT count(*) FROM pg_proc WHERE proname IN (%s, %s, %s) "
            "AND pg_function_is_visible(oid) AND has_function_privilege(oid, 'EXECUTE')"
        )
        names: tuple[str, ...] = (STANDING, RESERVE, SETTLE)
    elif kind == "mysql":
        sql = (
            "SELECT count(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = DATABASE() "
            "AND ROUTINE_NAME IN (%s, %s)"
        )
        names = (RESERVE, SETTLE)
    else:
        return False
    row = db.execute_sql(sql, names).fetchone()
    return bool(row and int(row[0]) >= len(names))


#: What to do when the routines are missing or may not be run, for messages and ``atlas-budget doctor``.
HOW_TO_ENABLE = (
    "grant the budget's database user the right to create routines (PostgreSQL: CREATE on the schema; MariaDB: "
    "CREATE ROUTINE) and to run them (EXECUTE), then start a process: it creates them"
)


#: Errors after which the routines cannot be used (gone, this user may not run them, or the server cannot run
#: them as written): PostgreSQL's insufficient_privilege and undefined_function; MariaDB's "execute command
#: denied", "does not exist", a collation its character set lacks and illegal mixes of collations.
UNUSABLE_PG = {"42501", "42883"}
UNUSABLE_MYSQL = {1370, 1305, 1253, 1267, 1270, 1271}


def status(db: pw.Database) -> str:
    """One line on the routines, for ``atlas-budget doctor``."""
    if _kind(db) is None:
        return "not needed (SQLite)"
    if present(db):
        return f"present ({RESERVE}, {SETTLE}): a call is one statement to reserve and one to record"
    return f"missing or not executable: every call takes the longer way; {HOW_TO_ENABLE}"


def install(db: pw.Database) -> bool:
    """Create (or replace) this version's routines; False, with a warning, where the server refuses.

    A server that refuses (no ``CREATE ROUTINE`` privilege, say) still works: the ledger
    then takes its Python path for every call, with more round trips.
    """
    kind = _kind(db)
    if kind is None:
        return False
    bodies: tuple[str, ...] = POSTGRES
    if kind == "mysql":
        collation = exact_collation(db) or "utf8mb4_nopad_bin"
        bodies = tuple(body.replace("{collation}", collation) for body in MARIADB)
    try:
        if kind == "postgres":
            with db.atomic():  # a savepoint: a refusal leaves the migrating transaction usable
                for body in bodies:
                    db.execute_sql(body)
        else:  # MariaDB commits around every CREATE PROCEDURE of its own accord: no savepoint survives one
            for body in bodies:
                db.execute_sql(body)
    except pw.DatabaseError as exc:
        log.warning(
            "cannot create the budget's server-side routines (%s); every call takes the longer way (%s)",
            exc,
            HOW_TO_ENABLE,
        )
        return False
    return True


#: Text in every MariaDB routine: the tables' own character set and exact collation, whatever the database's default
#: character set is (latin1 before MariaDB 11.6); ``{collation}`` is filled in when the routines are created.
_MY_UTF8 = "CHARACTER SET utf8mb4 COLLATE {collation}"

#: MariaDB. Reads are ``SELECT ... INTO`` a variable (an ``IF EXISTS (SELECT ...)`` in a procedure takes shared
#: row locks), and counters are updated by primary key (an UPDATE joined to another table may scan and lock
#: every counter): both turned into deadlocks under concurrent calls.
#: The targets arrive as one JSON array of ``[policy_id, part, key, from, to, limit, cap, prev]``.
_MY_TARGETS = f"""JSON_TABLE(p_targets, '$[*]' COLUMNS (
        i FOR ORDINALITY, policy_id BIGINT PATH '$[0]', part VARCHAR(250) {_MY_UTF8} PATH '$[1]',
        wkey DATETIME PATH '$[2]',
        wfrom DATETIME PATH '$[3]', wto DATETIME PATH '$[4]', lim DECIMAL(30, 0) PATH '$[5]',
        cap DECIMAL(30, 0) PATH '$[6]', prev DATETIME PATH '$[7]')) AS t"""
_MY_KEY = "c.policy_id = t.policy_id AND c.part = t.part COLLATE {collation} AND c.window_start = t.wkey"

#: Find the targets' counters (into ``ids``) and lock them with ``also_ids`` in ascending id order; an IN list of
#: ids is scanned on the primary key in order, which is the order every writer locks counters in.
_MY_LOCK = f"""
    SELECT COUNT(*), COUNT(c.id), GROUP_CONCAT(c.id ORDER BY c.id) INTO n, found_n, ids
      FROM {_MY_TARGETS} LEFT JOIN budget_spend_counter AS c ON {_MY_KEY};
    IF found_n < n THEN
        SET status = 'missing';
        LEAVE body;
    END IF;
    SET lock_ids = NULLIF(CONCAT_WS(',', NULLIF(ids, ''), NULLIF(also_ids, '')), '');
    IF lock_ids IS NOT NULL THEN
        EXECUTE IMMEDIATE CONCAT(
            'SELECT COUNT(*) INTO @atlas_budget_locked FROM budget_spend_counter WHERE id IN (', lock_ids,
            ') FOR UPDATE');
        SELECT COUNT(DISTINCT x.v) INTO wanted
          FROM JSON_TABLE(CONCAT('[', lock_ids, ']'), '$[*]' COLUMNS (v BIGINT PATH '$')) AS x;
        IF @atlas_budget_locked < wanted THEN
            SET status = 'missing';  -- a policy change dropped them after they were found
            LEAVE body;
        END IF;
    END IF;
"""

#: The standings of the targets as three JSON arrays, whether a previous window's counter is missing
#: (``bad``) and whether the amount fits every limit (``over`` = how many it does not).
_MY_STANDINGS = f"""
    SELECT JSON_ARRAYAGG(x.spent ORDER BY x.i), JSON_ARRAYAGG(x.reserved ORDER BY x.i),
           JSON_ARRAYAGG(x.carry ORDER BY x.i), COALESCE(SUM(x.bad), 0),
           COALESCE(SUM(x.spent + x.reserved + amount > x.lim + x.carry), 0)
      INTO spent, reserved, carry, bad, overs
      FROM (
        SELECT t.i, t.lim,
               CASE WHEN t.wfrom IS NULL THEN CAST(c.spent_units AS DECIMAL(30, 0)) ELSE (
                   SELECT COALESCE(SUM(r.spent_units), 0) FROM budget_spend_counter AS r
                    WHERE r.policy_id = t.policy_id AND r.part = t.part COLLATE {{collation}}
                      AND r.window_start >= t.wfrom AND r.window_start < t.wto) END AS spent,
               CASE WHEN t.wfrom IS NULL THEN CAST(c.reserved_units AS DECIMAL(30, 0)) ELSE (
                   SELECT COALESCE(SUM(r.reserved_units), 0) FROM budget_spend_counter AS r
                    WHERE r.policy_id = t.policy_id AND r.part = t.part COLLATE {{collation}}
                      AND r.window_start >= t.wfrom AND r.window_start < t.wto) END AS reserved,
               CASE WHEN t.prev IS NULL OR p.id IS NULL THEN 0 ELSE GREATEST(0, LEAST(t.cap,
                   t.lim - CAST(p.spent_units AS DECIMAL(30, 0)) - p.reserved_units)) END AS carry,
               t.prev IS NOT NULL AND p.id IS NULL AS bad
          FROM {_MY_TARGETS}
          STRAIGHT_JOIN budget_spend_counter AS c ON {_MY_KEY}
          LEFT JOIN budget_spend_counter AS p
            ON p.policy_id = t.policy_id AND p.part = t.part COLLATE {{collation}} AND p.window_start = t.prev
      ) AS x;
"""

_MY_DECLARE = """
    DECLARE n INT;
    DECLARE found_n INT;
    DECLARE wanted INT;
    DECLARE bad INT;
    DECLARE overs INT;
    DECLARE ids TEXT;
    DECLARE also_ids TEXT DEFAULT NULL;
    DECLARE lock_ids TEXT;
    DECLARE spent LONGTEXT DEFAULT NULL;
    DECLARE reserved LONGTEXT DEFAULT NULL;
    DECLARE carry LONGTEXT DEFAULT NULL;
    DECLARE status VARCHAR(16) DEFAULT NULL;
    DECLARE flag INT;
    DECLARE generation BIGINT;
"""

#: Every MariaDB routine's transaction, and its first check: the policies the caller matched against are current.
_MY_START = """
    SET SESSION group_concat_max_len = 1048576;
    START TRANSACTION;
    body: BEGIN
        SELECT value INTO generation FROM budget_meta WHERE name = 'policy_generation';
        IF p_generation IS NOT NULL AND NOT (p_generation <=> generation) THEN
            SET status = 'stale';  -- the caller matched the call against policies that have changed since
            LEAVE body;
        END IF;
"""

_MY_HANDLER = """
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        ROLLBACK;
        RESIGNAL;
    END;
"""

_MY_RESERVE = f"""
CREATE OR REPLACE PROCEDURE {RESERVE}(
    p_call VARCHAR(200) {_MY_UTF8},
    amount BIGINT,
    p_now DATETIME,
    p_expires DATETIME,
    p_targets LONGTEXT {_MY_UTF8},
    p_generation BIGINT)
BEGIN
    {_MY_DECLARE}
    {_MY_HANDLER}
    {_MY_START}
        {_MY_LOCK}
        {_MY_STANDINGS}
        IF bad > 0 THEN
            SET status = 'missing';
            LEAVE body;
        END IF;
        SELECT COUNT(*) INTO flag FROM budget_hold WHERE call_id = p_call;
        IF flag > 0 THEN
            SET status = 'held';
            LEAVE body;
        END IF;
        SELECT COUNT(*) INTO flag FROM budget_usage WHERE call_id = p_call;
        IF flag > 0 THEN
            SET status = 'recorded';
            LEAVE body;
        END IF;
        IF overs > 0 THEN
            SET status = 'check';
            LEAVE body;
        END IF;
        IF amount > 0 THEN
            SELECT COUNT(*) INTO flag FROM {_MY_TARGETS} STRAIGHT_JOIN budget_spend_counter AS c ON {_MY_KEY}
             WHERE c.reserved_units > {MAX_STORED} - amount;
            IF flag > 0 THEN
                SET status = 'range';
                LEAVE body;
            END IF;
            SET @atlas_budget_amount = amount;
            EXECUTE IMMEDIATE CONCAT(
                'UPDATE budget_spend_counter SET reserved_units = reserved_units + ? WHERE id IN (', ids, ')')
                USING @atlas_budget_amount;
            INSERT INTO budget_hold (call_id, counter_id, policy_id, amount_units, created_at, expires_at)
            SELECT p_call, c.id, t.policy_id, amount, p_now, p_expires
              FROM {_MY_TARGETS} STRAIGHT_JOIN budget_spend_counter AS c ON {_MY_KEY} ORDER BY t.i;
        END IF;
        SET status = 'hold';
    END;
    COMMIT;
    SELECT status, spent, reserved, carry;
END
"""

_MY_SETTLE = f"""
CREATE OR REPLACE PROCEDURE {SETTLE}(
    p_call VARCHAR(200) {_MY_UTF8},
    amount BIGINT,
    p_moment DATETIME,
    p_recorded DATETIME,
    p_targets LONGTEXT {_MY_UTF8},
    p_tenant VARCHAR(200) {_MY_UTF8},
    p_actor VARCHAR(200) {_MY_UTF8},
    p_provider VARCHAR(100) {_MY_UTF8},
    p_model VARCHAR(200) {_MY_UTF8},
    p_operation VARCHAR(50) {_MY_UTF8},
    p_category VARCHAR(100) {_MY_UTF8},
    p_tags LONGTEXT {_MY_UTF8},
    p_input BIGINT,
    p_output BIGINT,
    p_cache_read BIGINT,
    p_cache_write BIGINT,
    p_units LONGTEXT {_MY_UTF8},
    p_source VARCHAR(255) {_MY_UTF8},
    p_error LONGTEXT {_MY_UTF8},
    p_lineage LONGTEXT {_MY_UTF8},
    p_generation BIGINT)
BEGIN
    {_MY_DECLARE}
    DECLARE first_hold DATETIME;
    DECLARE v_hour DATETIME;
    DECLARE back_cases TEXT;
    DECLARE back_ids TEXT;
    {_MY_HANDLER}
    {_MY_START}
        SELECT MIN(created_at), GROUP_CONCAT(counter_id) INTO first_hold, also_ids
          FROM budget_hold WHERE call_id = p_call FOR UPDATE;
        SELECT COUNT(*) INTO flag FROM budget_usage WHERE call_id = p_call;
        IF flag > 0 THEN
            SET status = 'recorded';
            LEAVE body;
        END IF;
        IF NOT (first_hold <=> p_moment) THEN
            SET status = 'moved';  -- held in another process, expired, or not held as this process thought
            LEAVE body;
        END IF;
        {_MY_LOCK}
        SELECT COUNT(*) INTO flag FROM {_MY_TARGETS} STRAIGHT_JOIN budget_spend_counter AS c ON {_MY_KEY}
         WHERE c.spent_units > {MAX_STORED} - amount;
        IF amount > 0 AND flag > 0 THEN
            SET status = 'range';
            LEAVE body;
        END IF;
        IF also_ids IS NOT NULL THEN
            -- By primary key: a multi-table UPDATE joined to the holds scans (and locks) every counter.
            SELECT GROUP_CONCAT(CONCAT(' WHEN ', d.counter_id, ' THEN ', d.back) SEPARATOR ''),
                   GROUP_CONCAT(d.counter_id)
              INTO back_cases, back_ids
              FROM (SELECT counter_id, SUM(amount_units) AS back FROM budget_hold
                     WHERE call_id = p_call GROUP BY counter_id) AS d;
            EXECUTE IMMEDIATE CONCAT(
                'UPDATE budget_spend_counter SET reserved_units = reserved_units - CASE id', back_cases,
                ' END WHERE id IN (', back_ids, ')');
        END IF;
        IF amount > 0 AND ids IS NOT NULL THEN
            SET @atlas_budget_amount = amount;
            EXECUTE IMMEDIATE CONCAT(
                'UPDATE budget_spend_counter SET spent_units = spent_units + ? WHERE id IN (', ids, ')')
                USING @atlas_budget_amount;
        END IF;
        DELETE FROM budget_hold WHERE call_id = p_call;
        INSERT INTO budget_usage (call_id, tenant, actor, provider, model, operation, category, tags_json,
            input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_units, units_json,
            price_source, error, recorded_at, lineage_json)
        VALUES (p_call, p_tenant, p_actor, p_provider, p_model, p_operation, p_category, p_tags,
            p_input, p_output, p_cache_read, p_cache_write, amount, p_units, p_source, p_error, p_recorded,
            p_lineage);
        SET v_hour = TIMESTAMP(DATE(p_recorded), MAKETIME(HOUR(p_recorded), 0, 0));
        INSERT INTO budget_usage_hourly (tenant, dimension, dim_value, hour, calls, cost_units,
            input_tokens, output_tokens, cache_read_tokens, cache_write_tokens)
        VALUES (p_tenant, '*', '', v_hour, 1, amount, p_input, p_output, p_cache_read, p_cache_write),
               (p_tenant, 'actor', COALESCE(p_actor, ''), v_hour, 1, amount, p_input, p_output, p_cache_read,
                p_cache_write),
               (p_tenant, 'provider', p_provider, v_hour, 1, amount, p_input, p_output, p_cache_read, p_cache_write),
               (p_tenant, 'model', p_model, v_hour, 1, amount, p_input, p_output, p_cache_read, p_cache_write),
               (p_tenant, 'operation', p_operation, v_hour, 1, amount, p_input, p_output, p_cache_read,
                p_cache_write),
               (p_tenant, 'category', COALESCE(p_category, ''), v_hour, 1, amount, p_input, p_output,
                p_cache_read, p_cache_write)
        ON DUPLICATE KEY UPDATE calls = calls + VALUES(calls), cost_units = cost_units + VALUES(cost_units),
            input_tokens = input_tokens + VALUES(input_tokens), output_tokens = output_tokens + VALUES(output_tokens),
            cache_read_tokens = cache_read_tokens + VALUES(cache_read_tokens),
            cache_write_tokens = cache_write_tokens + VALUES(cache_write_tokens);
        SET amount = 0;  -- the standings after the spend: nothing more is requested
        {_MY_STANDINGS}
        IF bad > 0 THEN  -- a previous window's counter vanished meanwhile: undo all of it
            SET status = 'undo';
            LEAVE body;
        END IF;
        SET status = 'settled';
    END;
    IF status = 'undo' THEN
        ROLLBACK;
        SET status = 'missing';
    ELSE
        COMMIT;  -- what was written, or (answers other than 'settled') nothing
    END IF;
    SELECT status, spent, reserved, carry;
END
"""

MARIADB = (_MY_RESERVE, _MY_SETTLE)

#: Casts of the eight target arrays in a PostgreSQL call (an array of NULLs has no type of its own).
PG_TARGET_CASTS = (
    "%s::bigint[]",
    "%s::text[]",
    "%s::timestamp[]",
    "%s::timestamp[]",
    "%s::timestamp[]",
    "%s::bigint[]",
    "%s::bigint[]",
    "%s::timestamp[]",
)


def decode(kind: str, row: tuple[Any, ...]) -> tuple[str, list[int], list[int], list[int]]:
    """(status, spent, reserved, carry) from a routine's answer (MariaDB gives the lists as JSON)."""
    status, spent, reserved, carry = row
    if kind == "postgres":
        return status, list(spent or ()), list(reserved or ()), list(carry or ())
    return status, json.loads(spent or "[]"), json.loads(reserved or "[]"), json.loads(carry or "[]")


__all__ = [
    "HOW_TO_ENABLE",
    "MAX_STORED",
    "RESERVE",
    "SETTLE",
    "STANDING",
    "UNUSABLE_MYSQL",
    "UNUSABLE_PG",
    "VERSION",
    "install",
    "present",
    "status",
]
