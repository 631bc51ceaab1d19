"""The core: config, errors, the event model, rules, names, credentials, the store and the
audit log. What the receiver, the pipeline and the command line stand on; it imports none of
them, nor torch, wandb or numpy."""
