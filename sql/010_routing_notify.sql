-- Change feed of the routing data, for the in-memory directory cache of the routing service
-- (sorcery_backend/routing_cache.py).
--
-- Every statement that changes what routing reads for a tenant (extensions, their endpoint links,
-- ranks, rank members, an endpoint's name, the tenant's name or domain) bumps that tenant's
-- pbx.routing_versions row and sends NOTIFY pbx_routing '<tenant id>', in the same transaction.
--   * The version is what makes the cache exact: every call compares it, in the same statement that
--     reads the registered contacts, with the version its cached snapshot was loaded at, so a call
--     never routes on data older than the last commit before that statement.
--   * The NOTIFY only moves the reload off the call path (the listener drops and reloads the tenant).
-- The bump takes the version row's lock until commit, so two transactions editing the routing of
-- the same tenant serialize (rows are locked in tenant id order within a statement).

CREATE TABLE pbx.routing_versions (
    tenant_id  bigint PRIMARY KEY REFERENCES pbx.tenants ON DELETE CASCADE,
    version    bigint NOT NULL   -- a missing row is version 0
);

CREATE FUNCTION pbx.routing_changed(tenant_ids bigint[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pbx, pg_temp AS $$
DECLARE
    t bigint;
BEGIN
    -- Reading pbx.tenants skips a tenant deleted by this very transaction (its extensions are
    -- going by cascade): inserting its version row would violate the foreign key.
    INSERT INTO pbx.routing_versions AS v (tenant_id, version)
    SELECT id, 1 FROM pbx.tenants WHERE id = ANY (tenant_ids) ORDER BY id
    ON CONFLICT (tenant_id) DO UPDATE SET version = v.version + 1;
    FOREACH t IN ARRAY tenant_ids LOOP
        -- Identical payloads within a transaction are delivered once.
        PERFORM pg_notify('pbx_routing', t::text);
    END LOOP;
END $$;

-- For the tables whose rows carry tenant_id.
CREATE FUNCTION pbx.note_routing_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pbx, pg_temp AS $$
DECLARE
    ids bigint[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(DISTINCT tenant_id ORDER BY tenant_id) INTO ids FROM new_rows;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(DISTINCT tenant_id ORDER BY tenant_id) INTO ids FROM old_rows;
    ELSE
        SELECT array_agg(DISTINCT tenant_id ORDER BY tenant_id) INTO ids
        FROM (SELECT tenant_id FROM new_rows UNION ALL SELECT tenant_id FROM old_rows) x;
    END IF;
    -- Cascaded deletes run one statement per parent row, most of them empty.
    IF ids IS NOT NULL THEN
        PERFORM pbx.routing_changed(ids);
    END IF;
    RETURN NULL;
END $$;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['extensions', 'extension_endpoints', 'ranks', 'rank_members'] LOOP
        EXECUTE format('CREATE TRIGGER routing_change_ins AFTER INSERT ON pbx.%I
                        REFERENCING NEW TABLE AS new_rows
                        FOR EACH STATEMENT EXECUTE FUNCTION pbx.note_routing_change()', t);
        EXECUTE format('CREATE TRIGGER routing_change_upd AFTER UPDATE ON pbx.%I
                        REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
                        FOR EACH STATEMENT EXECUTE FUNCTION pbx.note_routing_change()', t);
        EXECUTE format('CREATE TRIGGER routing_change_del AFTER DELETE ON pbx.%I
                        REFERENCING OLD TABLE AS old_rows
                        FOR EACH STATEMENT EXECUTE FUNCTION pbx.note_routing_change()', t);
    END LOOP;
END $$;

-- Routing names endpoints (extension -> endpoint links hold ids), so a rename changes it. A deleted
-- endpoint takes its links with it, which the extension_endpoints trigger sees.
CREATE FUNCTION pbx.note_endpoint_rename() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pbx, pg_temp AS $$
DECLARE
    ids bigint[];
BEGIN
    SELECT array_agg(DISTINCT n.tenant_id ORDER BY n.tenant_id) INTO ids
    FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE n.kind = 'endpoint' AND (n.name, n.tenant_id) IS DISTINCT FROM (o.name, o.tenant_id);
    IF ids IS NOT NULL THEN
        PERFORM pbx.routing_changed(ids);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER routing_endpoint_rename AFTER UPDATE ON pbx.objects
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pbx.note_endpoint_rename();

-- The tenant's name is how calls name it, its domain is half of every endpoint id in ps_contacts.
-- (The links_version bump of every parent-link change must not invalidate routing.)
CREATE FUNCTION pbx.note_tenant_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pbx, pg_temp AS $$
DECLARE
    ids bigint[];
BEGIN
    IF TG_OP = 'DELETE' THEN
        SELECT array_agg(id ORDER BY id) INTO ids FROM old_rows;
    ELSE
        SELECT array_agg(n.id ORDER BY n.id) INTO ids
        FROM new_rows n JOIN old_rows o ON o.id = n.id
        WHERE (n.name, n.domain) IS DISTINCT FROM (o.name, o.domain);
    END IF;
    IF ids IS NOT NULL THEN
        PERFORM pbx.routing_changed(ids);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER routing_tenant_upd AFTER UPDATE ON pbx.tenants
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pbx.note_tenant_change();
CREATE TRIGGER routing_tenant_del AFTER DELETE ON pbx.tenants
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pbx.note_tenant_change();
