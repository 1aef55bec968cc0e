-- Cluster-wide in-use state (issue #18): each node's ARI controller opens a read-only event feed on
-- every other node's ARI (ari_app/controller/peers.py) to know which devices are on a call there.
-- A node with an ARI address is one the other controllers watch; without one (the single-node
-- stack, a node added before this column) it is not watched. The ARI user and password are the
-- cluster's one pair (PBX_ARI_USER / PBX_ARI_PASSWORD), so none is stored here.

ALTER TABLE pbx.nodes
    ADD COLUMN ari_host text,
    ADD COLUMN ari_port integer,
    ADD CONSTRAINT node_ari_addr_whole CHECK ((ari_host IS NULL) = (ari_port IS NULL)),
    ADD CONSTRAINT node_ari_host_nonempty CHECK (ari_host <> '' AND ari_host !~ '[\s/?#@]'),
    ADD CONSTRAINT node_ari_port_range CHECK (ari_port BETWEEN 1 AND 65535);
