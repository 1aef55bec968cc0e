"""Pure routing engine: model, stage 1, stage 2, fork state machine, simulator. No I/O."""
