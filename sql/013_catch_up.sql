-- Brings every database to this release's schema, whichever content of sql/002, 004, 005, 006, 008
-- and 009 it was migrated with. Those files were edited after their first commit, and a database
-- that had applied one never received the edit. They are back to their first content (migrations
-- are immutable: sorcery_backend/schema.py refuses a changed one), and their later edits are here,
-- written to apply on either content (IF [NOT] EXISTS, OR REPLACE, DROP ... IF EXISTS).
-- tests/test_schema_upgrade.py replays the sql/ of every commit that changed it and checks that
-- this file then gives the schema of a fresh migrate.

-- (002) Trunks are looked up on every call (prefix routing).
CREATE INDEX IF NOT EXISTS extensions_trunks ON pbx.extensions (tenant_id) WHERE type = 'trunk';

-- (004) Set-based resolution: a flush of 10k endpoints is one query, not 10k recursions.
DROP FUNCTION IF EXISTS pbx.endpoint_rows(bigint);
DROP FUNCTION IF EXISTS pbx.resolve_codecs(bigint[]);

-- lin(X) = lin(P1) ... lin(Pn), keeping only the first occurrence of each template, then X.
-- Walking up the parent links, each occurrence of an ancestor gets the path of link ordinals that
-- reached it; sorting by path || +inf is exactly that post-order (parents' linearizations, left to
-- right, before the object itself), and the smallest key of a template is its first occurrence.
-- Set-based so that a flush of 10k endpoints is one query, not 10k recursions.
CREATE OR REPLACE FUNCTION pbx.linearize_set(objs bigint[])
RETURNS TABLE (root bigint, node bigint, lvl bigint)
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE up(root, node, path) AS (
        SELECT x, x, ARRAY[]::int[] FROM unnest(objs) AS x
        UNION ALL
        SELECT up.root, p.parent_id, up.path || p.ordinal
        FROM up JOIN pbx.object_parents p ON p.object_id = up.node
    ), firsts AS (
        SELECT up.root, up.node, min(up.path || 2147483647) AS k FROM up GROUP BY up.root, up.node
    )
    SELECT f.root, f.node, row_number() OVER (PARTITION BY f.root ORDER BY f.k) FROM firsts f
$$;

CREATE OR REPLACE FUNCTION pbx.linearize(obj bigint) RETURNS bigint[]
LANGUAGE sql STABLE AS $$ SELECT array_agg(node ORDER BY lvl) FROM pbx.linearize_set(ARRAY[obj]) $$;

-- allow/disallow applied level by level as Asterisk applies them (disallow before allow within a
-- level; 'all' / '!all' reset). Input: the [option, value] pairs in that order. Asterisk 22.10
-- ignores a realtime disallow column, so the effective list goes whole into allow, led by '!all'.
CREATE OR REPLACE FUNCTION pbx.resolve_codecs(steps jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    caps text[] := '{}';
    step jsonb;
    tok text;
    name text;
    allowing boolean;
BEGIN
    FOR step IN SELECT * FROM jsonb_array_elements(steps) LOOP
        FOREACH tok IN ARRAY string_to_array(step ->> 1, ',') LOOP
            tok := btrim(tok);
            CONTINUE WHEN tok = '';
            allowing := (step ->> 0) = 'allow';
            IF left(tok, 1) = '!' THEN
                allowing := NOT allowing;
                tok := substr(tok, 2);
            END IF;
            name := lower(split_part(tok, ':', 1));
            IF name = 'all' THEN
                IF allowing THEN
                    IF NOT 'all' = ANY (caps) THEN caps := caps || 'all'::text; END IF;
                ELSE
                    caps := '{}';
                END IF;
            ELSIF allowing THEN
                IF NOT EXISTS (SELECT 1 FROM unnest(caps) c WHERE lower(split_part(c, ':', 1)) = name) THEN
                    caps := caps || tok;
                END IF;
            ELSE
                caps := ARRAY(SELECT c FROM unnest(caps) c WHERE lower(split_part(c, ':', 1)) <> name);
            END IF;
        END LOOP;
    END LOOP;
    RETURN pbx.realtime_escape(array_to_string('!all'::text || caps, ','));
END $$;

-- The merged option sections of objects, values already encoded for the realtime driver:
-- {"transport": ..., "endpoint": {...}, "aor": {...}, "auth": {...}, "outbound_auth": {...},
--  "identify": {...}, "registration": {...}}; a section is absent when nothing defines it.
CREATE OR REPLACE FUNCTION pbx.resolve_set(objs bigint[])
RETURNS TABLE (object_id bigint, merged jsonb)
LANGUAGE sql STABLE AS $$
    WITH lin AS (
        SELECT * FROM pbx.linearize_set(objs)
    ), opts AS (
        SELECT l.root, o.section, o.option, o.value, l.lvl
        FROM lin l JOIN pbx.object_options o ON o.object_id = l.node
    ),
    -- Scalars and per-level lists (contact, permit, deny, acl, ...): the last level that defines
    -- the key supplies the whole value.
    plain AS (
        SELECT DISTINCT ON (root, section, option) root, section, option, pbx.realtime_encode(value) AS v
        FROM opts WHERE option NOT IN ('set_var', 'match', 'allow', 'disallow')
        ORDER BY root, section, option, lvl DESC
    ), items AS (
        SELECT o.root, o.section, o.option, x.item, o.lvl * 1000000 + x.i AS pos,
               btrim(split_part(x.item, '=', 1)) AS var
        FROM opts o, unnest(o.value) WITH ORDINALITY AS x(item, i)
        WHERE o.option IN ('set_var', 'match')
    ),
    -- set_var: an ordered map by variable name (first position, last value).
    set_vars AS (
        SELECT root, section, var, min(pos) AS first_pos, (array_agg(item ORDER BY pos DESC))[1] AS item
        FROM items WHERE option = 'set_var' GROUP BY root, section, var
    ),
    -- match: an ordered union.
    matches AS (
        SELECT root, section, item, min(pos) AS first_pos FROM items WHERE option = 'match'
        GROUP BY root, section, item
    ),
    -- codecs: every allow/disallow in lin order; endpoints sharing a chain share one evaluation.
    codec_steps AS (
        SELECT root, jsonb_agg(jsonb_build_array(option, array_to_string(value, ','))
                               ORDER BY lvl, option DESC) AS steps  -- DESC: disallow first
        FROM opts WHERE section = 'endpoint' AND option IN ('allow', 'disallow') GROUP BY root
    ), codecs AS (
        SELECT c.root, d.allow
        FROM codec_steps c
        JOIN (SELECT steps, pbx.resolve_codecs(steps) AS allow FROM (SELECT DISTINCT steps FROM codec_steps) u) d
          ON d.steps = c.steps
    ), all_values AS (
        SELECT root, section, option, v FROM plain
        UNION ALL
        SELECT root, section, 'set_var', string_agg(pbx.realtime_escape(item), ';' ORDER BY first_pos)
        FROM set_vars GROUP BY root, section
        UNION ALL
        SELECT root, section, 'match', string_agg(pbx.realtime_escape(item), ';' ORDER BY first_pos)
        FROM matches GROUP BY root, section
        UNION ALL
        SELECT root, 'endpoint', 'allow', allow FROM codecs
    ), sections AS (
        SELECT root, jsonb_object_agg(section, opts_of_section) AS merged
        FROM (SELECT root, section, jsonb_object_agg(option, v) AS opts_of_section
              FROM all_values GROUP BY root, section) s
        GROUP BY root
    ), transports AS (
        SELECT DISTINCT ON (l.root) l.root, o.transport
        FROM lin l JOIN pbx.objects o ON o.id = l.node
        WHERE o.transport IS NOT NULL ORDER BY l.root, l.lvl DESC
    )
    SELECT x, coalesce(s.merged, '{}') || coalesce(jsonb_build_object('transport', t.transport), '{}')
    FROM unnest(objs) AS x
    LEFT JOIN sections s ON s.root = x
    LEFT JOIN transports t ON t.root = x
$$;

CREATE OR REPLACE FUNCTION pbx.resolve(obj bigint) RETURNS jsonb
LANGUAGE sql STABLE AS $$ SELECT merged FROM pbx.resolve_set(ARRAY[obj]) $$;

-- The Asterisk rows of endpoints, keyed by table ("ps_auths:outbound_auth" for the second auth).
-- Ids: every object of endpoint N in a tenant with SIP domain D is `N@D` (Asterisk identifies an
-- endpoint by user@domain first, so a lookup hits on the first probe); the outbound auth is
-- `N@D~out` ('~' can appear in neither names nor domains).
CREATE OR REPLACE FUNCTION pbx.endpoint_rows_set(objs bigint[])
RETURNS TABLE (object_id bigint, table_key text, id text, data jsonb)
LANGUAGE sql STABLE AS $$
    WITH r AS (
        SELECT x.object_id, x.merged AS m, o.name, o.name || '@' || t.domain AS eid
        FROM pbx.resolve_set(objs) x
        JOIN pbx.objects o ON o.id = x.object_id
        JOIN pbx.tenants t ON t.id = o.tenant_id
    )
    SELECT object_id, 'ps_endpoints', eid,
           coalesce(m -> 'endpoint', '{}') || jsonb_strip_nulls(jsonb_build_object(
               'id', eid, 'transport', m ->> 'transport',
               'aors', CASE WHEN m ? 'aor' THEN eid END,
               'auth', CASE WHEN m ? 'auth' THEN eid END,
               'outbound_auth', CASE WHEN m ? 'outbound_auth' THEN eid || '~out' END))
    FROM r
    UNION ALL
    SELECT object_id, 'ps_aors', eid, (m -> 'aor') || jsonb_build_object('id', eid)
    FROM r WHERE m ? 'aor'
    UNION ALL
    SELECT object_id, 'ps_auths', eid,
           jsonb_build_object('username', pbx.realtime_escape(name)) || (m -> 'auth') || jsonb_build_object('id', eid)
    FROM r WHERE m ? 'auth'
    UNION ALL
    SELECT object_id, 'ps_auths:outbound_auth', eid || '~out',
           jsonb_build_object('username', pbx.realtime_escape(name)) || (m -> 'outbound_auth')
           || jsonb_build_object('id', eid || '~out')
    FROM r WHERE m ? 'outbound_auth'
    UNION ALL
    SELECT object_id, 'ps_endpoint_id_ips', eid, (m -> 'identify') || jsonb_build_object('id', eid, 'endpoint', eid)
    FROM r WHERE m ? 'identify'
    UNION ALL
    -- The registration goes out over the endpoint's transport unless it names its own.
    SELECT object_id, 'ps_registrations', eid,
           jsonb_strip_nulls(jsonb_build_object('transport', m ->> 'transport'))
           || (m -> 'registration')
           || jsonb_strip_nulls(jsonb_build_object('id', eid, 'endpoint', eid,
                                                   'outbound_auth', CASE WHEN m ? 'outbound_auth' THEN eid || '~out' END))
    FROM r WHERE m ? 'registration'
$$;

-- (006) The flattened tables have exactly Asterisk's columns in the view's order, so the view adds
-- neither a projection nor a join to a lookup by id; which endpoint owns a row is kept in
-- pbx.rt_owner (its columns were the tables' first two).
CREATE TABLE IF NOT EXISTS pbx.rt_owner (
    view       text NOT NULL,
    id         text NOT NULL,
    object_id  bigint NOT NULL,
    table_key  text NOT NULL,  -- the view, or 'ps_auths:outbound_auth'
    PRIMARY KEY (view, id)
);
CREATE INDEX IF NOT EXISTS rt_owner_object ON pbx.rt_owner (object_id);

DO $$
DECLARE
    v text;
BEGIN
    FOREACH v IN ARRAY pbx.realtime_views() LOOP
        -- The policy of sql/008's first content reads object_id: it goes before the column.
        EXECUTE format('DROP POLICY IF EXISTS tenant_admin ON pbx.%I', 'rt_' || v);
        IF EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_schema = 'pbx' AND table_name = 'rt_' || v AND column_name = 'object_id') THEN
            EXECUTE format('INSERT INTO pbx.rt_owner (view, id, object_id, table_key)
                            SELECT %L, id, object_id, table_key FROM pbx.%I', v, 'rt_' || v);
            -- Their indexes on object_id go with them.
            EXECUTE format('ALTER TABLE pbx.%I DROP COLUMN object_id, DROP COLUMN table_key', 'rt_' || v);
        END IF;
    END LOOP;
END $$;

-- The routing loader finds an endpoint's registered devices by endpoint id.
CREATE INDEX IF NOT EXISTS ps_contacts_endpoint ON public.ps_contacts (endpoint);

-- (005) The flush keeps pbx.rt_owner; its temp tables are analyzed (without statistics a 10k-row
-- flush plans nested loops).
CREATE OR REPLACE FUNCTION pbx.flush_dirty() RETURNS trigger
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
    SELECT r.object_id, r.table_key, r.id, r.data
    FROM pbx.endpoint_rows_set(ARRAY(SELECT object_id FROM flush_affected WHERE live)) r;
    -- Temp tables have no statistics until analyzed; without them a 10k-row flush plans nested loops.
    ANALYZE flush_affected;
    ANALYZE flush_wanted;

    FOREACH v IN ARRAY pbx.realtime_views() LOOP
        TRUNCATE flush_diff;
        EXECUTE format($q$
            INSERT INTO flush_diff (id, op, row_json)
            WITH old AS (
                SELECT f.id, to_jsonb(f) AS j FROM pbx.%1$I f
                JOIN pbx.rt_owner o ON o.view = %2$L AND o.id = f.id
                WHERE o.object_id IN (SELECT object_id FROM flush_affected)
            ), new AS (
                SELECT w.id, to_jsonb(jsonb_populate_record(NULL::pbx.%1$I, w.data)) AS j
                FROM flush_wanted w WHERE split_part(w.table_key, ':', 1) = %2$L
            )
            SELECT coalesce(new.id, old.id),
                   CASE WHEN old.id IS NULL THEN 'created' WHEN new.id IS NULL THEN 'deleted' ELSE 'changed' END,
                   new.j
            FROM old FULL JOIN new ON old.id = new.id
            WHERE old.j IS DISTINCT FROM new.j
        $q$, 'rt_' || v, v);
        ANALYZE flush_diff;
        EXECUTE format('DELETE FROM pbx.%I f USING flush_diff d WHERE f.id = d.id', 'rt_' || v);
        -- LATERAL, not (f(x)).*: the latter calls the function once per column.
        EXECUTE format('INSERT INTO pbx.%1$I SELECT r.* FROM flush_diff d,
                        LATERAL jsonb_populate_record(NULL::pbx.%1$I, d.row_json) r
                        WHERE d.row_json IS NOT NULL', 'rt_' || v);
        DELETE FROM pbx.rt_owner o USING flush_diff d WHERE o.view = v AND o.id = d.id AND d.op = 'deleted';
        INSERT INTO pbx.rt_owner (view, id, object_id, table_key)
        SELECT v, w.id, w.object_id, w.table_key
        FROM flush_diff d JOIN flush_wanted w ON w.id = d.id AND split_part(w.table_key, ':', 1) = v
        WHERE d.op = 'created';
        INSERT INTO pbx.outbox (view, object_id, op) SELECT v, id, op FROM flush_diff;
        GET DIAGNOSTICS k = ROW_COUNT;
        n := n + k;
    END LOOP;

    IF n > 0 THEN
        PERFORM pg_notify('pbx_changes', me::text);
    END IF;
    RETURN NULL;
END $$;

-- (008) Tenant admins see the rows of their own endpoints, found through pbx.rt_owner.
GRANT SELECT ON pbx.rt_owner TO pbx_tenant_admin;
ALTER TABLE pbx.rt_owner ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS tenant_admin ON pbx.rt_owner;
-- objects is itself filtered by RLS, so this sees only the role's own tenants' objects.
CREATE POLICY tenant_admin ON pbx.rt_owner TO pbx_tenant_admin
    USING (EXISTS (SELECT 1 FROM pbx.objects o WHERE o.id = object_id));
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['ps_endpoints', 'ps_aors', 'ps_auths', 'ps_endpoint_id_ips', 'ps_registrations'] LOOP
        EXECUTE format('ALTER TABLE pbx.%I ENABLE ROW LEVEL SECURITY', 'rt_' || t);
        EXECUTE format('CREATE POLICY tenant_admin ON pbx.%I TO pbx_tenant_admin
                        USING (EXISTS (SELECT 1 FROM pbx.rt_owner o WHERE o.view = %L AND o.id = %I.id))',
                       'rt_' || t, t, 'rt_' || t);
    END LOOP;
END $$;

-- (009) A full-backend identify cache over an EMPTY table never fills and then every request scans
-- the table twice (shared/docs/asterisk.md). This row keeps it non-empty: '~' cannot start an
-- object name, so no flush ever touches it (and pbx.rt_owner does not list it, so export ignores
-- it), and it matches only the broadcast address, which is never a SIP source.
INSERT INTO pbx.rt_ps_endpoint_id_ips (id, endpoint, match)
VALUES ('~pbx-keep-cache-filled', '~none', '255.255.255.255/32')
ON CONFLICT (id) DO NOTHING;

-- (009) The registrar reads an AOR's contacts on every REGISTER with `id LIKE '<aor>^3B@%'`. Under
-- a non-C collation the primary key cannot serve a LIKE prefix, so each REGISTER scanned every
-- contact (measured: 10k contacts, ~170 REGISTER/s); a pattern-ops index makes it one index probe.
CREATE INDEX IF NOT EXISTS ps_contacts_id_prefix ON public.ps_contacts (id varchar_pattern_ops);
