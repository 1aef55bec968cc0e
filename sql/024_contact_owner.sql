-- A node never deletes (or overwrites) a contact that another node now refreshes (issue #18).
--
-- Why: the edge hashes a phone's AOR onto a node, so when a node leaves the edge's list (removed,
-- dead) and comes back, a phone moves: registered through node A, it refreshes through node B. The
-- contact id is the AOR and an md5 of the contact URI (res_pjsip/location.c), so B finds A's row
-- (its own astdb contact cache misses, the read falls through to Postgres), refreshes it and makes
-- it its own (reg_server = B). Node A's astdb still holds its copy, with A's older expiry. When that
-- copy expires, A deletes the contact by id: its expiry sweep (res_pjsip_registrar.c
-- check_expiration_thread reads `expiration_time <=` now from astdb first), or any read of the AOR's
-- contacts on A (location.c contact_expire deletes every expired contact it reads), also after A
-- restarts, astdb being on disk. Sorcery deletes from every wizard, so res_config_pgsql sends
-- `DELETE FROM ps_contacts WHERE id = '...'` and B's live row went with it: the phone was
-- unreachable until its next refresh through B re-created the row (update_or_create_on_update_miss).
--
-- The rule (pbx.contact_held_elsewhere, the one place it is written): a write made for node W must
-- not take away a row whose reg_server is another node and whose expiration_time is still ahead:
-- that node took the contact's latest REGISTER, and W's copy is older. Two writers follow it:
--   * the nodes: Asterisk writes through public.ps_node_contacts (asterisk_conf/extconfig.conf), a
--     view of ps_contacts whose DELETE applies the rule. W is the node the session belongs to,
--     from its application_name (`appname = pbx-node:<systemname>` in res_pgsql.conf; systemname
--     is what Asterisk writes as reg_server). A refused DELETE still reports its row as deleted:
--     Sorcery drops its cached copies (the stale astdb one) only when a non-caching wizard deleted
--     the object (main/sorcery.c ast_sorcery_delete), and after a restart the outage memory_cache
--     holds nothing, so this row count alone decides. A copy kept would be deleted again at every
--     sweep and hide the AOR's rows from every lookup on that node (astdb answers first);
--   * the contacts sync (sorcery_backend/contacts_sync.py) writing a node's astdb copy back: W is
--     the copy's reg_server. Its deletes of rows no node holds are not a node's and stay as they are.
-- Kept as before: a node's own unregister and expiry (reg_server is W), a row whose expiry has
-- passed (any node's sweep may delete it), and remove_existing across nodes: W's REGISTER adds its
-- new contact before it removes the AOR's excess ones (res_pjsip_registrar.c register_aor_core), so
-- a contact of the same AOR that W holds and that expires no earlier marks a replacement decided on
-- the current rows. A session that is no node (an operator, the routing tests) is not restricted.
-- Refreshes (UPDATE) are not restricted either: a node updates a row only when the phone's
-- REGISTER reaches it, and the latest REGISTER is the truth.

CREATE FUNCTION pbx.contact_writer() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT substring(current_setting('application_name') FROM '^pbx-node:(.*)$')
$$;

CREATE FUNCTION pbx.contact_held_elsewhere(c_id text, c_reg_server text, c_expiration bigint, writer text)
RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
DECLARE
    aor text := substring(c_id FROM '^(.*)\^3B@');  -- `<aor>;@<hash>`, realtime-encoded
BEGIN
    IF writer IS NULL OR coalesce(c_reg_server, '') = writer
            OR c_expiration IS NULL OR c_expiration <= extract(epoch FROM now()) THEN
        RETURN false;
    END IF;
    RETURN NOT EXISTS (
        SELECT 1 FROM public.ps_contacts o
        WHERE o.id LIKE replace(replace(replace(aor, '\', '\\'), '%', '\%'), '_', '\_') || '^3B@%'
          AND o.id <> c_id AND o.reg_server = writer AND o.expiration_time >= c_expiration);
END $$;

-- Asterisk's own columns, in ps_contacts' order: INSERT and UPDATE go through to the table as on
-- any simple view (HOT refreshes and the change triggers of sql/022 are the table's).
CREATE VIEW public.ps_node_contacts AS
SELECT "id", "uri", "expiration_time", "qualify_frequency", "outbound_proxy", "path", "user_agent",
       "qualify_timeout", "reg_server", "authenticate_qualify", "via_addr", "via_port", "call_id",
       "endpoint", "prune_on_boot", "qualify_2xx_only"
FROM public.ps_contacts;

-- The check and the delete are one statement: a refresh committed meanwhile is re-read (READ
-- COMMITTED re-evaluates the WHERE on the new row version) and wins. Definer's rights: the nodes'
-- role may use no object of schema pbx (sql/008).
CREATE FUNCTION pbx.node_contact_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pbx, pg_temp AS $$
BEGIN
    DELETE FROM public.ps_contacts p
    WHERE p.id = OLD.id
      AND NOT pbx.contact_held_elsewhere(p.id, p.reg_server, p.expiration_time, pbx.contact_writer());
    RETURN OLD;  -- counted either way: see above
END $$;

CREATE TRIGGER node_contact_delete INSTEAD OF DELETE ON public.ps_node_contacts
    FOR EACH ROW EXECUTE FUNCTION pbx.node_contact_delete();

GRANT SELECT, INSERT, UPDATE, DELETE ON public.ps_node_contacts TO pbx_asterisk;
