-- Inheritance rule R (contract section 2), implemented once. Everything that shows a flattened
-- object (the realtime views, export, plan/apply change sets, the change push) reads what these
-- functions produce.

-- Realtime drivers split a column on ';' and decode ^XX: escape both so a value survives intact.
CREATE FUNCTION pbx.realtime_escape(v text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $$ SELECT replace(replace(v, '^', '^5E'), ';', '^3B') $$;

CREATE FUNCTION pbx.realtime_encode(vals text[]) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT string_agg(pbx.realtime_escape(v), ';' ORDER BY i) FROM unnest(vals) WITH ORDINALITY AS x(v, i)
$$;

-- lin(X) = lin(P1) ... lin(Pn), keeping only the first occurrence of each template, then X.
-- Walking up the parent links, each occurrence of an ancestor gets the path of link ordinals that
-- reached it; sorting by path || +inf is exactly that post-order (parents' linearizations, left to
-- right, before the object itself), and the smallest key of a template is its first occurrence.
-- Set-based so that a flush of 10k endpoints is one query, not 10k recursions.
CREATE FUNCTION pbx.linearize_set(objs bigint[])
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

CREATE FUNCTION pbx.linearize(obj bigint) RETURNS bigint[]
LANGUAGE sql STABLE AS $$ SELECT array_agg(node ORDER BY lvl) FROM pbx.linearize_set(ARRAY[obj]) $$;

-- allow/disallow applied level by level as Asterisk applies them (disallow before allow within a
-- level; 'all' / '!all' reset). Input: the [option, value] pairs in that order. Asterisk 22.10
-- ignores a realtime disallow column, so the effective list goes whole into allow, led by '!all'.
CREATE FUNCTION pbx.resolve_codecs(steps jsonb) RETURNS text
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
CREATE FUNCTION pbx.resolve_set(objs bigint[])
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

CREATE FUNCTION pbx.resolve(obj bigint) RETURNS jsonb
LANGUAGE sql STABLE AS $$ SELECT merged FROM pbx.resolve_set(ARRAY[obj]) $$;

-- The Asterisk rows of endpoints, keyed by table ("ps_auths:outbound_auth" for the second auth).
-- Ids: every object of endpoint N in a tenant with SIP domain D is `N@D` (Asterisk identifies an
-- endpoint by user@domain first, so a lookup hits on the first probe); the outbound auth is
-- `N@D~out` ('~' can appear in neither names nor domains).
CREATE FUNCTION pbx.endpoint_rows_set(objs bigint[])
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
