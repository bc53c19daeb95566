"""Non-foundation baselines trained from scratch on the target data."""
