"""The node's loopback HTTP API, served by `pbxctl serve`: the routing decision of a call (route),
the ARI controller's live calls and metrics (controller)."""
