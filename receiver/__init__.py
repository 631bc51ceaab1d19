"""edgehook's receiver: the loopback HTTP endpoint that admits W&B webhook deliveries."""

__version__ = "0.1.0"
