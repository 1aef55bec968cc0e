-- Carriers calling in through the cluster's edge (issue #18's follow-up).
--
-- A node identifies a carrier by the source address of its INVITE (an identify `match`). Through
-- the edge every request comes from the edge's address, so the edge does that match instead, on
-- the networks the fences already keep (pbx.identify_networks: never overlapping, so a source
-- has at most one carrier), and tells the node which carrier it is in a header:
--
--     X-PBX-Carrier: <edge token> <endpoint id>
--
-- The node matches it with the identify's `match_header`, which Asterisk reads through the view
-- public.ps_node_endpoint_id_ips (asterisk_conf/extconfig.conf) and nobody else sees: exports and
-- the flattened rows stay as the operator wrote them. The token is this database's own secret
-- (pbx.edge_token, made at migration): the edge drops any X-PBX-Carrier a request arrives with,
-- and a caller that reaches a node directly cannot name a carrier without the token. An identify
-- with a `match_header` of its own keeps it (and is not reached through the edge).

CREATE TABLE pbx.edge_token (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- gen_random_uuid(): 122 random bits from the server's strong source; two of them.
    token text NOT NULL DEFAULT replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '')
);
INSERT INTO pbx.edge_token DEFAULT VALUES;

CREATE VIEW public.ps_node_endpoint_id_ips AS
SELECT i.id,
       i.endpoint,
       i.match,
       i.srv_lookups,
       coalesce(i.match_header,
                CASE WHEN i.match IS NOT NULL AND i.id NOT LIKE '~%'
                     THEN 'X-PBX-Carrier: ' || t.token || ' ' || i.endpoint END) AS match_header,
       i.match_request_uri
FROM public.ps_endpoint_id_ips i CROSS JOIN pbx.edge_token t;

GRANT SELECT ON public.ps_node_endpoint_id_ips TO pbx_asterisk;

-- What the edge reads: a source network, and the header value that names its carrier.
CREATE VIEW kamailio.carriers AS
SELECT n.net, t.token || ' ' || i.endpoint AS carrier
FROM pbx.identify_networks n
JOIN public.ps_endpoint_id_ips i ON i.id = n.id
CROSS JOIN pbx.edge_token t
WHERE i.match_header IS NULL;

GRANT SELECT ON kamailio.carriers TO pbx_kamailio;
