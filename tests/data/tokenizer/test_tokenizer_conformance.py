"""Conformance: HF tokenizers reads our tokenizer.json and trains the same merges; GPT-2 ids equal tiktoken's;
1 Ray task and 4 Ray tasks give identical merges."""

from __future__ import annotations

import json

import pytest

from data.tokenizer import TokenizerConfig, load_tokenizer, train_tokenizer

tokenizers = pytest.importorskip("tokenizers", reason="Hugging Face tokenizers (a dev dependency) is not installed")


@pytest.fixture(scope="module")
def one_mb_text(make_text) -> str:
    return make_text(1_050_000, seed=7)


@pytest.mark.parametrize("pattern", ["gpt2", "cl100k"])
def test_hf_loads_our_tokenizer_json_and_encodes_identically(small_tok, corpus_file, tmp_path, one_mb_text, pattern):
    tok = small_tok if pattern == "gpt2" else train_tokenizer(
        TokenizerConfig(vocab_size=600, pattern=pattern, num_workers=1), [str(corpus_file)]
    )
    tok.save(tmp_path)
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    text = one_mb_text + "a" * 1000 + " " + "中" * 700 + "\n"  # long pre-tokens, cut in both
    assert len(text.encode("utf-8")) >= 1_000_000
    ours = tok.encode(text)
    theirs = hf.encode(text, add_special_tokens=False).ids
    if ours != theirs:
        k = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
        pytest.fail(f"first difference at id {k}: ours {ours[k - 3:k + 3]} HF {theirs[k - 3:k + 3]}")
    assert hf.decode(ours, skip_special_tokens=False) == text
    assert hf.get_vocab_size() == tok.vocab_size


def hf_train(lines, vocab_size, specials, min_frequency=2):
    from tokenizers import models, pre_tokenizers, trainers

    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(lines, trainer)
    model = json.loads(hf.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return merges, model["vocab"]


@pytest.mark.parametrize("vocab_size,min_frequency", [(1500, 2), (3000, 1)])
def test_merges_equal_hf_trainer(tmp_path, vocab_size, min_frequency, make_text):
    text = make_text(400_000, seed=3)
    p = tmp_path / "c.txt"
    p.write_text(text, encoding="utf-8")
    cfg = TokenizerConfig(vocab_size=vocab_size, min_frequency=min_frequency, num_workers=1, max_pretoken_chars=0)
    ours = train_tokenizer(cfg, [str(p)])
    merges, vocab = hf_train(text.split("\n")[:-1], vocab_size, cfg.special_tokens, min_frequency)
    for k, (a, b) in enumerate(zip(ours.merges, merges)):
        assert a == b, f"first differing merge is number {k}: ours {a}, HF {b}"
    assert len(ours.merges) == len(merges)
    assert vocab == {t: i for i, t in enumerate(ours.tokens)}


def save_gpt2_files(tok, out_dir):
    """Only vocab.json + merges.txt, as GPT-2 ships them (load_tokenizer accepts such a directory)."""
    from pathlib import Path

    from data.io import write_atomic
    from data.tokenizer.files import dumps_vocab

    out = Path(out_dir)
    write_atomic(out / "vocab.json", dumps_vocab(tok.tokens))
    write_atomic(out / "merges.txt", "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in tok.merges))
    return out


def test_gpt2_ranks_match_tiktoken(gpt2_ranks_file, tmp_path, one_mb_text):
    tiktoken = pytest.importorskip("tiktoken", reason="tiktoken (a dev dependency) is not installed")
    from data.tokenizer.gpt2 import ENDOFTEXT, load_tiktoken_file, read_tiktoken_ranks
    from data.tokenizer.pretokenize import GPT2_PATTERN

    ranks = read_tiktoken_ranks(gpt2_ranks_file)
    enc = tiktoken.Encoding("gpt2-test", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={ENDOFTEXT: 50256})
    tok = load_tiktoken_file(gpt2_ranks_file)
    assert len(tok.merges) == 50_000 and tok.vocab_size == 50_257
    text = one_mb_text[:300_000] + " " + "x" * 3000 + " Hello world's 1234567 \n\n  end"
    assert tok.encode(text) == enc.encode_ordinary(text)
    assert tok.encode("hi<|endoftext|>", allowed_special="all") == enc.encode("hi<|endoftext|>", allowed_special="all")
    # GPT-2's own file layout (vocab.json + merges.txt only) loads through load_tokenizer.
    save_gpt2_files(tok, tmp_path)
    gpt2 = load_tokenizer(tmp_path)
    assert gpt2.encode("Hello world") == [15496, 995] and gpt2.special_tokens == [ENDOFTEXT]


def test_one_and_four_ray_tasks_give_identical_merges(ray2, tmp_path, make_text):
    files = []
    for k in range(3):
        p = tmp_path / f"part{k}.txt"
        p.write_text(make_text(60_000, seed=10 + k), encoding="utf-8")
        files.append(str(p))
    base = dict(vocab_size=800)
    one = train_tokenizer(TokenizerConfig(num_workers=1, **base), files)
    four = train_tokenizer(TokenizerConfig(num_workers=4, **base), files)
    assert one.train_stats["count_tasks"] == 3 and four.train_stats["count_tasks"] >= 4
    assert one.merges == four.merges and one.fingerprint == four.fingerprint
    texts = make_text(20_000, seed=99).split("\n")
    assert four.encode_batch(texts, num_tasks=2) == [four.encode(t) for t in texts]


def test_hf_loads_char_bpe_tokenizer_json(corpus_file, tmp_path, make_text):
    tok = train_tokenizer(TokenizerConfig(kind="char_bpe", vocab_size=3000, num_workers=1), [str(corpus_file)])
    tok.save(tmp_path)
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    text = make_text(100_000, seed=8) + " ⓩunseen"
    assert tok.encode(text) == hf.encode(text, add_special_tokens=False).ids


def test_transformers_autotokenizer_knows_the_special_tokens(small_tok, tmp_path):
    """`AutoTokenizer.from_pretrained(dir)` gets pad/bos/eos with our ids and encodes as we do."""
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    small_tok.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert (hf.pad_token, hf.bos_token, hf.eos_token) == ("<pad>", "<s>", "</s>")
    assert (hf.pad_token_id, hf.bos_token_id, hf.eos_token_id) == (small_tok.pad_id, small_tok.bos_id, small_tok.eos_id)
    text = "über 中文 🙂 the end"
    assert hf.encode(text, add_special_tokens=False) == small_tok.encode(text)
    assert hf.decode(small_tok.encode(text)) == text


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_autotokenizer_loads_a_sentencepiece_folder_and_encodes_as_we_do(corpus_file, tmp_path, make_text, model_type):
    """The sentencepiece kind writes tokenizer.json too: same ids, same text back, pad/bos/eos known."""
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    tok = train_tokenizer(TokenizerConfig(kind="sentencepiece", sp_model_type=model_type, vocab_size=600, num_workers=1),
                          [str(corpus_file)])
    tok.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert (hf.pad_token_id, hf.bos_token_id, hf.eos_token_id) == (tok.pad_id, tok.bos_id, tok.eos_id)
    # varied text (scripts, emoji, digits), runs of spaces and tabs, characters in no piece (bytes)
    texts = make_text(20_000, seed=11).splitlines() + ["a  b   c ", "  leading", "tab\there\n", "ⓩ unseen ꙮ", ""]
    for text in texts:
        ids = tok.encode(text)
        # unigram: a run of spaces has segmentations of equal score (▁ ▁▁ or ▁▁ ▁), and the two
        # libraries break such ties differently (sentencepiece sums in float32, tokenizers in float64)
        if model_type == "bpe" or "  " not in text:
            assert hf.encode(text, add_special_tokens=False) == ids, text
        assert hf.decode(hf.encode(text, add_special_tokens=False)) == hf.decode(ids) == tok.decode(ids) == text
