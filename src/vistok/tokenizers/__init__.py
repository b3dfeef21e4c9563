"""Tokenizer families, one module each. They register themselves with :mod:`vistok.registry`."""
