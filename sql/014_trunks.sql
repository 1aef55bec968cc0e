-- Carrier trunks and tenant settings (contract section 2, "Trunks and numbers"):
--   * a trunk extension's outbound number rules (strip, prepend), its fallback trunks and its
--     inbound DID rules;
--   * the ring timeout, per tenant (pbx.tenant_settings) and per extension.
-- Every rule is enforced here too, because admin SQL is a supported interface; apply checks the
-- same rules first only to word the refusal in the file's own terms.

CREATE FUNCTION pbx.extension_label(tenant bigint, number text) RETURNS text
LANGUAGE sql STABLE AS $$ SELECT 'extension ' || t.name || '/' || number FROM pbx.tenants t WHERE t.id = tenant $$;

-- Milliseconds: more than 0, at most a day.
CREATE DOMAIN pbx.ring_timeout_ms AS integer CHECK (VALUE > 0 AND VALUE <= 86400000);

-- One row per tenant that sets anything; a column per setting, so an unknown setting cannot exist.
CREATE TABLE pbx.tenant_settings (
    tenant_id        bigint PRIMARY KEY REFERENCES pbx.tenants ON DELETE CASCADE,
    ring_timeout_ms  pbx.ring_timeout_ms
);

ALTER TABLE pbx.extensions
    ADD COLUMN ring_timeout_ms pbx.ring_timeout_ms,
    -- outbound: number sent = outbound_prepend || substr(number as dialed, outbound_strip + 1).
    ADD COLUMN outbound_strip integer,
    ADD COLUMN outbound_prepend text,
    ADD CONSTRAINT extension_outbound_strip_not_negative CHECK (outbound_strip >= 0),
    -- What a SIP request-URI user part carries unescaped (RFC 3261: unreserved / user-unreserved).
    ADD CONSTRAINT extension_outbound_prepend_uri_user CHECK (outbound_prepend ~ '^[A-Za-z0-9_.!~*''()&=+$,;?/-]{0,40}$'),
    ADD CONSTRAINT extension_outbound_complete CHECK ((outbound_strip IS NULL) = (outbound_prepend IS NULL)),
    ADD CONSTRAINT extension_outbound_only_trunks CHECK (outbound_strip IS NULL OR type = 'trunk'),
    -- The target of the (tenant_id, number, type) foreign keys below: "this number is a trunk".
    ADD CONSTRAINT extension_number_type UNIQUE (tenant_id, number, type);

-- Fallback trunks, tried in ordinal order when the trunk's own legs all fail unavailable.
CREATE TABLE pbx.trunk_fallbacks (
    tenant_id      bigint NOT NULL,
    number         text NOT NULL,
    ordinal        integer NOT NULL CHECK (ordinal >= 0),
    fallback       text NOT NULL,
    trunk_type     text NOT NULL DEFAULT 'trunk' CHECK (trunk_type = 'trunk'),
    PRIMARY KEY (tenant_id, number, ordinal),
    CONSTRAINT trunk_fallback_listed_once UNIQUE (tenant_id, number, fallback),
    CONSTRAINT trunk_fallback_not_itself CHECK (fallback <> number),
    CONSTRAINT trunk_fallback_of_a_trunk FOREIGN KEY (tenant_id, number, trunk_type)
        REFERENCES pbx.extensions (tenant_id, number, type) ON DELETE CASCADE,
    -- CASCADE only matters when the tenant goes; see pbx.refuse_referenced_trunk_delete().
    CONSTRAINT trunk_fallback_is_a_trunk FOREIGN KEY (tenant_id, fallback, trunk_type)
        REFERENCES pbx.extensions (tenant_id, number, type) ON DELETE CASCADE
);
CREATE INDEX trunk_fallbacks_fallback ON pbx.trunk_fallbacks (tenant_id, fallback);

-- Inbound DID rules: an exact number or a prefix, mapped to an extension or to '{rest}' (the
-- called number's characters after the prefix). A rule is claimed by one trunk of a tenant.
CREATE TABLE pbx.trunk_dids (
    tenant_id   bigint NOT NULL,
    number      text NOT NULL,   -- the trunk
    ordinal     integer NOT NULL CHECK (ordinal >= 0),
    kind        text NOT NULL CHECK (kind IN ('number', 'prefix')),
    match       text NOT NULL,
    target      text NOT NULL,
    target_extension text GENERATED ALWAYS AS (CASE WHEN target <> '{rest}' THEN target END) STORED,
    trunk_type  text NOT NULL DEFAULT 'trunk' CHECK (trunk_type = 'trunk'),
    PRIMARY KEY (tenant_id, number, ordinal),
    CONSTRAINT did_claimed_once_per_tenant UNIQUE (tenant_id, kind, match),
    CONSTRAINT did_match_pattern CHECK (match ~ '^[0-9A-Za-z*#+]{1,40}$'),
    CONSTRAINT did_target_pattern CHECK (target ~ '^[0-9A-Za-z*#+]{1,40}$' OR (target = '{rest}' AND kind = 'prefix')),
    CONSTRAINT did_of_a_trunk FOREIGN KEY (tenant_id, number, trunk_type)
        REFERENCES pbx.extensions (tenant_id, number, type) ON DELETE CASCADE,
    CONSTRAINT did_target_exists FOREIGN KEY (tenant_id, target_extension)
        REFERENCES pbx.extensions (tenant_id, number) ON DELETE CASCADE
);
CREATE INDEX trunk_dids_target ON pbx.trunk_dids (tenant_id, target_extension);

-- Fallback cycles. Locking the tenants rows makes two transactions that would each close half of a
-- cycle run one after the other, so the second one's check sees the first one's rows.
CREATE FUNCTION pbx.refuse_fallback_cycles() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    cyc record;
BEGIN
    PERFORM 1 FROM pbx.tenants WHERE id IN (SELECT DISTINCT tenant_id FROM new_rows) ORDER BY id FOR NO KEY UPDATE;
    WITH RECURSIVE walk(tenant_id, start, node, path) AS (
        SELECT n.tenant_id, n.number, n.fallback, ARRAY[n.number, n.fallback] FROM new_rows n
        UNION ALL
        SELECT w.tenant_id, w.start, f.fallback, w.path || f.fallback
        FROM walk w JOIN pbx.trunk_fallbacks f ON f.tenant_id = w.tenant_id AND f.number = w.node
        WHERE w.node <> w.start AND NOT (f.fallback = ANY (w.path[2:]))
    )
    SELECT tenant_id, start, path INTO cyc FROM walk WHERE node = start LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '%: fallback cycle % (rule: fallback trunks cannot form a cycle)',
            pbx.extension_label(cyc.tenant_id, cyc.start), array_to_string(cyc.path, ' -> ')
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER refuse_fallback_cycles_ins AFTER INSERT ON pbx.trunk_fallbacks
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION pbx.refuse_fallback_cycles();
CREATE TRIGGER refuse_fallback_cycles_upd AFTER UPDATE ON pbx.trunk_fallbacks
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION pbx.refuse_fallback_cycles();

-- A trunk used as a fallback, or an extension a DID rule maps to, cannot be deleted while the
-- tenant exists (the foreign keys cascade only for the tenant's own deletion).
CREATE FUNCTION pbx.refuse_referenced_trunk_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    user_number text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pbx.tenants WHERE id = OLD.tenant_id) THEN
        RETURN OLD;
    END IF;
    SELECT number INTO user_number FROM pbx.trunk_fallbacks
    WHERE tenant_id = OLD.tenant_id AND fallback = OLD.number AND number <> OLD.number LIMIT 1;
    IF user_number IS NULL THEN
        SELECT number INTO user_number FROM pbx.trunk_dids
        WHERE tenant_id = OLD.tenant_id AND target_extension = OLD.number AND number <> OLD.number LIMIT 1;
    END IF;
    IF user_number IS NOT NULL THEN
        RAISE EXCEPTION '%: still used by % (rule: a referenced extension cannot be deleted)',
            pbx.extension_label(OLD.tenant_id, OLD.number), pbx.extension_label(OLD.tenant_id, user_number)
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN OLD;
END $$;

CREATE TRIGGER refuse_referenced_trunk_delete BEFORE DELETE ON pbx.extensions
    FOR EACH ROW EXECUTE FUNCTION pbx.refuse_referenced_trunk_delete();

-- The routing change feed (sql/010_routing_notify.sql) covers the new tables too.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['tenant_settings', 'trunk_fallbacks', 'trunk_dids'] LOOP
        EXECUTE format('CREATE TRIGGER routing_change_ins AFTER INSERT ON pbx.%I
                        REFERENCING NEW TABLE AS new_rows
                        FOR EACH STATEMENT EXECUTE FUNCTION pbx.note_routing_change()', t);
        EXECUTE format('CREATE TRIGGER routing_change_upd AFTER UPDATE ON pbx.%I
                        REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
                        FOR EACH STATEMENT EXECUTE FUNCTION pbx.note_routing_change()', t);
        EXECUTE format('CREATE TRIGGER routing_change_del AFTER DELETE ON pbx.%I
                        REFERENCING OLD TABLE AS old_rows
                        FOR EACH STATEMENT EXECUTE FUNCTION pbx.note_routing_change()', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON pbx.%I TO pbx_tenant_admin', t);
        EXECUTE format('ALTER TABLE pbx.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_admin ON pbx.%I TO pbx_tenant_admin
                        USING (pbx.is_admin_of(tenant_id))', t);
    END LOOP;
END $$;

-- What routing reads of the above, in the shapes routing.model.directory_from_config reads, so a
-- loader adds keys to its JSON and nothing else:
--   routing_trunk_keys: merged into an extension's object (ring_timeout_ms, outbound, fallback, dids);
--   routing_settings:   a tenant's `settings` object ({} when nothing is set).
CREATE FUNCTION pbx.routing_trunk_keys(tenant bigint, num text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_strip_nulls(jsonb_build_object(
        'ring_timeout_ms', e.ring_timeout_ms,
        'outbound', CASE WHEN e.outbound_strip IS NOT NULL
                         THEN jsonb_build_object('strip', e.outbound_strip, 'prepend', e.outbound_prepend) END,
        'fallback', (SELECT jsonb_agg(f.fallback ORDER BY f.ordinal) FROM pbx.trunk_fallbacks f
                     WHERE f.tenant_id = e.tenant_id AND f.number = e.number),
        'dids', (SELECT jsonb_agg(jsonb_build_object(d.kind, d.match, 'to', d.target) ORDER BY d.ordinal)
                 FROM pbx.trunk_dids d WHERE d.tenant_id = e.tenant_id AND d.number = e.number)))
    FROM pbx.extensions e WHERE e.tenant_id = tenant AND e.number = num
$$;

CREATE FUNCTION pbx.routing_settings(tenant bigint) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT jsonb_strip_nulls(jsonb_build_object('ring_timeout_ms', s.ring_timeout_ms))
                     FROM pbx.tenant_settings s WHERE s.tenant_id = tenant), '{}')
$$;

-- The static contacts routing needs (an AOR's configured `contact` URIs, after inheritance, and
-- its qualify_frequency), per endpoint of a tenant, read from the flattened rows Asterisk reads:
-- {"aor": {"contact": [uri, ...], "qualify_frequency": "60"}}, the shape routing.model's
-- directory_from_config reads under a tenant's `endpoints` (merged already, so no templates).
-- `names` (endpoint names) limits the rows to a call's endpoints; NULL = every endpoint.
CREATE FUNCTION pbx.routing_static_contacts(tenant bigint, names text[] DEFAULT NULL)
RETURNS TABLE (endpoint text, config jsonb)
LANGUAGE sql STABLE AS $$
    SELECT o.name, jsonb_build_object('aor', jsonb_strip_nulls(jsonb_build_object(
        'contact', (SELECT jsonb_agg(replace(replace(x.v, '^3B', ';'), '^5E', '^') ORDER BY x.i)
                    FROM unnest(string_to_array(a.contact, ';')) WITH ORDINALITY AS x(v, i)),
        'qualify_frequency', a.qualify_frequency)))
    FROM pbx.rt_owner f
    JOIN pbx.objects o ON o.id = f.object_id
    JOIN pbx.rt_ps_aors a ON a.id = f.id
    WHERE f.view = 'ps_aors' AND o.tenant_id = tenant AND o.kind = 'endpoint' AND a.contact IS NOT NULL
      AND (names IS NULL OR o.name = ANY (names))
$$;

-- An AOR's static contacts are routing data too (devices of its endpoint), so a flattened AOR row
-- with a contact that comes or goes changes the routing of its tenant. The flush rewrites a changed
-- row as DELETE + INSERT, so both sides are looked at; rows are `name@domain`.
CREATE FUNCTION pbx.note_static_contact_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pbx, pg_temp AS $$
DECLARE
    ids bigint[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(DISTINCT t.id ORDER BY t.id) INTO ids
        FROM new_rows r JOIN pbx.tenants t ON t.domain = split_part(r.id, '@', 2) WHERE r.contact IS NOT NULL;
    ELSE
        SELECT array_agg(DISTINCT t.id ORDER BY t.id) INTO ids
        FROM old_rows r JOIN pbx.tenants t ON t.domain = split_part(r.id, '@', 2) WHERE r.contact IS NOT NULL;
    END IF;
    IF ids IS NOT NULL THEN
        PERFORM pbx.routing_changed(ids);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER routing_static_contact_ins AFTER INSERT ON pbx.rt_ps_aors
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION pbx.note_static_contact_change();
CREATE TRIGGER routing_static_contact_del AFTER DELETE ON pbx.rt_ps_aors
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION pbx.note_static_contact_change();
