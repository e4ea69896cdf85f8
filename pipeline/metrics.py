"""Scores for translations: sacrebleu BLEU, chrF, TER, exact match and length ratio. No MLflow, no model.

Used by validation BLEU during training (pipeline/lightning_module.py) and by evaluation of a
registered model (pipeline/evaluate.py), so both report the same numbers for the same text.
"""

from __future__ import annotations

from typing import Any


def bleu_tokenizer(tgt_lang: str) -> str:
    """sacrebleu's tokenizer for the target language: 'zh' segments CJK characters, else '13a'."""
    return {"zh": "zh", "ja": "char", "ko": "char"}.get(tgt_lang, "13a")


def score(hypotheses: list[str], references: list[str], tgt_lang: str = "en") -> dict[str, Any]:
    """Corpus-level scores. `signature` holds sacrebleu's reproducibility signatures.

    >>> score(["a b c"], ["a b c"])["exact_match"]
    100.0
    """
    import sacrebleu

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not references:
        raise ValueError("no references to score against")
    bleu = sacrebleu.metrics.BLEU(tokenize=bleu_tokenizer(tgt_lang))
    chrf = sacrebleu.metrics.CHRF()
    ter = sacrebleu.metrics.TER(asian_support=tgt_lang in ("zh", "ja", "ko"))
    refs = [references]
    b, c, t = bleu.corpus_score(hypotheses, refs), chrf.corpus_score(hypotheses, refs), ter.corpus_score(hypotheses, refs)
    hyp_len = sum(len(h) for h in hypotheses)
    ref_len = sum(len(r) for r in references)
    return {
        "bleu": round(b.score, 4),
        "chrf": round(c.score, 4),
        "ter": round(t.score, 4),
        "exact_match": round(100.0 * sum(h.strip() == r.strip() for h, r in zip(hypotheses, references)) / len(references), 4),
        "length_ratio": round(hyp_len / max(ref_len, 1), 4),
        "n_sentences": len(references),
        "signature": {
            "bleu": str(bleu.get_signature()),
            "chrf": str(chrf.get_signature()),
            "ter": str(ter.get_signature()),
        },
    }
