-- Call records: one pbx.call_records row per call the ARI controller handled and one pbx.call_legs
-- row per channel it dialed for it (a device leg of the routing fork, a party dialed into the
-- conference, a transfer target). The controller writes them in batches after the call is over
-- (ari_app/controller/record_writer.py); nothing here is read on a call's path.
--
-- A call is known by its node (Asterisk's entity id, the asterisk_id of its ARI events) and the
-- caller's channel id there. tenant_id has no foreign key, as in pbx.audit: records outlive a
-- deleted tenant, and `tenant` keeps the name it had. Both are NULL for a call whose tenant was
-- never known (it arrived on no endpoint of ours).

CREATE TABLE pbx.call_records (
    node              text NOT NULL,
    call_id           text NOT NULL,
    tenant_id         bigint,
    tenant            text,
    caller            text NOT NULL,      -- the number the caller presented
    caller_name       text NOT NULL DEFAULT '',
    endpoint          text,               -- the endpoint the call arrived on (name@domain)
    called            text NOT NULL,      -- the number dialed
    did               text,               -- from a carrier: the number it sent (= called); else NULL
    routed_to         text,               -- the extension routed: what the DID rules made of `called`
    route             text NOT NULL,      -- '<kind> <number>' of the routing tree's root, or the refusal
    started_at        timestamptz NOT NULL,   -- the caller entered Stasis
    ring_at           timestamptz,            -- the first device was dialed
    answered_at       timestamptz,
    ended_at          timestamptz,            -- the last channel of the call was gone
    result            text NOT NULL,
    hangup_cause      integer,                -- Q.850 cause of the caller's channel
    answered_by       text,                   -- the channel id of the leg that answered
    transferred_from  text,
    transferred_to    text,
    PRIMARY KEY (node, call_id)
);
CREATE INDEX call_records_started_at ON pbx.call_records (started_at);
CREATE INDEX call_records_tenant_started_at ON pbx.call_records (tenant_id, started_at);

CREATE TABLE pbx.call_legs (
    node              text NOT NULL,
    call_id           text NOT NULL,
    channel_id        text NOT NULL,
    tenant_id         bigint,             -- the call's: row-level security needs no join
    kind              text NOT NULL,      -- leg (a device the routing fork rang) | party | transfer
    endpoint          text NOT NULL,      -- name@domain
    device            text,               -- the contact id rung
    extension         text,               -- the extension the device was rung for
    started_at        timestamptz NOT NULL,   -- dialed
    ringing_at        timestamptz,
    answered_at       timestamptz,
    ended_at          timestamptz,
    result            text NOT NULL,      -- answered | answered_elsewhere | cancelled | rejected | unavailable | failed
    hangup_cause      integer,
    transferred_from  text,
    transferred_to    text,
    PRIMARY KEY (node, call_id, channel_id),
    FOREIGN KEY (node, call_id) REFERENCES pbx.call_records ON DELETE CASCADE
);

-- Readable per tenant, like pbx.audit: a tenant admin sees its own tenants' calls and writes none.
GRANT SELECT ON pbx.call_records, pbx.call_legs TO pbx_tenant_admin;
ALTER TABLE pbx.call_records ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_admin ON pbx.call_records TO pbx_tenant_admin USING (pbx.is_admin_of(tenant_id));
ALTER TABLE pbx.call_legs ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_admin ON pbx.call_legs TO pbx_tenant_admin USING (pbx.is_admin_of(tenant_id));

-- Retention: `pbxctl serve`'s pusher calls it on its idle checks with PBX_CALL_RECORDS_KEEP_S,
-- as it trims the outbox and the audit trail. Legs go with their call.
CREATE FUNCTION pbx.trim_call_records(keep interval) RETURNS bigint
LANGUAGE sql SET search_path = pbx, pg_temp AS $$
    WITH gone AS (DELETE FROM pbx.call_records WHERE started_at < now() - keep RETURNING 1)
    SELECT count(*) FROM gone
$$;
