"""Routing data in Postgres: what a call can reach, read in one statement; every tenant kept
in memory, exact at every call; the call lookup of the ARI controller; explained trees drawn."""
