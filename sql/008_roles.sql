-- Roles. Group roles are cluster-wide, so they are created only when missing; login roles are the
-- operator's (the dev stack makes `asterisk` a member of pbx_asterisk).
--   pbx_asterisk      what an Asterisk node needs: read the realtime views, write ps_contacts.
--   pbx_tenant_admin  admin SQL confined to the tenants listed for the role in pbx.tenant_admins
--                     (row-level security on every base table).

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pbx_asterisk') THEN
        CREATE ROLE pbx_asterisk NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pbx_tenant_admin') THEN
        CREATE ROLE pbx_tenant_admin NOLOGIN;
    END IF;
END $$;

GRANT USAGE ON SCHEMA public TO pbx_asterisk;
GRANT SELECT ON public.ps_endpoints, public.ps_aors, public.ps_auths, public.ps_endpoint_id_ips,
                public.ps_registrations, public.ps_domain_aliases TO pbx_asterisk;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.ps_contacts TO pbx_asterisk;

CREATE TABLE pbx.tenant_admins (
    role_name  name NOT NULL,
    tenant_id  bigint NOT NULL REFERENCES pbx.tenants ON DELETE CASCADE,
    PRIMARY KEY (role_name, tenant_id)
);

-- Not SECURITY DEFINER on purpose: pg_has_role must judge the caller, not the owner.
CREATE FUNCTION pbx.is_admin_of(tenant bigint) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM pbx.tenant_admins a
                   WHERE a.tenant_id = tenant AND pg_has_role(a.role_name, 'MEMBER'))
$$;

CREATE FUNCTION pbx.grant_tenant_admin(tenant_name text, role_name name) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pbx.tenant_admins (role_name, tenant_id)
    SELECT role_name, id FROM pbx.tenants WHERE name = tenant_name
    ON CONFLICT DO NOTHING;
    IF NOT FOUND AND NOT EXISTS (SELECT 1 FROM pbx.tenants WHERE name = tenant_name) THEN
        RAISE EXCEPTION 'tenant %: unknown tenant (rule: admin roles are granted on existing tenants)', tenant_name;
    END IF;
    EXECUTE format('GRANT pbx_tenant_admin TO %I', role_name);
END $$;

GRANT USAGE ON SCHEMA pbx TO pbx_tenant_admin;
GRANT SELECT ON pbx.tenant_admins, pbx.pjsip_options TO pbx_tenant_admin;
GRANT SELECT, UPDATE ON pbx.tenants TO pbx_tenant_admin;
GRANT SELECT, INSERT, UPDATE, DELETE ON pbx.objects, pbx.object_parents, pbx.object_options,
    pbx.domain_aliases, pbx.extensions, pbx.extension_endpoints, pbx.ranks, pbx.rank_members
    TO pbx_tenant_admin;
GRANT SELECT ON pbx.rt_ps_endpoints, pbx.rt_ps_aors, pbx.rt_ps_auths, pbx.rt_ps_endpoint_id_ips,
    pbx.rt_ps_registrations TO pbx_tenant_admin;

ALTER TABLE pbx.tenants ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_admin ON pbx.tenants TO pbx_tenant_admin USING (pbx.is_admin_of(id));

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['objects', 'object_parents', 'domain_aliases', 'extensions',
                             'extension_endpoints', 'ranks', 'rank_members'] LOOP
        EXECUTE format('ALTER TABLE pbx.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_admin ON pbx.%I TO pbx_tenant_admin
                        USING (pbx.is_admin_of(tenant_id))', t);
    END LOOP;
    FOREACH t IN ARRAY ARRAY['object_options', 'rt_ps_endpoints', 'rt_ps_aors', 'rt_ps_auths',
                             'rt_ps_endpoint_id_ips', 'rt_ps_registrations'] LOOP
        EXECUTE format('ALTER TABLE pbx.%I ENABLE ROW LEVEL SECURITY', t);
        -- objects is itself filtered by RLS, so this sees only the role's own tenants' objects.
        EXECUTE format('CREATE POLICY tenant_admin ON pbx.%I TO pbx_tenant_admin
                        USING (EXISTS (SELECT 1 FROM pbx.objects o WHERE o.id = object_id))', t);
    END LOOP;
END $$;
