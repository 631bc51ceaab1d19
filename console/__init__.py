"""The operator console: pages and a JSON API over the store, the audit chains and the model
registry (`edgehook console`, loopback :8092). Its own process; never imports torch."""
