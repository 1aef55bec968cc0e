-- A REGISTER refresh is one UPDATE of ps_contacts (the node's astdb contact cache answers the
-- read, see asterisk_conf/sorcery.conf). It changes expiration_time, which alembic's
-- ps_contacts_qualifyfreq_exp indexes: every refresh then wrote a new tuple into all four indexes.
-- Without that index no column a refresh changes is indexed, and with room left on each page the
-- UPDATE is a heap-only (HOT) update. The index served only the registrar's expiry sweep (every
-- contact_expiration_check_interval, 30 s by default; a scan of the table instead).
DROP INDEX IF EXISTS public.ps_contacts_qualifyfreq_exp;
ALTER TABLE public.ps_contacts SET (fillfactor = 50);
-- Contacts are soft state that every phone re-sends at each refresh, and every node keeps its own in
-- astdb: after a Postgres crash the table comes back empty and each row is re-created on its
-- contact's next refresh (update_or_create_on_update_miss in asterisk_conf/sorcery.conf). Not
-- logging it saves the WAL record of every REGISTER.
ALTER TABLE public.ps_contacts SET UNLOGGED;
