-- The audit trail: one pbx.audit row per committed transaction and tenant it changed, written in
-- that transaction, by the database itself (so plain-SQL edits are recorded like `pbxctl apply`).
--
--   who   session_role (the login), roles (current_user of each changing statement: SET ROLE
--         counts) and actor, which the application supplies with SET LOCAL pbx.actor
--         ('pbxctl:<os user>', 'token:<name>'); it is a claim, the roles are not.
--   when  at: the moment the row was written, at commit.
--   what  change_set: contract section 4, restricted to the tenant's Asterisk ids; touched: the
--         configuration keys edited, by kind ({"tenant": ["created"], "endpoints": ["1001"],
--         "extensions": ["100"], ...}), which also covers edits no Asterisk row reflects
--         (routing, an unused template). Ids and names only: never an option value, so no secret.
--
-- Mechanism: statement triggers note (tenant, kind, key) in a temp table of the transaction and
-- queue a deferred event; at commit the last one queued writes the rows, after the flush (005) has
-- filled pbx.outbox. A rolled-back transaction leaves neither notes nor rows.

CREATE TABLE pbx.audit (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid           xid8 NOT NULL,
    at            timestamptz NOT NULL,
    tenant_id     bigint NOT NULL,   -- no foreign key: the trail outlives a deleted tenant
    tenant        text NOT NULL,
    session_role  name NOT NULL,
    roles         name[] NOT NULL,
    actor         text,
    touched       jsonb NOT NULL,
    change_set    jsonb NOT NULL,
    UNIQUE (xid, tenant_id)
);
CREATE INDEX audit_at ON pbx.audit (at);
CREATE INDEX audit_tenant_at ON pbx.audit (tenant_id, at);

-- One row per transaction with notes. Every statement with notes inserts or bumps it, which
-- queues a deferred event; only the event of the latest token writes. Deferred events fire in the
-- order they were queued, and the note triggers fire after the mark_dirty triggers of the same
-- statement (triggers of an event fire in name order: note_audit_* > mark_dirty_*), so the
-- writing event always comes after every flush the transaction queued.
CREATE TABLE pbx.audit_pending (
    xid    xid8 PRIMARY KEY DEFAULT pg_current_xact_id(),
    token  bigint NOT NULL DEFAULT 0
);

CREATE FUNCTION pbx.audit_queue() RETURNS void
LANGUAGE sql SET search_path = pbx, pg_temp AS $$
    INSERT INTO pbx.audit_pending AS p DEFAULT VALUES ON CONFLICT (xid) DO UPDATE SET token = p.token + 1
$$;
REVOKE ALL ON FUNCTION pbx.audit_queue() FROM PUBLIC;

-- The notes live in a temp table dropped at commit: nothing to clean up, and a rolled-back
-- savepoint takes its notes with it.
CREATE FUNCTION pbx.audit_notes_ready() RETURNS void
LANGUAGE plpgsql SET search_path = pbx, pg_temp AS $$
BEGIN
    IF to_regclass('pg_temp.pbx_audit_notes') IS NULL THEN
        CREATE TEMP TABLE pbx_audit_notes (
            tenant_id bigint, tenant text, domain text, kind text NOT NULL, key text NOT NULL
        ) ON COMMIT DROP;
    END IF;
END $$;
REVOKE ALL ON FUNCTION pbx.audit_notes_ready() FROM PUBLIC;

-- A SECURITY DEFINER function sees its owner as current_user, so the role is taken by the
-- invoker's trigger below and handed over. Anyone may call this, so a role the login cannot use is
-- not recorded (it is not refused either: a SECURITY DEFINER function of another owner writing an
-- audited table must not fail the caller's transaction).
CREATE FUNCTION pbx.audit_note_role(r name) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pbx, pg_temp AS $$
BEGIN
    IF pg_has_role(session_user, r, 'MEMBER') THEN
        PERFORM pbx.audit_notes_ready();
        INSERT INTO pg_temp.pbx_audit_notes (kind, key) VALUES ('role', r);
    END IF;
END $$;

-- Cascades run as the table's owner (pg_trigger_depth() > 1): only the statement itself says who.
CREATE FUNCTION pbx.audit_role() RETURNS trigger
LANGUAGE plpgsql SET search_path = pbx, pg_temp AS $$
BEGIN
    IF pg_trigger_depth() = 1 THEN
        PERFORM pbx.audit_note_role(current_user);
    END IF;
    RETURN NULL;
END $$;

-- Notes the rows of a statement. TG_ARGV, SQL over the changed rows `r`: [0] their tenant id,
-- [1] their kind, [2] their key, [3] an optional join that [0]-[2] may use. Rows whose tenant id
-- is NULL (an option of an object deleted in the same cascade) are left to that object's note.
CREATE FUNCTION pbx.audit_note() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pbx, pg_temp AS $$
DECLARE
    n bigint;
BEGIN
    PERFORM pbx.audit_notes_ready();
    EXECUTE format(
        'INSERT INTO pg_temp.pbx_audit_notes (tenant_id, tenant, domain, kind, key)
         SELECT x.tenant_id, t.name, t.domain, x.kind, x.key
         FROM (SELECT DISTINCT %1$s AS tenant_id, %2$s AS kind, %3$s AS key FROM (%4$s) r %5$s) x
         LEFT JOIN pbx.tenants t ON t.id = x.tenant_id
         WHERE x.tenant_id IS NOT NULL',
        TG_ARGV[0], TG_ARGV[1], TG_ARGV[2],
        CASE TG_OP WHEN 'INSERT' THEN 'SELECT * FROM new_rows'
                   WHEN 'DELETE' THEN 'SELECT * FROM old_rows'
                   ELSE 'SELECT * FROM new_rows UNION ALL SELECT * FROM old_rows' END,
        coalesce(TG_ARGV[3], ''));
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM pbx.audit_queue();
    END IF;
    RETURN NULL;
END $$;

-- Puts a table under audit: its rows are noted as (tenant_expr, kind_expr, key_expr), SQL over `r`.
-- A later migration adding a tenant's table calls it too.
CREATE FUNCTION pbx.audit_table(tbl regclass, kind_expr text, key_expr text,
                                tenant_expr text DEFAULT 'r.tenant_id', join_clause text DEFAULT '')
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    args text := format('%L, %L, %L, %L', tenant_expr, kind_expr, key_expr, join_clause);
BEGIN
    EXECUTE format('CREATE TRIGGER note_audit_ins AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows
                    FOR EACH STATEMENT EXECUTE FUNCTION pbx.audit_note(%s)', tbl, args);
    EXECUTE format('CREATE TRIGGER note_audit_upd AFTER UPDATE ON %s
                    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
                    FOR EACH STATEMENT EXECUTE FUNCTION pbx.audit_note(%s)', tbl, args);
    EXECUTE format('CREATE TRIGGER note_audit_del AFTER DELETE ON %s REFERENCING OLD TABLE AS old_rows
                    FOR EACH STATEMENT EXECUTE FUNCTION pbx.audit_note(%s)', tbl, args);
    EXECUTE format('CREATE TRIGGER audit_role AFTER INSERT OR UPDATE OR DELETE ON %s
                    FOR EACH STATEMENT EXECUTE FUNCTION pbx.audit_role()', tbl);
END $$;

-- Templates and endpoints by the file's own plural; options and parent links count as an edit of
-- their object.
SELECT pbx.audit_table('pbx.objects', $$r.kind || 's'$$, 'r.name');
SELECT pbx.audit_table(t, $$o.kind || 's'$$, 'o.name', 'o.tenant_id', 'JOIN pbx.objects o ON o.id = r.object_id')
FROM unnest(ARRAY['pbx.object_options', 'pbx.object_parents']::regclass[]) t;
SELECT pbx.audit_table('pbx.domain_aliases', $$'domain_aliases'$$, 'r.alias');
-- Routing: everything hanging off an extension is an edit of that extension.
SELECT pbx.audit_table(t, $$'extensions'$$, 'r.number')
FROM unnest(ARRAY['pbx.extensions', 'pbx.extension_endpoints', 'pbx.ranks', 'pbx.rank_members']::regclass[]) t;
-- The same for what earlier migrations hang off an extension (trunk rules: tables keyed by
-- tenant_id and number), and a tenant's own settings row where there is one.
SELECT pbx.audit_table(c.oid::regclass, $$'extensions'$$, 'r.number')
FROM pg_class c
WHERE c.relnamespace = 'pbx'::regnamespace AND c.relkind = 'r'
  AND NOT EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = c.oid AND g.tgname = 'note_audit_ins')
  AND (SELECT count(*) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname IN ('tenant_id', 'number')
       AND NOT a.attisdropped) = 2;
SELECT pbx.audit_table(t, $$'tenant'$$, $$'settings'$$) FROM to_regclass('pbx.tenant_settings') t WHERE t IS NOT NULL;

-- A tenant row is its own note, under the names it had before and after: the outbox names
-- Asterisk ids by domain, and a deleted or renamed domain must still lead to the tenant.
-- (The links_version bump of every parent-link change is not an edit of the tenant.)
CREATE FUNCTION pbx.audit_note_tenant() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pbx, pg_temp AS $$
DECLARE
    k bigint;
BEGIN
    PERFORM pbx.audit_notes_ready();
    IF TG_OP = 'INSERT' THEN
        INSERT INTO pg_temp.pbx_audit_notes SELECT id, name, domain, 'tenant', 'created' FROM new_rows;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO pg_temp.pbx_audit_notes SELECT id, name, domain, 'tenant', 'deleted' FROM old_rows;
    ELSE
        INSERT INTO pg_temp.pbx_audit_notes
        SELECT x.id, x.name, x.domain, 'tenant', 'changed'
        FROM new_rows n JOIN old_rows o ON o.id = n.id,
             LATERAL (VALUES (n.id, n.name, n.domain), (o.id, o.name, o.domain)) x(id, name, domain)
        WHERE to_jsonb(n) - 'links_version' IS DISTINCT FROM to_jsonb(o) - 'links_version';
    END IF;
    GET DIAGNOSTICS k = ROW_COUNT;
    IF k > 0 THEN
        PERFORM pbx.audit_queue();
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER note_audit_ins AFTER INSERT ON pbx.tenants REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pbx.audit_note_tenant();
CREATE TRIGGER note_audit_upd AFTER UPDATE ON pbx.tenants REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pbx.audit_note_tenant();
CREATE TRIGGER note_audit_del AFTER DELETE ON pbx.tenants REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pbx.audit_note_tenant();
CREATE TRIGGER audit_role AFTER INSERT OR UPDATE OR DELETE ON pbx.tenants
    FOR EACH STATEMENT EXECUTE FUNCTION pbx.audit_role();

-- Writes (or, when the transaction changes more after a SET CONSTRAINTS ... IMMEDIATE, rewrites)
-- the transaction's rows from all of its notes so far. NEW is the row as this event queued it.
CREATE FUNCTION pbx.write_audit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pbx, pg_temp AS $$
DECLARE
    me xid8 := pg_current_xact_id();
BEGIN
    DELETE FROM pbx.audit_pending WHERE xid = me AND token = NEW.token;
    IF NOT FOUND THEN
        RETURN NULL;  -- a later event of this transaction writes
    END IF;

    INSERT INTO pbx.audit AS a (xid, at, tenant_id, tenant, session_role, roles, actor, touched, change_set)
    WITH notes AS (
        SELECT DISTINCT tenant_id, tenant, domain, kind, key FROM pg_temp.pbx_audit_notes WHERE kind <> 'role'
    ), keys AS (
        SELECT tenant_id, kind, jsonb_agg(DISTINCT key ORDER BY key) AS keys FROM notes GROUP BY tenant_id, kind
    ), changes AS (
        SELECT d.tenant_id, o.op, o.view, jsonb_agg(o.object_id ORDER BY o.object_id) AS ids
        FROM pbx.outbox o
        JOIN (SELECT DISTINCT tenant_id, domain FROM notes WHERE domain IS NOT NULL) d
          ON d.domain = split_part(split_part(o.object_id, '@', 2), '~', 1)
        WHERE o.xid = me
        GROUP BY d.tenant_id, o.op, o.view
    )
    SELECT me, clock_timestamp(), k.tenant_id,
           coalesce((SELECT t.name FROM pbx.tenants t WHERE t.id = k.tenant_id),
                    (SELECT max(n.tenant) FROM notes n WHERE n.tenant_id = k.tenant_id)),
           session_user,
           coalesce((SELECT array_agg(DISTINCT key::name ORDER BY key::name) FROM pg_temp.pbx_audit_notes
                     WHERE kind = 'role'), ARRAY[]::name[]),
           nullif(current_setting('pbx.actor', true), ''),
           k.touched,
           (SELECT jsonb_object_agg(op, (
                SELECT jsonb_object_agg(v, coalesce((SELECT c.ids FROM changes c
                                                     WHERE c.tenant_id = k.tenant_id AND c.op = ops.op AND c.view = v),
                                                    '[]'))
                FROM unnest(pbx.realtime_views()) v))
            FROM unnest(ARRAY['changed', 'created', 'deleted']) ops(op))
    FROM (SELECT tenant_id, jsonb_object_agg(kind, keys) AS touched FROM keys GROUP BY tenant_id) k
    ON CONFLICT (xid, tenant_id) DO UPDATE SET
        at = EXCLUDED.at, tenant = EXCLUDED.tenant, roles = EXCLUDED.roles, actor = EXCLUDED.actor,
        touched = EXCLUDED.touched, change_set = EXCLUDED.change_set;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER write_audit AFTER INSERT OR UPDATE ON pbx.audit_pending
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION pbx.write_audit();

-- The change set is read from the outbox, so the write that counts must come after the flush,
-- whatever order the transaction's statements queued their events in (and under SET CONSTRAINTS
-- ALL IMMEDIATE, where the flush's deferred work and ours fire as they are reached). Constraint
-- triggers on one event fire in name order: this one follows `flush_dirty` on the same row of
-- pbx.pending_flush and queues one more write, which sees the flushed outbox.
CREATE FUNCTION pbx.audit_after_flush() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pbx, pg_temp AS $$
BEGIN
    IF to_regclass('pg_temp.pbx_audit_notes') IS NOT NULL THEN
        PERFORM pbx.audit_queue();
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER zz_audit_after_flush AFTER INSERT ON pbx.pending_flush
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION pbx.audit_after_flush();

-- Readable per tenant: a tenant admin sees the rows of its own tenants, and writes none.
GRANT SELECT ON pbx.audit TO pbx_tenant_admin;
ALTER TABLE pbx.audit ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_admin ON pbx.audit TO pbx_tenant_admin USING (pbx.is_admin_of(tenant_id));

-- Retention: rows older than `keep` go. The default is the database setting pbx.audit_keep
-- (ALTER DATABASE ... SET pbx.audit_keep = '1 year'), else 90 days; `pbxctl audit trim` calls it.
CREATE FUNCTION pbx.audit_keep() RETURNS interval
LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('pbx.audit_keep', true), '')::interval, interval '90 days')
$$;

CREATE FUNCTION pbx.trim_audit(keep interval DEFAULT pbx.audit_keep()) RETURNS bigint
LANGUAGE sql SET search_path = pbx, pg_temp AS $$
    WITH gone AS (DELETE FROM pbx.audit WHERE at < now() - keep RETURNING 1)
    SELECT count(*) FROM gone
$$;
