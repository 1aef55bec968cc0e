-- pbx.outbox keeps every change ever committed unless something deletes it. A row is needed while
-- some node still has it pending (pbx.push_pending), and by the change set of its own transaction
-- (read back before commit); after that only as recent history for an operator. The pusher calls
-- pbx.trim_outbox() on its idle checks with the retention it is configured with.
CREATE INDEX outbox_created_at ON pbx.outbox (created_at);
-- push_pending's key starts with node_id: a lookup by seq alone needs its own index.
CREATE INDEX push_pending_seq ON pbx.push_pending (seq);

CREATE FUNCTION pbx.trim_outbox(keep interval) RETURNS bigint
LANGUAGE sql SET search_path = pbx, pg_temp AS $$
    WITH gone AS (
        DELETE FROM pbx.outbox o
        WHERE o.created_at < now() - keep
          AND NOT EXISTS (SELECT 1 FROM pbx.push_pending q WHERE q.seq = o.seq)
        RETURNING 1
    )
    SELECT count(*) FROM gone
$$;
