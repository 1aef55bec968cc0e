-- A node's astdb copy of a contact goes stale when another node replaces, removes or takes over the
-- contact (issue #18): the contact sync evicts that copy from the node at once.
--
-- Why: a node reads an AOR's contacts from its astdb first, and Postgres only when astdb holds none
-- of them (asterisk_conf/sorcery.conf; main/sorcery.c ast_sorcery_retrieve_by_prefix stops at a
-- caching wizard that found any). So a copy left behind hides the AOR's real rows from that node.
-- It happens whenever a phone moves nodes: the edge sent its REGISTER elsewhere (its node was
-- removed, dead, or slower than the edge's NODE_FR_MS to answer) and the phone comes from a new
-- address (another port: a restart, a NAT rebinding), so its new contact is a new id and the new
-- node's `remove_existing` deletes the old row. The old node's copy stays, with the old address,
-- until its own expiry (up to an hour): every call entering that node for the phone was sent to an
-- address where nobody listens, while every other node rang the phone. The old node cannot delete
-- the copy itself when it tries (`remove_existing` on its next REGISTER of the phone): Sorcery
-- drops a cached copy only when a non-caching wizard deleted the object, and the row is gone.
--
-- Which copy is stale, and where (the node named by the row's reg_server, which holds the copy):
--   * a row a node deletes while another node is its reg_server: that node's copy (an unregister
--     or a replacement made through another node). A node's own deletes are its own Asterisk's, and
--     an operator's (or the contacts sync's) delete names no node: the sync restores what a node
--     holds and Postgres lost, so that copy is the journal, not stale;
--   * a row whose reg_server changes: the former holder's copy (the same contact refreshed through
--     another node; its address is the same, but a later change through the new node would leave
--     the copy behind unnamed).
-- Payload: {"node": <reg_server of the old row>, "id": <contact id, realtime-encoded>}. A missed
-- notification (the sync down, the node unreachable) is caught up by the sync's own comparison
-- (sorcery_backend/contacts_sync.py plan_evictions).

CREATE FUNCTION pbx.note_stale_contact_copy() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pbx, pg_temp AS $$
BEGIN
    IF coalesce(OLD.reg_server, '') = '' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' AND OLD.reg_server IS NOT DISTINCT FROM coalesce(pbx.contact_writer(), OLD.reg_server) THEN
        RETURN NULL;  -- its own node's delete, or no node's
    END IF;
    PERFORM pg_notify('pbx_contact_copies', json_build_object('node', OLD.reg_server, 'id', OLD.id)::text);
    RETURN NULL;
END $$;
REVOKE EXECUTE ON FUNCTION pbx.note_stale_contact_copy() FROM PUBLIC;

-- A refresh (expiration_time only) fires nothing: the WHEN clause is evaluated in C.
CREATE TRIGGER contact_copy_moved AFTER UPDATE ON public.ps_contacts
    FOR EACH ROW WHEN (OLD.reg_server IS DISTINCT FROM NEW.reg_server)
    EXECUTE FUNCTION pbx.note_stale_contact_copy();
CREATE TRIGGER contact_copy_removed AFTER DELETE ON public.ps_contacts
    FOR EACH ROW EXECUTE FUNCTION pbx.note_stale_contact_copy();
