"""What training and serving both stand on: the architectures and input normalisation
(model.py), the quantized engine and the QAT/int8 conversion (quantize.py), the int8 model
as plain tensors for the model file (int8.py) and image fitting (images.py). It imports
neither pipeline.training nor pipeline.models."""
