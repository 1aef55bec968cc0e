-- The change set of the caller's own transaction, for every role that may write configuration.
--
-- `pbxctl apply` reports what it changed by reading the outbox rows its transaction's flush wrote.
-- A tenant admin cannot read pbx.outbox (it holds every tenant's changes); this function returns
-- only the rows of the calling transaction, which are the caller's own writes, so a tenant admin
-- can apply a file of its tenants and get the same report as the operator.
CREATE FUNCTION pbx.own_change_set() RETURNS TABLE (op text, view text, object_id text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pbx, pg_temp AS $$
    SELECT o.op, o.view, o.object_id FROM pbx.outbox o WHERE o.xid = pg_current_xact_id() ORDER BY o.seq
$$;
REVOKE EXECUTE ON FUNCTION pbx.own_change_set() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pbx.own_change_set() TO pbx_tenant_admin;
