"""Pure routing engine: model, stage 1 (and what a call can reach), stage 2, fork state machine,
simulator, explained trees, and the plain data of a live call's lookup (lookup.py). No I/O."""
