-- The routing tree (contract section 2, `extensions`): one row per extension number of a tenant.
-- Every reference (forward target, rank member, endpoint) is a composite foreign key that carries
-- tenant_id, so a reference can only ever point inside the same tenant.

CREATE TABLE pbx.extensions (
    tenant_id        bigint NOT NULL REFERENCES pbx.tenants ON DELETE CASCADE,
    number           text NOT NULL,
    type             text NOT NULL CHECK (type IN ('simple', 'multiring', 'group', 'external', 'trunk')),
    name             text,
    short_name       text,
    call_waiting     boolean NOT NULL DEFAULT true,
    dialout          boolean NOT NULL DEFAULT false,
    outgoing_number  text,
    outgoing_name    text,
    ringback         text,
    language         text,
    forward_mode     text CHECK (forward_mode IN ('always', 'busy', 'unavailable')),
    forward_to       text,
    forward_delay_ms integer CHECK (forward_delay_ms >= 0),
    PRIMARY KEY (tenant_id, number),
    CONSTRAINT extension_number_pattern CHECK (number ~ '^[0-9A-Za-z*#+]{1,40}$'),
    CONSTRAINT extension_forward_complete CHECK ((forward_mode IS NULL) = (forward_to IS NULL)),
    CONSTRAINT extension_forward_delay_only_always CHECK (forward_delay_ms IS NULL OR forward_delay_ms = 0
                                                        OR forward_mode = 'always'),
    -- CASCADE only matters when the tenant goes; see pbx.refuse_referenced_extension_delete().
    FOREIGN KEY (tenant_id, forward_to) REFERENCES pbx.extensions (tenant_id, number) ON DELETE CASCADE
);

CREATE TABLE pbx.extension_endpoints (
    tenant_id      bigint NOT NULL,
    number         text NOT NULL,
    ordinal        integer NOT NULL CHECK (ordinal >= 0),
    endpoint_id    bigint NOT NULL,
    endpoint_kind  text NOT NULL DEFAULT 'endpoint' CHECK (endpoint_kind = 'endpoint'),
    PRIMARY KEY (tenant_id, number, ordinal),
    CONSTRAINT extension_endpoint_listed_once UNIQUE (tenant_id, number, endpoint_id),
    FOREIGN KEY (tenant_id, number) REFERENCES pbx.extensions ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, endpoint_id, endpoint_kind) REFERENCES pbx.objects (tenant_id, id, kind) ON DELETE CASCADE
);
CREATE INDEX extension_endpoints_endpoint ON pbx.extension_endpoints (endpoint_id);

CREATE TABLE pbx.ranks (
    tenant_id  bigint NOT NULL,
    number     text NOT NULL,
    ordinal    integer NOT NULL CHECK (ordinal >= 0),
    mode       text NOT NULL CHECK (mode IN ('default', 'next', 'drop')),
    delay_ms   integer NOT NULL DEFAULT 0 CHECK (delay_ms >= 0),
    PRIMARY KEY (tenant_id, number, ordinal),
    FOREIGN KEY (tenant_id, number) REFERENCES pbx.extensions ON DELETE CASCADE
);

CREATE TABLE pbx.rank_members (
    tenant_id     bigint NOT NULL,
    number        text NOT NULL,
    rank_ordinal  integer NOT NULL,
    ordinal       integer NOT NULL CHECK (ordinal >= 0),
    member        text NOT NULL,
    active        boolean NOT NULL DEFAULT true,
    PRIMARY KEY (tenant_id, number, rank_ordinal, ordinal),
    CONSTRAINT rank_member_listed_once UNIQUE (tenant_id, number, rank_ordinal, member),
    FOREIGN KEY (tenant_id, number, rank_ordinal) REFERENCES pbx.ranks ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, member) REFERENCES pbx.extensions (tenant_id, number) ON DELETE CASCADE
);
CREATE INDEX rank_members_member ON pbx.rank_members (tenant_id, member);
