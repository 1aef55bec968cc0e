-- Change feed of the registered contacts, for the routing service's in-memory contact set
-- (routing_store/contacts.py): a call no longer probes ps_contacts for every endpoint it can reach.
--
-- What routing reads of a contact is (endpoint, id, uri); path travels with the address. Every
-- transaction that makes a contact appear, disappear, or changes one of those columns bumps
-- pbx.contacts_version and sends NOTIFY pbx_contacts with the change and its version number, in
-- the same transaction. A REGISTER refresh (Asterisk's UPDATE of the row that changes
-- expiration_time and nothing routing reads) fires nothing: the WHEN clause is evaluated in C,
-- before any function is called.
--   * The version is what keeps the memory exact: the call's one statement reads it with the
--     routing version, and the contact set is used only when it was built at exactly that version
--     (else that call probes ps_contacts as before). A missed NOTIFY shows as a gap in the numbers
--     and makes the listener read the whole set again.
--   * Versions are consecutive in commit order: the bump locks the one version row until commit.
--     The bump is a deferred trigger, so that lock is the transaction's last: a transaction holding
--     it waits for no row lock (no deadlock with Asterisk's single-row statements).
--   * ps_contacts is unlogged (sql/011) and so is the version row: a crash empties both. The next
--     bump recreates the row with a new epoch, so a contact set from before the crash never
--     matches again.
-- Covers Asterisk (res_config_pgsql's INSERT/UPDATE/DELETE by id) and the contacts sync's upserts
-- (INSERT ... ON CONFLICT DO UPDATE fires the insert or the update trigger per row).

CREATE SEQUENCE pbx.contacts_epoch;

CREATE UNLOGGED TABLE pbx.contacts_version (
    one      boolean PRIMARY KEY DEFAULT true CHECK (one),
    epoch    bigint NOT NULL,
    version  bigint NOT NULL
) WITH (fillfactor = 10);  -- every bump is a heap-only update of the one row
INSERT INTO pbx.contacts_version (epoch, version) VALUES (nextval('pbx.contacts_epoch'), 0);

-- The next version (row locked until commit); a new epoch when the row is gone (crash, truncate).
CREATE FUNCTION pbx.contacts_bump() RETURNS pbx.contacts_version
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pbx, pg_temp AS $$
DECLARE
    r pbx.contacts_version;
BEGIN
    UPDATE pbx.contacts_version SET version = version + 1 RETURNING * INTO r;
    IF NOT FOUND THEN
        INSERT INTO pbx.contacts_version AS c (epoch, version) VALUES (nextval('pbx.contacts_epoch'), 1)
        ON CONFLICT (one) DO UPDATE SET version = c.version + 1
        RETURNING * INTO r;
    END IF;
    RETURN r;
END $$;
REVOKE EXECUTE ON FUNCTION pbx.contacts_bump() FROM PUBLIC;

-- Payload: {"e": epoch, "v": version, "del": [endpoint, id] | null, "add": [endpoint, id, uri] | null}.
CREATE FUNCTION pbx.note_contact_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pbx, pg_temp AS $$
DECLARE
    r pbx.contacts_version := pbx.contacts_bump();
BEGIN
    PERFORM pg_notify('pbx_contacts', json_build_object(
        'e', r.epoch, 'v', r.version,
        'del', CASE WHEN TG_OP <> 'INSERT' THEN json_build_array(OLD.endpoint, OLD.id) END,
        'add', CASE WHEN TG_OP <> 'DELETE' THEN json_build_array(NEW.endpoint, NEW.id, NEW.uri) END)::text);
    RETURN NULL;
END $$;

CREATE FUNCTION pbx.note_contacts_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pbx, pg_temp AS $$
DECLARE
    r pbx.contacts_version := pbx.contacts_bump();
BEGIN
    PERFORM pg_notify('pbx_contacts', json_build_object('e', r.epoch, 'v', r.version, 'reset', true)::text);
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER contacts_change_ins AFTER INSERT ON public.ps_contacts
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION pbx.note_contact_change();
CREATE CONSTRAINT TRIGGER contacts_change_del AFTER DELETE ON public.ps_contacts
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION pbx.note_contact_change();
CREATE CONSTRAINT TRIGGER contacts_change_upd AFTER UPDATE ON public.ps_contacts
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN ((OLD.id, OLD.endpoint, OLD.uri, OLD.path) IS DISTINCT FROM (NEW.id, NEW.endpoint, NEW.uri, NEW.path))
    EXECUTE FUNCTION pbx.note_contact_change();
CREATE TRIGGER contacts_change_truncate AFTER TRUNCATE ON public.ps_contacts
    FOR EACH STATEMENT EXECUTE FUNCTION pbx.note_contacts_truncate();
