"""Models: the int8 file format, the registry, signing, inference."""
