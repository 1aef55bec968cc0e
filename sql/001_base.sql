-- Normalized configuration: tenants, PJSIP templates and endpoints, their options and parent links.
-- Templates and endpoints share one table ("objects") so that inheritance rule R treats them alike;
-- composite foreign keys that carry tenant_id make cross-tenant references impossible by construction.

CREATE SCHEMA IF NOT EXISTS pbx;

CREATE TABLE pbx.tenants (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name    text NOT NULL UNIQUE,
    domain  text NOT NULL UNIQUE,
    -- Bumped by every parent-link change of the tenant: the row lock serializes concurrent cycle checks
    -- (READ COMMITTED waits, REPEATABLE READ/SERIALIZABLE get a serialization failure).
    links_version bigint NOT NULL DEFAULT 0,
    CONSTRAINT tenant_name_pattern CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    CONSTRAINT tenant_domain_pattern CHECK (domain ~ '^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$')
);

CREATE TABLE pbx.objects (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  bigint NOT NULL REFERENCES pbx.tenants ON DELETE CASCADE,
    kind       text NOT NULL CHECK (kind IN ('template', 'endpoint')),
    name       text NOT NULL,
    -- The `transport` key of the declarative file: inherited like a scalar, written to ps_endpoints.
    transport  text,
    UNIQUE (tenant_id, kind, name),
    UNIQUE (tenant_id, id),
    UNIQUE (tenant_id, id, kind),
    -- SIP user part safe: no '@' (ids are name@domain), no ';' or '^' (realtime escaping), no '~'.
    CONSTRAINT object_name_pattern CHECK (name ~ '^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,62}$'),
    CONSTRAINT object_transport_pattern CHECK (transport IS NULL OR transport ~ '^[A-Za-z0-9_.-]+$')
);

-- Ordered parents: templates of a template, or the templates list of an endpoint.
CREATE TABLE pbx.object_parents (
    tenant_id    bigint NOT NULL,
    object_id    bigint NOT NULL,
    ordinal      integer NOT NULL CHECK (ordinal >= 0),
    parent_id    bigint NOT NULL,
    parent_kind  text NOT NULL DEFAULT 'template' CHECK (parent_kind = 'template'),
    PRIMARY KEY (object_id, ordinal),
    CONSTRAINT parent_listed_once UNIQUE (object_id, parent_id),
    FOREIGN KEY (tenant_id, object_id) REFERENCES pbx.objects (tenant_id, id) ON DELETE CASCADE,
    -- CASCADE only matters when a whole tenant goes: deleting a referenced template is refused by
    -- pbx.refuse_referenced_object_delete() with a message naming both objects.
    FOREIGN KEY (tenant_id, parent_id, parent_kind) REFERENCES pbx.objects (tenant_id, id, kind) ON DELETE CASCADE
);
CREATE INDEX object_parents_parent ON pbx.object_parents (parent_id);

-- One row per option of a section. `value` is always an array: one element for a scalar option,
-- the items in order for a multi-valued one.
CREATE TABLE pbx.object_options (
    object_id  bigint NOT NULL REFERENCES pbx.objects ON DELETE CASCADE,
    section    text NOT NULL CHECK (section IN ('endpoint', 'aor', 'auth', 'identify', 'registration', 'outbound_auth')),
    option     text NOT NULL,
    value      text[] NOT NULL,
    PRIMARY KEY (object_id, section, option)
);

-- Extra SIP domains a tenant answers to (exposed as ps_domain_aliases).
CREATE TABLE pbx.domain_aliases (
    tenant_id  bigint NOT NULL REFERENCES pbx.tenants ON DELETE CASCADE,
    alias      text NOT NULL UNIQUE,
    CONSTRAINT domain_alias_pattern CHECK (alias ~ '^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$')
);
