"""Training: datasets, the model, the quantization-aware recipe, the training loop."""
