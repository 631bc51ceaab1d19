"""edgehook's pipeline: the worker and the jobs it runs."""
