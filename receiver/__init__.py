"""The receiver: the loopback HTTP endpoint that admits W&B webhook deliveries, and nothing
else (no torch, no wandb, no jobs)."""
