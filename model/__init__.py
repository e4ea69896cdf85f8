"""The encoder-decoder Transformer and its decoding; imports torch only.

Import-light on purpose: `model.config` must load (and refuse bad values) without torch, so import
the parts directly: `from model.transformer import Transformer`, `from model.generation import generate`.
"""
