"""edgehook: W&B webhook automations on an edge device. This package is the face: the
`edgehook` command and the operator commands (init, doctor, tunnel, wandb setup, send-test)."""

__version__ = "0.1.0"
