-- A template edit re-resolves every descendant inside the admin's transaction (005, 013). At 10k
-- endpoints that flush took ~3.3 s, most of it per-descendant work whose result is the same for
-- every descendant (issue 20, item 4; figures in bench/RESULTS.md):
--   * each descendant re-ran rule R over its template's whole linearization: the template's options
--     were joined, sorted and realtime-encoded 10k times;
--   * the diff rebuilt both sides as 147-column rows (to_jsonb of the stored row, jsonb_populate_record
--     of the wanted one) for every descendant, and a changed row was deleted and inserted whole;
--   * JIT compiled the flush's and the audit's statements (their row estimates come from functions
--     and temp tables), ~1 s of compilation for queries that run once.
-- Here: rule R is applied once per template and shared, the flattened rows' previous content is kept
-- beside their owner (pbx.rt_owner.data) so the diff compares jsonb with jsonb, and a changed row
-- gets an UPDATE of exactly the columns that differ.

-- Rule R over whole linearizations: the body of sql/013's resolve_set, unchanged but for its name.
-- pbx.resolve_set below calls it for what cannot share a parent's result.
CREATE FUNCTION pbx.resolve_lin_set(objs bigint[])
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

-- Rule R, each template resolved once for all its descendants. An object with at most one parent P
-- has lin(X) = lin(P) ++ [X] (the rule's definition), so when X itself holds no list option
-- (set_var, match, allow, disallow: those accumulate over levels) its result is P's result with X's
-- own options over it, key by key, and X's transport over P's: what the last level does in
-- resolve_lin_set. Everything else (several parents, list options of its own) goes through
-- resolve_lin_set whole.
CREATE OR REPLACE FUNCTION pbx.resolve_set(objs bigint[])
RETURNS TABLE (object_id bigint, merged jsonb)
LANGUAGE sql STABLE AS $$
    WITH x AS (
        SELECT DISTINCT u.id FROM unnest(objs) AS u(id)
    ), par AS (
        SELECT p.object_id, count(*) AS n, min(p.parent_id) AS parent
        FROM pbx.object_parents p JOIN x ON x.id = p.object_id GROUP BY p.object_id
    ), listy AS (
        SELECT DISTINCT o.object_id FROM pbx.object_options o JOIN x ON x.id = o.object_id
        WHERE o.option IN ('set_var', 'match', 'allow', 'disallow')
    ), kind AS MATERIALIZED (
        SELECT x.id, par.parent, coalesce(par.n, 0) <= 1 AND l.object_id IS NULL AS shares
        FROM x LEFT JOIN par ON par.object_id = x.id LEFT JOIN listy l ON l.object_id = x.id
    ), base AS MATERIALIZED (
        SELECT * FROM pbx.resolve_lin_set(ARRAY(SELECT DISTINCT parent FROM kind WHERE shares AND parent IS NOT NULL))
    ), own AS (
        SELECT s.object_id, jsonb_object_agg(s.section, s.opts) AS sections
        FROM (SELECT o.object_id, o.section,
                     -- one element: realtime_encode's result, without its unnest
                     jsonb_object_agg(o.option, CASE WHEN cardinality(o.value) = 1
                                                     THEN pbx.realtime_escape(o.value[1])
                                                     ELSE pbx.realtime_encode(o.value) END) AS opts
              FROM pbx.object_options o JOIN kind k ON k.id = o.object_id AND k.shares
              GROUP BY o.object_id, o.section) s
        GROUP BY s.object_id
    ), resolved AS (
        SELECT k.id, coalesce(b.merged, '{}')
                     || coalesce((SELECT jsonb_object_agg(s.key, coalesce(b.merged -> s.key, '{}') || s.value)
                                  FROM jsonb_each(own.sections) s), '{}')
                     || jsonb_build_object('transport', coalesce(obj.transport, b.merged ->> 'transport')) AS merged
        FROM kind k
        LEFT JOIN pbx.objects obj ON obj.id = k.id
        LEFT JOIN base b ON b.object_id = k.parent
        LEFT JOIN own ON own.object_id = k.id
        WHERE k.shares
        UNION ALL
        SELECT * FROM pbx.resolve_lin_set(ARRAY(SELECT id FROM kind WHERE NOT shares))
    )
    SELECT u.id, coalesce(r.merged, '{}')
    FROM unnest(objs) AS u(id) LEFT JOIN resolved r ON r.id = u.id
$$;

-- What each flattened row holds now, as the jsonb the flush wrote it from (nulls stripped): the
-- diff compares it with what rule R gives, key by key, without reading the 147-column rows.
ALTER TABLE pbx.rt_owner ADD COLUMN data jsonb;
DO $$
DECLARE
    v text;
BEGIN
    FOREACH v IN ARRAY pbx.realtime_views() LOOP
        EXECUTE format('UPDATE pbx.rt_owner o SET data = jsonb_strip_nulls(to_jsonb(f))
                        FROM pbx.%I f WHERE o.view = %L AND o.id = f.id', 'rt_' || v, v);
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION pbx.flush_dirty() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pbx, pg_temp SET jit = off AS $$
DECLARE
    me xid8 := pg_current_xact_id();
    v text;
    n bigint := 0;
    k bigint;
    tcols text[];
    changed text[];
BEGIN
    DELETE FROM pbx.pending_flush WHERE xid = me;
    IF NOT FOUND THEN
        RETURN NULL;  -- already flushed by an earlier firing in this transaction
    END IF;

    CREATE TEMP TABLE IF NOT EXISTS flush_dirty_ids (object_id bigint PRIMARY KEY) ON COMMIT DROP;
    CREATE TEMP TABLE IF NOT EXISTS flush_affected (object_id bigint PRIMARY KEY, live boolean) ON COMMIT DROP;
    CREATE TEMP TABLE IF NOT EXISTS flush_rows (object_id bigint, view text, table_key text, id text, data jsonb)
        ON COMMIT DROP;
    -- cols: for a changed row, the table's columns whose value differs.
    CREATE TEMP TABLE IF NOT EXISTS flush_delta (id text, op text, data jsonb, cols text[]) ON COMMIT DROP;
    TRUNCATE flush_dirty_ids, flush_affected, flush_rows;

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

    INSERT INTO flush_rows
    SELECT r.object_id, split_part(r.table_key, ':', 1), r.table_key, r.id, jsonb_strip_nulls(r.data)
    FROM pbx.endpoint_rows_set(ARRAY(SELECT object_id FROM flush_affected WHERE live)) r;
    -- Temp tables have no statistics until analyzed; without them a 10k-row flush plans nested loops.
    ANALYZE flush_affected;
    ANALYZE flush_rows;

    FOREACH v IN ARRAY pbx.realtime_views() LOOP
        TRUNCATE flush_delta;
        SELECT array_agg(a.attname::text) INTO tcols FROM pg_attribute a
        WHERE a.attrelid = format('pbx.%I', 'rt_' || v)::regclass AND a.attnum > 0 AND NOT a.attisdropped;
        INSERT INTO flush_delta (id, op, data, cols)
        WITH was AS (
            SELECT o.id, o.data FROM pbx.rt_owner o
            WHERE o.view = v AND o.object_id IN (SELECT object_id FROM flush_affected)
        ), want AS (
            SELECT w.id, w.data FROM flush_rows w WHERE w.view = v
        )
        SELECT coalesce(want.id, was.id),
               CASE WHEN was.id IS NULL THEN 'created' WHEN want.id IS NULL THEN 'deleted' ELSE 'changed' END,
               want.data,
               CASE WHEN was.id IS NULL OR want.id IS NULL THEN NULL
                    WHEN was.data IS NULL THEN tcols  -- never recorded: rewrite the row whole
                    ELSE ARRAY(SELECT c FROM (SELECT jsonb_object_keys(want.data)
                                              UNION SELECT jsonb_object_keys(was.data)) k(c)
                               WHERE (want.data -> c) IS DISTINCT FROM (was.data -> c) AND c = ANY (tcols)
                               ORDER BY c) END
        FROM was FULL JOIN want ON was.id = want.id
        WHERE was.data IS DISTINCT FROM want.data OR was.id IS NULL OR want.id IS NULL;
        ANALYZE flush_delta;

        EXECUTE format('DELETE FROM pbx.%I f USING flush_delta d WHERE f.id = d.id AND d.op <> ''changed''',
                       'rt_' || v);
        -- LATERAL, not (f(x)).*: the latter calls the function once per column.
        EXECUTE format('INSERT INTO pbx.%1$I SELECT r.* FROM flush_delta d,
                        LATERAL jsonb_populate_record(NULL::pbx.%1$I, d.data) r
                        WHERE d.op = ''created''', 'rt_' || v);
        -- Every column of the flattened tables is text: ->> gives what jsonb_populate_record would.
        FOR changed IN SELECT DISTINCT d.cols FROM flush_delta d WHERE d.op = 'changed' AND cardinality(d.cols) > 0 LOOP
            EXECUTE format('UPDATE pbx.%I f SET %s FROM flush_delta d
                            WHERE f.id = d.id AND d.op = ''changed'' AND d.cols = $1',
                           'rt_' || v, (SELECT string_agg(format('%I = d.data ->> %L', c, c), ', ') FROM unnest(changed) c))
            USING changed;
        END LOOP;

        DELETE FROM pbx.rt_owner o USING flush_delta d WHERE o.view = v AND o.id = d.id AND d.op = 'deleted';
        INSERT INTO pbx.rt_owner (view, id, object_id, table_key, data)
        SELECT v, w.id, w.object_id, w.table_key, w.data
        FROM flush_delta d JOIN flush_rows w ON w.view = v AND w.id = d.id
        WHERE d.op = 'created';
        UPDATE pbx.rt_owner o SET data = w.data, object_id = w.object_id, table_key = w.table_key
        FROM flush_delta d JOIN flush_rows w ON w.view = v AND w.id = d.id
        WHERE d.op = 'changed' AND o.view = v AND o.id = d.id;
        -- A change only in keys that are no column of the table changes nothing Asterisk reads.
        INSERT INTO pbx.outbox (view, object_id, op)
        SELECT v, id, op FROM flush_delta WHERE op <> 'changed' OR cardinality(cols) > 0;
        GET DIAGNOSTICS k = ROW_COUNT;
        n := n + k;
    END LOOP;

    IF n > 0 THEN
        PERFORM pg_notify('pbx_changes', me::text);
    END IF;
    RETURN NULL;
END $$;

-- The audit's change-set query runs once per transaction; JIT compiled it for ~0.6 s on a 10k flush.
ALTER FUNCTION pbx.write_audit() SET jit = off;

-- sql/014 notes an AOR row with static contacts as routing data when the flush inserts or deletes
-- it; a changed row is now an UPDATE of its changed columns, so that side is noted here: a change of
-- what routing reads of the row (its contact, its qualify_frequency).
CREATE FUNCTION pbx.note_static_contact_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pbx, pg_temp AS $$
DECLARE
    ids bigint[];
BEGIN
    SELECT array_agg(DISTINCT t.id ORDER BY t.id) INTO ids
    FROM new_rows n JOIN old_rows o ON o.id = n.id
    JOIN pbx.tenants t ON t.domain = split_part(n.id, '@', 2)
    WHERE (n.contact, n.qualify_frequency) IS DISTINCT FROM (o.contact, o.qualify_frequency)
      AND (n.contact IS NOT NULL OR o.contact IS NOT NULL);
    IF ids IS NOT NULL THEN
        PERFORM pbx.routing_changed(ids);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER routing_static_contact_upd AFTER UPDATE ON pbx.rt_ps_aors
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pbx.note_static_contact_update();
