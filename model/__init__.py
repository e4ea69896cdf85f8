"""The encoder-decoder Transformer and its decoding; imports torch only.

Import-light on purpose: `model.config` must load (and refuse bad values) without torch, so this file
imports nothing; import the parts directly.

    from model.config import ModelConfig          # the typed config; presets in conf/model/*.yaml
    from model.transformer import Transformer     # encode / decode / forward / inspect / new_cache
    from model.generation import generate         # greedy, beam search, sampling; KV-cached

    cfg = ModelConfig.from_name("tiny", vocab_size=V, pad_id=0, bos_id=1, eos_id=2)
    m = Transformer(cfg)
    logits = m(src, tgt)                          # (B, S), (B, T) -> (B, T, V); right-padded with pad_id
    out = generate(m, src, max_len=64, beam_size=4, length_penalty=0.6)   # list[list[int]]

Modules: `config` (ModelConfig), `layers` (embeddings, positions, norms, residuals, FFNs, attention),
`cache` (KV caches), `transformer` (the model), `generation` (decoding).
"""
