"""Pure domain layer: models, task state machine, errors. No I/O."""
