"""Training: the loop, optimizer and schedule, checkpoints and exact resume, metrics and plots."""
