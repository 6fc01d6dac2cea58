"""Training: the train state, the optimizer, the compiled step, checkpoints and the loop."""
