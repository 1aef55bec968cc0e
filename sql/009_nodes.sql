-- Asterisk nodes and per-node delivery of the change feed (pbx.outbox) by the pusher.
--
-- Delivery is tracked as one pending row per (node, outbox row), written by a trigger on the outbox
-- in the admin's own transaction. A seq cursor would not do: outbox seqs are allocated before
-- commit, so a transaction can commit a lower seq after a higher one was already delivered.

CREATE TABLE pbx.nodes (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    ami_host    text NOT NULL,
    ami_port    integer NOT NULL,
    ami_user    text NOT NULL,
    ami_secret  text NOT NULL,
    added_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT node_name_pattern CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
    CONSTRAINT node_ami_port_range CHECK (ami_port BETWEEN 1 AND 65535),
    CONSTRAINT node_ami_host_nonempty CHECK (ami_host <> ''),
    CONSTRAINT node_ami_user_nonempty CHECK (ami_user <> '')
);

-- What the pusher knows about each node; written by the pusher only.
CREATE TABLE pbx.node_state (
    node_id           bigint PRIMARY KEY REFERENCES pbx.nodes ON DELETE CASCADE,
    -- Asterisk's startup time as AMI CoreStatus reports it. NULL: never reached, so the node's
    -- caches may hold anything and its first connection expires them whole.
    boot_id           text,
    connected         boolean NOT NULL DEFAULT false,
    last_delivery_at  timestamptz,
    last_error        text,
    last_error_at     timestamptz,
    actions_sent      bigint NOT NULL DEFAULT 0,   -- AMI cache actions that succeeded
    rows_delivered    bigint NOT NULL DEFAULT 0    -- outbox rows they covered (coalesced)
);

CREATE TABLE pbx.push_pending (
    node_id  bigint NOT NULL REFERENCES pbx.nodes ON DELETE CASCADE,
    seq      bigint NOT NULL,
    PRIMARY KEY (node_id, seq)
);

CREATE FUNCTION pbx.queue_push() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pbx, pg_temp AS $$
BEGIN
    INSERT INTO pbx.push_pending (node_id, seq) SELECT n.id, o.seq FROM new_rows o CROSS JOIN pbx.nodes n;
    RETURN NULL;
END $$;

CREATE TRIGGER queue_push AFTER INSERT ON pbx.outbox
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION pbx.queue_push();

-- The row that keeps the identify cache filled (see sql/013) was inserted here; on the tables as
-- sql/006 creates them (object_id NOT NULL) that INSERT fails, so sql/013 inserts it.
