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
CREATE FUNCTION pbx.linearize(obj bigint) RETURNS bigint[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
    result bigint[] := '{}';
    parent bigint;
    x bigint;
BEGIN
    FOR parent IN SELECT parent_id FROM pbx.object_parents WHERE object_id = obj ORDER BY ordinal LOOP
        FOREACH x IN ARRAY pbx.linearize(parent) LOOP
            IF NOT x = ANY (result) THEN
                result := result || x;
            END IF;
        END LOOP;
    END LOOP;
    RETURN result || obj;
END $$;

-- allow/disallow applied level by level as Asterisk applies them (disallow before allow within a
-- level; 'all' / '!all' reset). Asterisk 22.10 ignores a realtime disallow column, so the effective
-- list goes whole into allow, led by '!all'. NULL when no level says anything about codecs.
CREATE FUNCTION pbx.resolve_codecs(lin bigint[]) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    caps text[] := '{}';
    said boolean := false;
    lvl record;
    tok text;
    name text;
    allowing boolean;
BEGIN
    FOR lvl IN
        SELECT o.option, o.value
        FROM unnest(lin) WITH ORDINALITY AS l(id, i)
        JOIN pbx.object_options o ON o.object_id = l.id AND o.section = 'endpoint'
        WHERE o.option IN ('allow', 'disallow')
        ORDER BY l.i, o.option DESC  -- 'disallow' sorts after 'allow': DESC puts it first
    LOOP
        said := true;
        FOREACH tok IN ARRAY string_to_array(array_to_string(lvl.value, ','), ',') LOOP
            tok := btrim(tok);
            CONTINUE WHEN tok = '';
            allowing := lvl.option = 'allow';
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
    IF NOT said THEN
        RETURN NULL;
    END IF;
    RETURN pbx.realtime_escape(array_to_string('!all'::text || caps, ','));
END $$;

-- The merged option sections of one object, values already encoded for the realtime driver:
-- {"transport": ..., "endpoint": {...}, "aor": {...}, "auth": {...}, "outbound_auth": {...},
--  "identify": {...}, "registration": {...}}; a section is absent when nothing defines it.
CREATE FUNCTION pbx.resolve(obj bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    lin bigint[] := pbx.linearize(obj);
    merged jsonb;
    transport text;
    codecs text;
BEGIN
    SELECT o.transport INTO transport
    FROM unnest(lin) WITH ORDINALITY AS l(id, i) JOIN pbx.objects o ON o.id = l.id
    WHERE o.transport IS NOT NULL ORDER BY l.i DESC LIMIT 1;

    WITH opts AS (
        SELECT o.section, o.option, o.value, l.i AS lvl
        FROM unnest(lin) WITH ORDINALITY AS l(id, i)
        JOIN pbx.object_options o ON o.object_id = l.id
    ),
    -- Scalars and per-level lists (contact, permit, deny, acl, ...): the last level that defines
    -- the key supplies the whole value.
    plain AS (
        SELECT DISTINCT ON (section, option) section, option, pbx.realtime_encode(value) AS v
        FROM opts WHERE option NOT IN ('set_var', 'match', 'allow', 'disallow')
        ORDER BY section, option, lvl DESC
    ),
    items AS (
        SELECT o.section, o.option, x.item, o.lvl::bigint * 1000000 + x.i AS pos,
               btrim(split_part(x.item, '=', 1)) AS var
        FROM opts o, unnest(o.value) WITH ORDINALITY AS x(item, i)
        WHERE o.option IN ('set_var', 'match')
    ),
    -- set_var: an ordered map by variable name (first position, last value).
    set_vars AS (
        SELECT section, var, min(pos) AS first_pos, (array_agg(item ORDER BY pos DESC))[1] AS item
        FROM items WHERE option = 'set_var' GROUP BY section, var
    ),
    -- match: an ordered union.
    matches AS (
        SELECT section, item, min(pos) AS first_pos FROM items WHERE option = 'match' GROUP BY section, item
    ),
    all_values AS (
        SELECT section, option, v FROM plain
        UNION ALL
        SELECT section, 'set_var', string_agg(pbx.realtime_escape(item), ';' ORDER BY first_pos)
        FROM set_vars GROUP BY section
        UNION ALL
        SELECT section, 'match', string_agg(pbx.realtime_escape(item), ';' ORDER BY first_pos)
        FROM matches GROUP BY section
    )
    SELECT coalesce(jsonb_object_agg(section, opts_of_section), '{}') INTO merged
    FROM (SELECT section, jsonb_object_agg(option, v) AS opts_of_section FROM all_values GROUP BY section) s;

    codecs := pbx.resolve_codecs(lin);
    IF codecs IS NOT NULL THEN
        merged := jsonb_set(merged, '{endpoint}', coalesce(merged -> 'endpoint', '{}') || jsonb_build_object('allow', codecs));
    END IF;
    IF transport IS NOT NULL THEN
        merged := merged || jsonb_build_object('transport', transport);
    END IF;
    RETURN merged;
END $$;

-- The Asterisk rows of one endpoint, keyed by table ("ps_auths:outbound_auth" for the second auth).
-- Ids: every object of endpoint N in a tenant with SIP domain D is `N@D` (Asterisk identifies an
-- endpoint by user@domain first, so a lookup hits on the first probe); the outbound auth is
-- `N@D~out` ('~' can appear in neither names nor domains).
CREATE FUNCTION pbx.endpoint_rows(obj bigint)
RETURNS TABLE (table_key text, id text, data jsonb)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    r jsonb := pbx.resolve(obj);
    ep_name text;
    eid text;
    has_aor boolean := (r -> 'aor') IS NOT NULL;
    has_auth boolean := (r -> 'auth') IS NOT NULL;
    has_out boolean := (r -> 'outbound_auth') IS NOT NULL;
    out_id text;
BEGIN
    SELECT o.name, o.name || '@' || t.domain INTO ep_name, eid
    FROM pbx.objects o JOIN pbx.tenants t ON t.id = o.tenant_id WHERE o.id = obj;
    out_id := eid || '~out';

    table_key := 'ps_endpoints'; id := eid;
    data := coalesce(r -> 'endpoint', '{}') || jsonb_strip_nulls(jsonb_build_object(
        'id', eid, 'transport', r ->> 'transport',
        'aors', CASE WHEN has_aor THEN eid END,
        'auth', CASE WHEN has_auth THEN eid END,
        'outbound_auth', CASE WHEN has_out THEN out_id END));
    RETURN NEXT;

    IF has_aor THEN
        table_key := 'ps_aors'; id := eid;
        data := (r -> 'aor') || jsonb_build_object('id', eid);
        RETURN NEXT;
    END IF;
    IF has_auth THEN
        table_key := 'ps_auths'; id := eid;
        data := jsonb_build_object('username', pbx.realtime_escape(ep_name)) || (r -> 'auth') || jsonb_build_object('id', eid);
        RETURN NEXT;
    END IF;
    IF has_out THEN
        table_key := 'ps_auths:outbound_auth'; id := out_id;
        data := jsonb_build_object('username', pbx.realtime_escape(ep_name)) || (r -> 'outbound_auth') || jsonb_build_object('id', out_id);
        RETURN NEXT;
    END IF;
    IF (r -> 'identify') IS NOT NULL THEN
        table_key := 'ps_endpoint_id_ips'; id := eid;
        data := (r -> 'identify') || jsonb_build_object('id', eid, 'endpoint', eid);
        RETURN NEXT;
    END IF;
    IF (r -> 'registration') IS NOT NULL THEN
        table_key := 'ps_registrations'; id := eid;
        -- The registration goes out over the endpoint's transport unless it names its own.
        data := jsonb_strip_nulls(jsonb_build_object('transport', r ->> 'transport'))
             || (r -> 'registration')
             || jsonb_strip_nulls(jsonb_build_object('id', eid, 'endpoint', eid,
                                                     'outbound_auth', CASE WHEN has_out THEN out_id END));
        RETURN NEXT;
    END IF;
END $$;
