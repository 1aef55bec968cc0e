-- What a node refused: an AMI action it answered with an error (not a lost session). The pusher
-- records it per node and object, counts the change as delivered so that one bad object never
-- holds back the others, and clears the row when a later action for the same object succeeds.
-- `pbxctl push status` lists them.
CREATE TABLE pbx.push_refusals (
    node_id  bigint NOT NULL REFERENCES pbx.nodes ON DELETE CASCADE,
    object   text NOT NULL,    -- the Asterisk id, cache or dialplan context the action was for
    action   text NOT NULL,
    message  text NOT NULL,
    at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node_id, object)
);
