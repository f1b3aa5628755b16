"""Quantization errors: each message is one line that says what failed and what to do."""


class QuantError(Exception):
    """The model cannot be quantized as asked; the input model is left unchanged."""
