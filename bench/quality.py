"""Translation quality on real text: tpipe against a plain Hugging Face loop over MarianMTModel, side by side.

    python bench/quality.py                        # the full comparison (about 50 minutes on 2 cores)
    python bench/quality.py --quick                # a shortened one for development (about 10 minutes)
    python bench/quality.py --minutes 12 --ablation  # shorter budget, plus one tpipe row per quality lever

Data: $TPIPE_BENCH_DATA/en_de.tsv (package<TAB>English<TAB>German, from the machine's gettext catalogs;
default ~/.cache/tpipe-bench). It is split BY PACKAGE with tpipe's `data.split_by` hash
(data.cleaning.split_of_value, BLAKE2b of "seed:package", 10 % valid, 10 % test of the packages), so no
program of the test set is seen in training. The split files are written to OUT/split/{train,valid,test}.tsv
and both sides read those files.

Both sides get the same budget:
  tokenizer   joint byte-level BPE, 8000 tokens, trained on the train split (tpipe: its own byte_bpe
              tokenizer step; HF: `tokenizers.ByteLevelBPETokenizer`), pairs longer than 126 tokens a side
              dropped on both sides
  model       d_model 256, 3+3 layers, 4 heads, d_ff 1024, ReLU, sinusoidal positions, tied embeddings
              (HF: MarianConfig with the same numbers; Marian is post-norm, tpipe pre-norm); dropout is a
              lever: the recipe's 0 for tpipe, 0.1 (Marian's) for HF, and an ablation row gives tpipe 0.1
  batch       the same number of real (non-pad) tokens per optimizer step on average: tpipe's step is the
              recipe's 4 micro-batches of up to `--max-tokens`/4 padded tokens, each one length bucket
              (nearly no padding) and the four from random buckets; the HF side gets the fixed number
              of sentences per batch that carries the same real tokens on average, padded per batch by
              DataCollatorForSeq2Seq (labels padded with -100), in a shuffled order, as HF users batch
  optimizer   AdamW at the same peak lr with the same warm-up steps, gradient clipping at 1.0
  threads     1 torch thread each; both processes run at the same time so machine noise hits both

The HF side is the loop a competent HF user writes (documented in `hf_worker`): MarianMTModel from a
MarianConfig, PreTrainedTokenizerFast + DataCollatorForSeq2Seq, AdamW (weight decay 0.01), linear
warm-up then linear decay (`get_linear_schedule_with_warmup`; in the equal-time mode the decay follows the
time budget, as tpipe's does), clip 1.0, no label smoothing (the Seq2SeqTrainer default), `generate` with
greedy search (the HF rows are also scored cut at tpipe's source-length bound, which `generate` lacks:
greedy output under a bound is the unbounded output cut there). tpipe runs its own pipeline (prepare ->
tokenizer -> encode -> train on one Ray Train worker) with the recipe conf/recipes/en_de_small.yaml and
decodes the test split with the trained package.

Two modes, each with both sides at the same time:
  equal time   both train for `--minutes`, each as fast as it can (tpipe: train.max_time)
  equal steps  both train for the same number of optimizer steps: `--steps`, or by default the number of
               steps the HF side reached in the equal-time mode

Reported per side: sacreBLEU BLEU and chrF on the test split (greedy; beam 5 for tpipe too), real training
tokens/s (non-pad source + target tokens per second of the training loop), training and process wall
time, decoding sentences/s; and the copy-the-source baseline. A table, then one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RECIPE = ROOT / "conf" / "recipes" / "en_de_small.yaml"
SRC, TGT = "en", "de"
MAX_TOKENS_PER_SIDE = 126  # the pipeline's data.max_tokens_per_side default; applied to both sides
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


# ----------------------------------------------------------------------------------------------
# The split


def split_corpus(corpus: Path, out: Path, seed: int, valid_fraction: float, test_fraction: float) -> dict:
    """package-hash split of the TSV into out/{train,valid,test}.tsv; returns pair and package counts."""
    from data.cleaning import split_of_value

    out.mkdir(parents=True, exist_ok=True)
    files = {sp: open(out / f".{sp}.tsv.tmp", "w", encoding="utf-8") for sp in ("train", "valid", "test")}
    pairs = {sp: 0 for sp in files}
    packages: dict[str, set] = {sp: set() for sp in files}
    skipped = 0
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 3 or not fields[1].strip() or not fields[2].strip():
                skipped += 1
                continue
            sp = split_of_value(fields[0], seed, valid_fraction, test_fraction)
            files[sp].write(line if line.endswith("\n") else line + "\n")
            pairs[sp] += 1
            packages[sp].add(fields[0])
    for sp, fh in files.items():
        fh.close()
        os.replace(out / f".{sp}.tsv.tmp", out / f"{sp}.tsv")
    return {"pairs": pairs, "packages": {sp: len(v) for sp, v in packages.items()},
            "test_packages": sorted(packages["test"]), "skipped_lines": skipped}


def test_pairs(work: Path, limit: int) -> list[tuple[str, str]]:
    """The test split, or an evenly spaced sample of `limit` pairs from it (every package represented)."""
    test = read_pairs(work / "split" / "test.tsv")
    if limit and len(test) > limit:
        stride = len(test) / limit
        test = [test[int(i * stride)] for i in range(limit)]
    return test


def read_pairs(path: Path) -> list[tuple[str, str]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            _, s, t = line.rstrip("\n").split("\t")
            out.append((s.strip(), t.strip()))
    return out


# ----------------------------------------------------------------------------------------------
# tpipe


def recipe_accumulation() -> int:
    """Micro-batches per optimizer step in the recipe: tpipe's step is that many length buckets."""
    from pipeline.config import load_config

    return load_config(str(RECIPE)).train.accumulate_grad_batches


def tpipe_config(split_dir: Path, work: Path, args, mode: str, budget: float, variant: list[str]):
    from pipeline.config import load_config

    overrides = [
        f"data.paths=[{split_dir / 'train.tsv'}]",
        f"data.valid_paths=[{split_dir / 'valid.tsv'}]",
        f"data.test_paths=[{split_dir / 'test.tsv'}]",
        "data.split_by=''", "data.valid_fraction=0", "data.test_fraction=0",  # the split files are the split
        f"artifact_root={work / 'artifacts'}",
        f"seed={args.seed}",
        f"train.max_tokens={args.max_tokens // recipe_accumulation()}",  # --max-tokens is per optimizer step
        f"train.lr={args.lr}",
        f"train.warmup_steps={args.warmup}",
        "ray.num_cpus=1",
    ]
    if mode == "steps":
        overrides += [f"train.max_steps={int(budget)}", f"train.val_every_steps={int(budget)}"]
    elif mode == "time":
        # a step cap far beyond reach, so that the time budget stops training and ends the schedule
        overrides += [f"train.max_time={budget:.0f}s", "train.max_steps=1000000", "train.val_every_steps=1000000"]
    return load_config(str(RECIPE), overrides + list(variant))


def tpipe_train_in_process(cfg, res, out_dir: Path) -> dict:
    """tpipe's training step without the Ray Train wrapper: the same LightningModule, loader, loader
    state, Trainer settings, time budget and EMA as `pipeline.train.train_func` on one worker, in this
    process. (bench/train.py measures Ray Train's own cost at about 1.4 % of a step; on a machine
    whose load keeps Ray from starting within its fixed 30 s, this is how the bench still runs.)"""
    import dataclasses

    import lightning as L
    import torch

    from data.loader import TokenBatchLoader
    from data.tokenizer import load_tokenizer
    from model.transformer import Transformer
    from pipeline.lightning_module import Seq2SeqModule
    from data.shards import token_files
    from pipeline.callbacks import TrainingState, _Batches
    from pipeline.train import _max_time
    from pipeline.package import generation_settings
    from pipeline.package import save as save_model_package

    tcfg = cfg.train
    torch.set_num_threads(tcfg.threads_per_worker)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    tok = load_tokenizer(res["tokenizer"].out_dir)
    mcfg = dataclasses.replace(cfg.model, vocab_size=tok.vocab_size, pad_id=tok.pad_id, bos_id=tok.bos_id,
                               eos_id=tok.eos_id)
    loader = TokenBatchLoader(token_files(res["encode"].out_dir, "train"), max_tokens=tcfg.max_tokens,
                              pad_id=tok.pad_id, bos_id=tok.bos_id, eos_id=tok.eos_id, seed=cfg.seed, shuffle=True)
    module = Seq2SeqModule(mcfg, tcfg, decode_fn=tok.decode, tgt_lang=cfg.data.tgt_lang)

    class LossLog(L.Callback):
        def __init__(self):
            self.curve: list[tuple[int, float, float]] = []

            self.parts: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            step = trainer.global_step
            if (step - 1) % tcfg.log_every_steps == 0:  # the steps tpipe logs train/loss on
                # Lightning hands over the loss divided by accumulate_grad_batches (what it back-propagates);
                # with accumulation, the point is the mean of the micro-batches seen at this step count
                if not self.curve or self.curve[-1][0] != step - 1:
                    self.parts = []
                    self.curve.append((step - 1, 0.0, time.time()))
                self.parts.append(float(outputs["loss"].detach()) * tcfg.accumulate_grad_batches)
                self.curve[-1] = (step - 1, round(sum(self.parts) / len(self.parts), 4), self.curve[-1][2])

    log = LossLog()
    trainer = L.Trainer(
        max_steps=tcfg.max_steps, max_epochs=-1, max_time=_max_time(tcfg.max_seconds), accelerator="cpu",
        devices=1, callbacks=[TrainingState(loader, cfg.seed), log], logger=False, precision="32-true",
        gradient_clip_val=tcfg.grad_clip or None, accumulate_grad_batches=tcfg.accumulate_grad_batches,
        limit_val_batches=0, num_sanity_val_steps=0, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, deterministic=True,
    )
    torch.utils.deterministic.fill_uninitialized_memory = False
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=_Batches(loader))
    fit_s = time.perf_counter() - t0
    module.use_ema_weights()
    save_model_package(out_dir / "package", module.model, mcfg, generation_settings(cfg.eval), res["tokenizer"].out_dir)
    return {"steps": trainer.global_step, "curve": log.curve, "fit_seconds": fit_s}


def tpipe_worker(args) -> dict:
    """One tpipe training run (through the pipeline and Ray Train with --via-ray, else in process on
    the pipeline's cached data steps), then test-set decoding."""
    import mlflow
    from mlflow import MlflowClient

    from data.loader import TokenBatchLoader
    from data.tokenizer import load_tokenizer
    from pipeline.runner import run_pipeline
    from data.shards import token_files
    from pipeline.inference import Translator

    work = Path(args.work)
    os.environ["TPIPE_HOME"] = str(work / f"home-{args.tag}")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    cfg = tpipe_config(work / "split", work, args, args.mode, args.budget, args.variant)
    t0 = time.perf_counter()
    if args.via_ray:
        out = run_pipeline(cfg, until_step="train", quiet=True)
        res = out["results"]
        train_summary = res["train"].summary
        steps = int(train_summary["metrics"]["step"])
        hist = MlflowClient(mlflow.get_tracking_uri()).get_metric_history(train_summary["mlflow_run_id"], "train/loss")
        hist = sorted(hist, key=lambda m: m.step)
        curve = [(m.step, round(m.value, 4)) for m in hist]
        times = [(m.step, m.timestamp / 1000.0) for m in hist]
        package = res["train"].out_dir / "package"
    else:
        res = run_pipeline(cfg, until_step="encode", quiet=True)["results"]  # cached by the driver: no Ray
        trained = tpipe_train_in_process(cfg, res, work / f"model-{args.tag}")
        steps = trained["steps"]
        curve = [(st, v) for st, v, _ in trained["curve"]]
        times = [(st, t) for st, _, t in trained["curve"]]
        package = work / f"model-{args.tag}" / "package"
    wall = time.perf_counter() - t0
    # Real tokens: replay the loader's plan (it is a function of the seed) over the steps trained.
    tok = load_tokenizer(res["tokenizer"].out_dir)
    loader = TokenBatchLoader(token_files(res["encode"].out_dir, "train"), max_tokens=cfg.train.max_tokens,
                              pad_id=tok.pad_id, bos_id=tok.bos_id, eos_id=tok.eos_id, seed=cfg.seed)
    real, padded, seen, per_step = 0, 0, 0, {}
    epoch = 0
    while seen < steps * cfg.train.accumulate_grad_batches:
        loader.set_epoch(epoch)
        for batch in loader:
            n = int((batch["src"] != tok.pad_id).sum() + (batch["tgt"] != tok.pad_id).sum())
            real += n
            padded += batch["src"].numel() + batch["tgt"].numel()
            seen += 1
            per_step[seen] = real
            if seen >= steps * cfg.train.accumulate_grad_batches:
                break
        epoch += 1
    # Training-loop time: between the first and last logged losses (Ray, MLflow and data set-up excluded).
    (first_step, first_t), (last_step, last_t) = times[0], times[-1]
    loop_s = last_t - first_t
    loop_tokens = per_step.get(last_step, real) - per_step.get(first_step, 0)
    if not args.via_ray:  # in process: the whole fit, as the HF side is timed from its first step to its last
        loop_s, loop_tokens = trained["fit_seconds"], real
    test = test_pairs(work, args.test_max)
    srcs, refs = [s for s, _ in test], [t for _, t in test]
    tr = Translator(package)
    decode = {}
    # greedy and beam 5 as the package decodes (its generation.json: the recipe's eval section), and
    # greedy without the recipe's source-length bound (eval.max_len_a = 0), the decoding lever's ablation
    for name, beam, bound in (("greedy", 1, None), ("beam5", 5, None), ("greedy_unbounded", 1, 0.0)):
        if beam > 1 and args.no_beam or bound is not None and (not tr.generation.get("max_len_a") or args.tag.startswith("abl")):
            continue  # ablation rows: their training lever only
        t = time.perf_counter()
        hyps = tr.translate(srcs, beam_size=beam, max_len=args.max_len, max_len_a=bound)
        dt = time.perf_counter() - t
        decode[name] = score_block(hyps, refs, srcs) | {"sentences_per_s": round(len(srcs) / dt, 2), "seconds": round(dt, 1)}
        decode[name]["samples"] = [{"src": s, "ref": r, "hyp": h} for s, r, h in list(zip(srcs, refs, hyps))[:5]]
        (work / f"hyps-{args.tag}-{name}.txt").write_text("".join(h.replace("\n", " ") + "\n" for h in hyps), encoding="utf-8")
    return {
        "side": "tpipe", "mode": args.mode, "variant": args.variant, "steps": steps,
        "real_tokens": real, "padded_tokens": padded, "real_tokens_per_step": real / max(steps, 1),
        "train_loop_seconds": round(loop_s, 1), "tokens_per_s": loop_tokens / max(loop_s, 1e-9),
        "wall_seconds": round(wall, 1), "via_ray": bool(args.via_ray), "loss_curve": curve, "decode": decode,
        "generation": {"length_penalty": cfg.eval.length_penalty, "max_len_a": cfg.eval.max_len_a,
                       "max_len_b": cfg.eval.max_len_b},
    }


# ----------------------------------------------------------------------------------------------
# The Hugging Face side


def hf_tokenizer(split_dir: Path, vocab: int, cache: Path):
    """Joint byte-level BPE on the train split (both languages), as `tokenizers` documents it."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    path = cache / "hf_tokenizer.json"
    if not path.exists():
        pairs = read_pairs(split_dir / "train.tsv")
        tok = ByteLevelBPETokenizer()
        tok.train_from_iterator((x for p in pairs for x in p), vocab_size=vocab, min_frequency=2,
                                special_tokens=SPECIALS, show_progress=False)
        tmp = cache / ".hf_tokenizer.json.tmp"
        tok.save(str(tmp))
        os.replace(tmp, path)
    return PreTrainedTokenizerFast(tokenizer_file=str(path), pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


def hf_encode(tok, pairs: list[tuple[str, str]]) -> list[dict]:
    """input_ids = source + </s>, labels = target + </s> (Marian's format); over-long pairs dropped
    by the same rule as tpipe's encode step."""
    eos = tok.eos_token_id
    src = tok([s for s, _ in pairs], add_special_tokens=False)["input_ids"]
    tgt = tok([t for _, t in pairs], add_special_tokens=False)["input_ids"]
    return [{"input_ids": s + [eos], "labels": t + [eos]} for s, t in zip(src, tgt)
            if 0 < len(s) <= MAX_TOKENS_PER_SIDE and 0 < len(t) <= MAX_TOKENS_PER_SIDE]


def hf_model(tok, args):
    from transformers import MarianConfig, MarianMTModel

    mc = MarianConfig(
        vocab_size=len(tok), d_model=256, encoder_layers=3, decoder_layers=3,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024,
        activation_function="relu", dropout=0.1, attention_dropout=0.0, activation_dropout=0.0,
        max_position_embeddings=256, scale_embedding=True, share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id, decoder_start_token_id=tok.pad_token_id, forced_eos_token_id=None,
    )
    return MarianMTModel(mc)


def hf_worker(args) -> dict:
    """The plain HF loop: shuffled fixed-size batches, DataCollatorForSeq2Seq, AdamW, linear schedule."""
    import torch
    from transformers import DataCollatorForSeq2Seq, get_linear_schedule_with_warmup

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    work = Path(args.work)
    t_start = time.perf_counter()
    tok = hf_tokenizer(work / "split", args.vocab, work)
    train = hf_encode(tok, read_pairs(work / "split" / "train.tsv"))
    model = hf_model(tok, args).train()
    collator = DataCollatorForSeq2Seq(tok, model=model, padding="longest", label_pad_token_id=-100)
    no_decay = ["bias", "layer_norm.weight"]
    groups = [
        {"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)], "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=args.lr)
    time_mode = args.mode == "time"
    total = 10**9 if time_mode else int(args.budget)
    if time_mode:
        # linear decay over the time budget (the same courtesy tpipe's max_time schedule gets)
        t_train0 = [None]

        def frac() -> float:
            return 0.0 if t_train0[0] is None else (time.perf_counter() - t_train0[0]) / args.budget

        def lam(step: int) -> float:
            s = step + 1
            if s <= args.warmup:
                return s / max(args.warmup, 1)
            return max(0.0, 1.0 - frac())

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    else:
        sched = get_linear_schedule_with_warmup(opt, args.warmup, total)
    rng = random.Random(args.seed)
    bs = args.hf_batch
    step, real, padded, curve = 0, 0, 0, []
    t0 = time.perf_counter()
    if time_mode:
        t_train0[0] = t0
    done = False
    epoch = 0
    while not done:
        order = list(range(len(train)))
        rng.shuffle(order)
        for i in range(0, len(order) - bs + 1, bs):
            batch = collator([train[j] for j in order[i : i + bs]])
            out = model(**batch)
            loss = out.loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            real += int(batch["attention_mask"].sum()) + int((batch["labels"] != -100).sum())
            padded += batch["input_ids"].numel() + batch["labels"].numel()
            if step % 25 == 0:
                curve.append((step, round(loss.item(), 4)))
            step += 1
            if (not time_mode and step >= total) or (time_mode and time.perf_counter() - t0 >= args.budget):
                done = True
                break
        epoch += 1
    loop_s = time.perf_counter() - t0
    model.eval()
    model_dir = work / f"model-{args.tag}"
    model.save_pretrained(model_dir)  # safetensors: --hf-from can decode it again, analysis can load it
    return {
        "side": "hf", "mode": args.mode, "steps": step, "epochs": epoch, "batch_sentences": bs,
        "real_tokens": real, "padded_tokens": padded, "real_tokens_per_step": real / max(step, 1),
        "train_loop_seconds": round(loop_s, 1), "tokens_per_s": real / max(loop_s, 1e-9),
        "wall_seconds": round(time.perf_counter() - t_start, 1), "loss_curve": curve,
        "decode": hf_decode(model, tok, work, args),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "model_dir": str(model_dir), "args": hf_identity(args),
    }


def hf_identity(args) -> dict:
    """What decides the HF side's trained model (it is seeded and runs on one thread)."""
    return {"seed": args.seed, "lr": args.lr, "warmup": args.warmup, "vocab": args.vocab,
            "hf_batch": args.hf_batch, "mode": args.mode, "budget": args.budget}


def hf_decode(model, tok, work: Path, args) -> dict:
    """Greedy on the test split, plus the same cut at the recipe's source-length bound."""
    from pipeline.config import load_config

    test = test_pairs(work, args.test_max)
    srcs, refs = [s for s, _ in test], [t for _, t in test]
    recipe_eval = load_config(str(RECIPE)).eval
    bound = (recipe_eval.max_len_a, recipe_eval.max_len_b)
    t = time.perf_counter()
    hyps, hyps_bounded = hf_translate(model, tok, srcs, args.max_len, bound=bound)
    dt = time.perf_counter() - t
    decode = {"greedy": score_block(hyps, refs, srcs) | {"sentences_per_s": round(len(srcs) / dt, 2), "seconds": round(dt, 1)}}
    if bound[0]:
        decode["greedy_bounded"] = score_block(hyps_bounded, refs, srcs) | {"bound": list(bound)}
    decode["greedy"]["samples"] = [{"src": s, "ref": r, "hyp": h} for s, r, h in list(zip(srcs, refs, hyps))[:5]]
    (work / f"hyps-{args.tag}-greedy.txt").write_text("".join(h.replace("\n", " ") + "\n" for h in hyps), encoding="utf-8")
    return decode


def hf_replay(args) -> dict:
    """--hf-from: the HF side of an earlier run of this bench with the same arguments (it is seeded and
    single-threaded, so training it again gives the same model), decoded again here; its training
    figures are that run's. At 400 steps the HF loop trains for over an hour on one thread."""
    import torch
    from transformers import MarianMTModel

    torch.set_num_threads(1)
    work = Path(args.work)
    earlier = json.loads(Path(args.hf_from).read_text())
    want = hf_identity(args)
    if earlier.get("args") != want:
        raise SystemExit(f"--hf-from {args.hf_from} was trained with {earlier.get('args')}, this run needs {want}")
    tok = hf_tokenizer(work / "split", args.vocab, work)
    model = MarianMTModel.from_pretrained(earlier["model_dir"]).eval()
    return earlier | {"decode": hf_decode(model, tok, work, args), "replayed_from": args.hf_from}


def hf_translate(model, tok, sentences: list[str], max_len: int, batch_size: int = 64,
                 bound: tuple[float, int] = (0.0, 0)) -> tuple[list[str], list[str]]:
    """Greedy `generate` in batches, sorted by length like tpipe's Translator (same padding waste).

    Returns (translations, the same cut at tpipe's source-length bound ⌊a·S + b⌋): `generate` has no
    such option, and greedy output under a length bound is the unbounded output cut there (tpipe's
    tests/model/test_model_generation.py), so the second list is what HF would give with the bound."""
    import math

    import torch

    eos = tok.eos_token_id
    ids = [x[: 255] + [eos] for x in tok(sentences, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out, cut = [""] * len(ids), [""] * len(ids)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = tok.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
            gen = model.generate(**batch, max_new_tokens=max_len, num_beams=1, do_sample=False)
            for i, row in zip(idx, gen.tolist()):
                row = row[1:]  # generate's rows start with the decoder start token
                out[i] = tok.decode(row, skip_special_tokens=True).strip()
                if bound[0]:
                    n = max(1, min(max_len, math.floor(bound[0] * len(ids[i]) + bound[1])))
                    cut[i] = tok.decode(row[:n], skip_special_tokens=True).strip()
    return out, cut


def score_block(hyps: list[str], refs: list[str], srcs: list[str]) -> dict:
    """BLEU and chrF, plus how long the outputs run: sacreBLEU's hypothesis/reference length ratio and
    the share of "runaway" outputs (over twice their source's characters plus 20: a decoder that never
    says EOS repeats itself up to max_len, and a few such lines pull corpus BLEU's precisions down)."""
    from pipeline.evaluate import score

    s = score(hyps, refs, TGT)
    runaway = sum(len(h) > 2 * len(x) + 20 for h, x in zip(hyps, srcs))
    return {"bleu": round(float(s["bleu"]), 2), "chrf": round(float(s["chrf"]), 2),
            "length_ratio": round(float(s["length_ratio"]), 3), "runaway": round(runaway / max(len(hyps), 1), 4)}


# ----------------------------------------------------------------------------------------------
# The driver


def prepare_tpipe(work: Path, args) -> dict:
    """Run tpipe's prepare/tokenizer/encode once, so that the training workers reuse them."""
    from data.loader import TokenBatchLoader
    from data.tokenizer import load_tokenizer
    from pipeline.runner import run_pipeline
    from data.shards import token_files

    os.environ["TPIPE_HOME"] = str(work / "home-prepare")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    cfg = tpipe_config(work / "split", work, args, "prepare", 0, [])
    res = run_pipeline(cfg, until_step="encode", quiet=True)["results"]
    tok = load_tokenizer(res["tokenizer"].out_dir)
    k = recipe_accumulation()
    loader = TokenBatchLoader(token_files(res["encode"].out_dir, "train"), max_tokens=args.max_tokens // k,
                              pad_id=tok.pad_id, bos_id=tok.bos_id, eos_id=tok.eos_id, seed=args.seed)
    real, padded, batches = 0, 0, 0
    for b in loader:
        real += int((b["src"] != tok.pad_id).sum() + (b["tgt"] != tok.pad_id).sum())
        padded += b["src"].numel() + b["tgt"].numel()
        batches += 1
    return {"real_tokens_per_step": k * real / batches, "padding": 1 - real / padded, "batches_per_epoch": batches,
            "rows": res["encode"].summary["rows"]}


def hf_batch_size(work: Path, args, real_per_step: float) -> tuple[int, float]:
    """The fixed sentence count whose batches carry tpipe's real tokens per step on average."""
    tok = hf_tokenizer(work / "split", args.vocab, work)
    train = hf_encode(tok, read_pairs(work / "split" / "train.tsv"))
    per_sentence = sum(len(x["input_ids"]) + len(x["labels"]) for x in train) / len(train)
    return max(1, round(real_per_step / per_sentence)), per_sentence


def run_pair(work: Path, args, mode: str, budget: float, jobs: list[tuple[str, str, list[str]]]) -> dict:
    """Start every (side, tag, variant) worker at once, wait for all; returns {tag: result}."""
    procs = {}
    for side, tag, variant in jobs:
        out = work / f"result-{tag}.json"
        cmd = [sys.executable, __file__, "--worker", side, "--tag", tag, "--mode", mode, "--budget", str(budget),
               "--work", str(work), "--result", str(out)] + _shared_args(args)
        for v in variant:
            cmd += ["--variant", v]
        if tag.startswith("abl") and "--no-beam" not in cmd:
            cmd.append("--no-beam")  # ablation rows: greedy only (beam 5 costs 5x the decoding time)
        log = open(work / f"log-{tag}.txt", "w")
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        procs[tag] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT), out, log)
        print(f"  started {tag} ({side}, {mode} {budget:g}{'s' if mode == 'time' else ' steps'}"
              f"{', ' + ' '.join(variant) if variant else ''})", flush=True)
    results = {}
    for tag, (p, out, log) in procs.items():
        rc = p.wait()
        log.close()
        if rc != 0 or not out.exists():
            tail = (work / f"log-{tag}.txt").read_text(errors="replace")[-3000:]
            raise SystemExit(f"worker {tag} failed (exit {rc}); see {work / f'log-{tag}.txt'}:\n{tail}")
        results[tag] = json.loads(out.read_text())
    return results


def _shared_args(args) -> list[str]:
    return ["--seed", str(args.seed), "--max-tokens", str(args.max_tokens), "--lr", str(args.lr),
            "--warmup", str(args.warmup), "--vocab", str(args.vocab), "--hf-batch", str(args.hf_batch),
            "--max-len", str(args.max_len), "--test-max", str(args.test_max)] + (["--no-beam"] if args.no_beam else []) \
        + (["--hf-from", args.hf_from] if args.hf_from else []) \
        + (["--via-ray"] if args.via_ray else [])


ABLATIONS = [  # (row name, tpipe overrides on top of the recipe); each trained at equal steps
    ("one length bucket per step (2048-token batches)", ["train.max_tokens=2048", "train.accumulate_grad_batches=1"]),
    ("dropout 0.1 (instead of 0)", ["model.dropout=0.1"]),
    ("without EMA (train.ema_decay=0)", ["train.ema_decay=0"]),
    ("without label smoothing", ["train.label_smoothing=0"]),
    ("cosine schedule (instead of inverse-sqrt)", ["train.schedule=cosine"]),
    ("AdamW β2 0.98, ε 1e-9 (the paper's; instead of 0.999, 1e-8)", ["train.adam_beta2=0.98", "train.adam_eps=1e-9"]),
]  # the decoding levers need no training: the recipe row is also decoded without its length bound and with beam 5


def row(name: str, r: dict, key: str = "greedy") -> str:
    d = r["decode"][key]
    pad = 100 * (1 - r["real_tokens"] / max(r["padded_tokens"], 1))
    return (f"{name:44s} {r['steps']:6d} {r['real_tokens'] / 1e6:7.2f}M {pad:5.1f} {r['tokens_per_s']:8.0f} "
            f"{r['train_loop_seconds'] / 60:6.1f} {r['wall_seconds'] / 60:6.1f} {d['bleu']:6.2f} {d['chrf']:6.2f} "
            f"{d.get('length_ratio', float('nan')):5.2f} {100 * d.get('runaway', float('nan')):5.1f} "
            + (f"{d['sentences_per_s']:7.1f}" if "sentences_per_s" in d else f"{'':>7s}"))


HEADER = (f"{'':44s} {'steps':>6s} {'tokens':>8s} {'pad%':>5s} {'tok/s':>8s} {'train':>6s} {'wall':>6s} {'BLEU':>6s} "
          f"{'chrF':>6s} {'len':>5s} {'run%':>5s} {'sent/s':>7s}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a short run for development: 3 minutes, 400 test pairs")
    p.add_argument("--minutes", type=float, default=None, help="the equal-time budget (default 20, quick 3)")
    p.add_argument("--steps", type=int, default=0, help="equal-steps budget (0: the HF side's steps at equal time)")
    p.add_argument("--only", choices=["both", "time", "steps"], default="both")
    p.add_argument("--parallel", action="store_true", help="run the equal-steps pair at the same time as the "
                   "equal-time pair (needs --steps; halves the wall time, each pair still side by side)")
    p.add_argument("--ablation", action="store_true", help="also one tpipe run per lever at equal steps")
    p.add_argument("--data", default=os.environ.get("TPIPE_BENCH_DATA", str(Path.home() / ".cache" / "tpipe-bench")))
    p.add_argument("--out", default="", help="work folder (default: a new temporary folder)")
    p.add_argument("--seed", type=int, default=4, help="split and training seed; 4 gives 80/10/10 %% of the packages")
    p.add_argument("--max-tokens", type=int, default=2048, help="tpipe's padded tokens per optimizer step (the recipe's "
                   "train.max_tokens x train.accumulate_grad_batches)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--hf-batch", type=int, default=0, help="HF sentences per batch (0: matched to tpipe's tokens)")
    p.add_argument("--max-len", type=int, default=128, help="longest generated target")
    p.add_argument("--test-max", type=int, default=0, help="decode at most this many test pairs (0: all)")
    p.add_argument("--no-beam", action="store_true")
    p.add_argument("--hf-from", default="", help="reuse the HF side of an earlier run with the same arguments "
                   "(its result-hf-*.json; its saved model is decoded again): the HF loop is seeded and single-threaded")
    p.add_argument("--via-ray", action="store_true", help="train tpipe through its pipeline on Ray Train (one "
                   "shared local Ray); default: the same training loop in process, on the pipeline's data steps")
    # worker-only
    p.add_argument("--worker", choices=["tpipe", "hf"], help=argparse.SUPPRESS)
    p.add_argument("--tag", default="", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="steps", help=argparse.SUPPRESS)
    p.add_argument("--budget", type=float, default=0, help=argparse.SUPPRESS)
    p.add_argument("--work", default="", help=argparse.SUPPRESS)
    p.add_argument("--result", default="", help=argparse.SUPPRESS)
    p.add_argument("--variant", action="append", default=[], help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        res = (tpipe_worker if args.worker == "tpipe" else hf_replay if args.hf_from else hf_worker)(args)
        tmp = Path(args.result + ".tmp")
        tmp.write_text(json.dumps(res, indent=1))
        os.replace(tmp, args.result)
        return

    if args.minutes is None:
        args.minutes = 3.0 if args.quick else 20.0
    if args.quick and not args.test_max:
        args.test_max = 400
    t_all = time.perf_counter()
    import tempfile

    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="tpipe-bench-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = Path(args.data) / "en_de.tsv"
    if not corpus.exists():
        raise SystemExit(f"{corpus} does not exist; build it with ../shared/bench-data/make_corpora.py or set TPIPE_BENCH_DATA")
    split = split_corpus(corpus, work / "split", args.seed, 0.1, 0.1)
    # One local Ray for every tpipe process of the bench: the workers join it (RAY_ADDRESS) instead of
    # each starting its own, which on a loaded 2-core machine can miss Ray's 30 s start-up deadline.
    import ray

    for attempt in range(4 if args.via_ray else 0):  # Ray gives its raylet a fixed 30 s to come up; a loaded machine can miss it
        try:
            ray.init(address="local", num_cpus=8, dashboard_host="127.0.0.1", log_to_driver=False,
                     logging_level="WARNING")
            break
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception for this
            ray.shutdown()
            if attempt == 3:
                raise
            print(f"ray did not start ({e}); trying again", flush=True)
    if args.via_ray:
        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
        os.environ["TPIPE_ALLOW_LOCAL_STORE"] = "1"  # the sqlite store is on this machine, like the Ray workers
    print(f"work folder {work}\nsplit by package (seed {args.seed}): pairs {split['pairs']}, packages "
          f"{split['packages']}; test packages: {', '.join(split['test_packages'])}", flush=True)
    prep = prepare_tpipe(work, args)
    hf_batch = f"{args.hf_batch} sentences per batch (--hf-batch)"
    if not args.hf_batch:
        args.hf_batch, per_sentence = hf_batch_size(work, args, prep["real_tokens_per_step"])
        hf_batch = f"{args.hf_batch} sentences per batch ({per_sentence:.1f} real tokens per sentence)"
    print(f"tpipe: {prep['real_tokens_per_step']:.0f} real tokens per step ({args.max_tokens} padded budget, "
          f"{100 * prep['padding']:.1f} % padding); HF: {hf_batch}", flush=True)

    results: dict[str, dict] = {}
    budget_s = args.minutes * 60
    if args.parallel and args.steps and args.only == "both":
        results |= _run_two(work, args, budget_s)
    else:
        if args.only in ("both", "time"):
            print(f"equal wall time: {args.minutes:g} minutes each, side by side", flush=True)
            results |= run_pair(work, args, "time", budget_s, [("tpipe", "tpipe-time", []), ("hf", "hf-time", [])])
        if args.only in ("both", "steps"):
            steps = args.steps or (results["hf-time"]["steps"] if "hf-time" in results else 0)
            if not steps:
                raise SystemExit("--only steps needs --steps N")
            jobs = [("tpipe", "tpipe-steps", []), ("hf", "hf-steps", [])]
            if args.ablation:
                jobs += [("tpipe", f"abl{i}", v) for i, (_, v) in enumerate(ABLATIONS)]
            print(f"equal steps: {steps} optimizer steps each, side by side", flush=True)
            results |= run_pair(work, args, "steps", steps, jobs)
    if ray.is_initialized():
        ray.shutdown()
    report(results, split, prep, args, work, time.perf_counter() - t_all)


def _run_two(work: Path, args, budget_s: float) -> dict:
    """Both pairs (equal time and equal steps) at once."""
    procs_args = [("time", budget_s, [("tpipe", "tpipe-time", []), ("hf", "hf-time", [])]),
                  ("steps", args.steps, [("tpipe", "tpipe-steps", []), ("hf", "hf-steps", [])]
                   + ([("tpipe", f"abl{i}", v) for i, (_, v) in enumerate(ABLATIONS)] if args.ablation else []))]
    import threading

    out: dict = {}
    errors: list = []

    def go(mode, budget, jobs):
        try:
            out.update(run_pair(work, args, mode, budget, jobs))
        except SystemExit as e:
            errors.append(e)

    threads = [threading.Thread(target=go, args=a) for a in procs_args]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


def report(results: dict, split: dict, prep: dict, args, work: Path, seconds: float) -> None:
    from pipeline.evaluate import score

    test = test_pairs(work, args.test_max)
    copy = score([s for s, _ in test], [t for _, t in test], TGT)
    print()
    print(f"test: {len(test)} pairs of {split['packages']['test']} unseen packages; train {split['pairs']['train']} pairs")
    print(HEADER + "   (tok/s: real source+target tokens per second of the training loop; train/wall in minutes; len: "
          "hypothesis/reference length; run%: outputs over twice their source plus 20 characters)")
    for mode, title in (("steps", "equal steps"), ("time", f"equal wall time ({args.minutes:g} min)")):
        if f"tpipe-{mode}" not in results:
            continue
        print(f"-- {title}")
        t, h = results[f"tpipe-{mode}"], results[f"hf-{mode}"]
        print(row("tpipe, greedy", t))
        if "beam5" in t["decode"]:
            print(row(f"tpipe, beam 5 (length penalty {t['generation']['length_penalty']})", t, "beam5"))
        if "greedy_unbounded" in t["decode"]:
            print(row("tpipe, greedy without the length bound", t, "greedy_unbounded"))
        print(row(f"HF MarianMTModel loop, greedy ({h['batch_sentences']} sent/batch)", h))
        if "greedy_bounded" in h["decode"]:
            print(row("HF loop, greedy cut at tpipe's length bound", h, "greedy_bounded"))
    print(f"{'copy the source':44s} {'':6s} {'':8s} {'':5s} {'':8s} {'':6s} {'':6s} {copy['bleu']:6.2f} {copy['chrf']:6.2f}")
    abl = {k: v for k, v in results.items() if k.startswith("abl")}
    if abl:
        print("-- ablation (tpipe, equal steps, one lever changed from the recipe)")
        print(row("recipe (conf/recipes/en_de_small.yaml)", results["tpipe-steps"]))
        for i, (name, _) in enumerate(ABLATIONS):
            if f"abl{i}" in abl:
                print(row(name, abl[f"abl{i}"]))
    for tag, r in sorted(results.items()):
        print(f"loss curve {tag}: " + " ".join(f"{s}:{v}" for s, v in r["loss_curve"][:: max(1, len(r['loss_curve']) // 12)]))
    s, tm = results.get("tpipe-steps"), results.get("tpipe-time")
    hs, ht = results.get("hf-steps"), results.get("hf-time")

    def g(r, k):
        return r["decode"]["greedy"][k] if r else None

    ratio = None
    # a replayed HF side (--hf-from) trained at another time, under another load: no throughput ratio
    pairs = [(a, b) for a, b in ((s, hs), (tm, ht)) if a and b and not b.get("replayed_from")]
    if pairs:
        ratio = round(sum(a["tokens_per_s"] for a, _ in pairs) / sum(b["tokens_per_s"] for _, b in pairs), 3)
    summary = {
        "tpipe_bleu": g(s, "bleu"), "hf_bleu": g(hs, "bleu"), "tpipe_chrf": g(s, "chrf"), "hf_chrf": g(hs, "chrf"),
        "tpipe_beam5_bleu": s["decode"]["beam5"]["bleu"] if s and "beam5" in s["decode"] else None,
        # the decoding lever, both ways: tpipe without its length bound, HF cut at it
        "tpipe_unbounded_bleu": s["decode"]["greedy_unbounded"]["bleu"] if s and "greedy_unbounded" in s["decode"] else None,
        "hf_bounded_bleu": hs["decode"]["greedy_bounded"]["bleu"] if hs and "greedy_bounded" in hs["decode"] else None,
        "hf_bounded_chrf": hs["decode"]["greedy_bounded"]["chrf"] if hs and "greedy_bounded" in hs["decode"] else None,
        "time_tpipe_bleu": g(tm, "bleu"), "time_hf_bleu": g(ht, "bleu"),
        "time_tpipe_chrf": g(tm, "chrf"), "time_hf_chrf": g(ht, "chrf"),
        "time_tpipe_steps": tm["steps"] if tm else None, "time_hf_steps": ht["steps"] if ht else None,
        "tokens_per_s_ratio": ratio, "copy_bleu": round(float(copy["bleu"]), 2), "copy_chrf": round(float(copy["chrf"]), 2),
        "steps": s["steps"] if s else None, "minutes": args.minutes,
        "tokens": {k: v["real_tokens"] for k, v in results.items()},
        "hf_batch_sentences": args.hf_batch, "max_tokens": args.max_tokens, "test_pairs": len(test),
        "ablation": {ABLATIONS[int(k[3:])][0]: {"bleu": g(v, "bleu"), "chrf": g(v, "chrf")} for k, v in abl.items()},
        "bench_minutes": round(seconds / 60, 1), "work": str(work),
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
