-- Flattening and the change feed.
--
-- Row-level work happens once per transaction, at commit: statement triggers on the base tables
-- only note which objects became dirty; a deferred constraint trigger then re-resolves the dirty
-- objects and every endpoint that inherits from them (and nothing else), rewrites exactly the
-- Asterisk rows that differ, and records each one in pbx.outbox in the same transaction, followed
-- by a NOTIFY. `pbxctl apply` runs SET CONSTRAINTS ALL IMMEDIATE to read its change set before
-- it commits (or, for `plan`, rolls back).

CREATE TABLE pbx.dirty_objects (
    xid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    object_id  bigint NOT NULL,
    PRIMARY KEY (xid, object_id)
);

-- One row per transaction with dirty objects: its insert queues exactly one deferred flush.
CREATE TABLE pbx.pending_flush (
    xid xid8 PRIMARY KEY DEFAULT pg_current_xact_id()
);

CREATE TABLE pbx.outbox (
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid         xid8 NOT NULL DEFAULT pg_current_xact_id(),
    created_at  timestamptz NOT NULL DEFAULT now(),
    view        text NOT NULL,
    object_id   text NOT NULL,   -- the Asterisk id
    op          text NOT NULL CHECK (op IN ('created', 'changed', 'deleted'))
);
CREATE INDEX outbox_xid ON pbx.outbox (xid);

CREATE FUNCTION pbx.mark_dirty() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pbx, pg_temp AS $$
BEGIN
    IF TG_TABLE_NAME = 'objects' THEN
        INSERT INTO pbx.dirty_objects (object_id) SELECT DISTINCT id FROM changed_rows ON CONFLICT DO NOTHING;
    ELSE
        INSERT INTO pbx.dirty_objects (object_id) SELECT DISTINCT object_id FROM changed_rows ON CONFLICT DO NOTHING;
    END IF;
    IF FOUND THEN
        INSERT INTO pbx.pending_flush DEFAULT VALUES ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END $$;

-- A domain change renames every Asterisk id of the tenant. (Other tenant updates, such as the
-- links_version bump of every parent-link change, must not re-resolve the whole tenant.)
CREATE FUNCTION pbx.mark_dirty_domain() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pbx, pg_temp AS $$
BEGIN
    INSERT INTO pbx.dirty_objects (object_id)
    SELECT o.id FROM pbx.objects o
    JOIN new_rows n ON n.id = o.tenant_id JOIN old_rows p ON p.id = n.id
    WHERE n.domain IS DISTINCT FROM p.domain
    ON CONFLICT DO NOTHING;
    IF FOUND THEN
        INSERT INTO pbx.pending_flush DEFAULT VALUES ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER mark_dirty_domain AFTER UPDATE ON pbx.tenants
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pbx.mark_dirty_domain();

CREATE TRIGGER mark_dirty_ins AFTER INSERT ON pbx.objects
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION pbx.mark_dirty();
CREATE TRIGGER mark_dirty_upd AFTER UPDATE ON pbx.objects
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION pbx.mark_dirty();
CREATE TRIGGER mark_dirty_del AFTER DELETE ON pbx.objects
    REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION pbx.mark_dirty();

CREATE TRIGGER mark_dirty_ins AFTER INSERT ON pbx.object_parents
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION pbx.mark_dirty();
CREATE TRIGGER mark_dirty_upd_new AFTER UPDATE ON pbx.object_parents
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION pbx.mark_dirty();
CREATE TRIGGER mark_dirty_upd_old AFTER UPDATE ON pbx.object_parents
    REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION pbx.mark_dirty();
CREATE TRIGGER mark_dirty_del AFTER DELETE ON pbx.object_parents
    REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION pbx.mark_dirty();

CREATE TRIGGER mark_dirty_ins AFTER INSERT ON pbx.object_options
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION pbx.mark_dirty();
CREATE TRIGGER mark_dirty_upd_new AFTER UPDATE ON pbx.object_options
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION pbx.mark_dirty();
CREATE TRIGGER mark_dirty_upd_old AFTER UPDATE ON pbx.object_options
    REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION pbx.mark_dirty();
CREATE TRIGGER mark_dirty_del AFTER DELETE ON pbx.object_options
    REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION pbx.mark_dirty();

-- The flattened tables behind the realtime views (pbx.rt_<view>, created in 006) all start with
-- (object_id, table_key) followed by Asterisk's own columns.
CREATE FUNCTION pbx.realtime_views() RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY['ps_endpoints', 'ps_aors', 'ps_auths', 'ps_endpoint_id_ips', 'ps_registrations']
$$;

CREATE FUNCTION pbx.flush_dirty() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pbx, pg_temp AS $$
DECLARE
    me xid8 := pg_current_xact_id();
    v text;
    n bigint := 0;
    k bigint;
BEGIN
    DELETE FROM pbx.pending_flush WHERE xid = me;
    IF NOT FOUND THEN
        RETURN NULL;  -- already flushed by an earlier firing in this transaction
    END IF;

    CREATE TEMP TABLE IF NOT EXISTS flush_dirty_ids (object_id bigint PRIMARY KEY) ON COMMIT DROP;
    CREATE TEMP TABLE IF NOT EXISTS flush_affected (object_id bigint PRIMARY KEY, live boolean) ON COMMIT DROP;
    CREATE TEMP TABLE IF NOT EXISTS flush_wanted (object_id bigint, table_key text, id text, data jsonb) ON COMMIT DROP;
    CREATE TEMP TABLE IF NOT EXISTS flush_diff (id text, op text, row_json jsonb) ON COMMIT DROP;
    TRUNCATE flush_dirty_ids, flush_affected, flush_wanted;

    WITH d AS (DELETE FROM pbx.dirty_objects WHERE xid = me RETURNING object_id)
    INSERT INTO flush_dirty_ids SELECT DISTINCT object_id FROM d;

    -- A template edit reaches every object that has it in its linearization: its descendants.
    INSERT INTO flush_affected (object_id, live)
    WITH RECURSIVE down(id) AS (
        SELECT object_id FROM flush_dirty_ids
        UNION
        SELECT p.object_id FROM pbx.object_parents p JOIN down ON p.parent_id = down.id
    )
    SELECT down.id, o.id IS NOT NULL FROM down LEFT JOIN pbx.objects o ON o.id = down.id
    WHERE o.id IS NULL OR o.kind = 'endpoint';

    INSERT INTO flush_wanted
    SELECT a.object_id, r.table_key, r.id, r.data
    FROM flush_affected a, LATERAL pbx.endpoint_rows(a.object_id) r WHERE a.live;

    FOREACH v IN ARRAY pbx.realtime_views() LOOP
        TRUNCATE flush_diff;
        EXECUTE format($q$
            INSERT INTO flush_diff (id, op, row_json)
            WITH old AS (
                SELECT f.id, to_jsonb(f) AS j FROM pbx.%1$I f
                WHERE f.object_id IN (SELECT object_id FROM flush_affected)
            ), new AS (
                SELECT w.id, to_jsonb(jsonb_populate_record(NULL::pbx.%1$I,
                           w.data || jsonb_build_object('object_id', w.object_id, 'table_key', w.table_key))) AS j
                FROM flush_wanted w WHERE split_part(w.table_key, ':', 1) = %2$L
            )
            SELECT coalesce(new.id, old.id),
                   CASE WHEN old.id IS NULL THEN 'created' WHEN new.id IS NULL THEN 'deleted' ELSE 'changed' END,
                   new.j
            FROM old FULL JOIN new ON old.id = new.id
            WHERE old.j IS DISTINCT FROM new.j
        $q$, 'rt_' || v, v);
        EXECUTE format('DELETE FROM pbx.%I f USING flush_diff d WHERE f.id = d.id', 'rt_' || v);
        EXECUTE format('INSERT INTO pbx.%1$I SELECT (jsonb_populate_record(NULL::pbx.%1$I, d.row_json)).*
                        FROM flush_diff d WHERE d.row_json IS NOT NULL', 'rt_' || v);
        INSERT INTO pbx.outbox (view, object_id, op) SELECT v, id, op FROM flush_diff;
        GET DIAGNOSTICS k = ROW_COUNT;
        n := n + k;
    END LOOP;

    IF n > 0 THEN
        PERFORM pg_notify('pbx_changes', me::text);
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER flush_dirty AFTER INSERT ON pbx.pending_flush
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION pbx.flush_dirty();
