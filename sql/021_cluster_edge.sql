-- The cluster's SIP edge (issue #18): Kamailio's dispatcher reads its node list from the control
-- plane. A node with a SIP address is one the edge sends requests to; without one (a node reached
-- directly, the single-node stack) it is only pushed to.
--
-- Kamailio reads through views in a schema of its own, under a role that can read nothing else
-- (not the nodes' AMI secrets): its db_postgres driver does not quote table names, so the
-- dispatcher's `table_name` and the core's `version_table` name them schema-qualified.

ALTER TABLE pbx.nodes
    ADD COLUMN sip_host text,
    ADD COLUMN sip_port integer,
    ADD CONSTRAINT node_sip_addr_whole CHECK ((sip_host IS NULL) = (sip_port IS NULL)),
    ADD CONSTRAINT node_sip_host_nonempty CHECK (sip_host <> '' AND sip_host !~ '[\s;<>@]'),
    ADD CONSTRAINT node_sip_port_range CHECK (sip_port BETWEEN 1 AND 65535);

CREATE SCHEMA kamailio;

-- Kamailio 5.6 dispatcher table, version 4 (setid, destination, flags, priority, attrs). Set 1 is
-- the nodes; `duid` names the node in `dispatcher.list` and in the edge's logs. Columns are int4:
-- the module reads them as DB1_INT.
CREATE VIEW kamailio.dispatcher AS
SELECT n.id::integer AS id,
       1 AS setid,
       'sip:' || n.sip_host || ':' || n.sip_port AS destination,
       0 AS flags,
       0 AS priority,
       'duid=' || n.name AS attrs,
       n.name AS description
FROM pbx.nodes n
WHERE n.sip_host IS NOT NULL;

-- Kamailio checks a table's schema version in its `version` table before reading it, by the table
-- name as configured (schema-qualified here).
CREATE VIEW kamailio.version AS
SELECT v.table_name::varchar(64) AS table_name, v.table_version
FROM (VALUES ('kamailio.dispatcher', 4)) AS v(table_name, table_version);

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pbx_kamailio') THEN
        CREATE ROLE pbx_kamailio NOLOGIN;
    END IF;
END $$;

GRANT USAGE ON SCHEMA kamailio TO pbx_kamailio;
GRANT SELECT ON kamailio.dispatcher, kamailio.version TO pbx_kamailio;
