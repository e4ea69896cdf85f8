"""The LightningModule against a plain PyTorch loop on one device, same model, same batches.

    python bench/gpu_train.py --model base --steps 60           # on a GPU: bf16 autocast
    python bench/gpu_train.py --device cpu --model tiny --steps 20   # a quick check without a GPU

Needs torch and Lightning only (no Ray, no MLflow): on a GPU machine it measures what tpipe's
training loop costs over the loop a user would write. Both run `--steps` optimizer steps on the
same random token batches (fixed lengths, no padding) and time the steps after `--warmup`.
tokens/s counts source + target tokens. Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def model_config(name: str, vocab: int):
    import yaml

    from model.config import ModelConfig

    preset = yaml.safe_load((ROOT / "conf" / "model" / f"{name}.yaml").read_text())
    preset.update(vocab_size=vocab, dropout=0.0)
    return ModelConfig(**preset)


def batches(n: int, batch: int, length: int, vocab: int, device: str) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        src = torch.randint(3, vocab, (batch, length), generator=g)
        tgt = torch.randint(3, vocab, (batch, length + 1), generator=g)
        tgt[:, 0] = 1  # BOS
        out.append({"src": src.to(device), "tgt": tgt.to(device)})
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def plain(cfg, data, steps: int, warmup: int, device: str, bf16: bool) -> float:
    import torch.nn.functional as F

    from model.transformer import Transformer

    torch.manual_seed(0)
    model = Transformer(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
    tokens, t0 = 0, 0.0
    for step in range(steps):
        if step == warmup:
            sync(device)
            t0, tokens = time.perf_counter(), 0
        b = data[step % len(data)]
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            logits = model(b["src"], b["tgt"][:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), b["tgt"][:, 1:].reshape(-1), label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens += b["src"].numel() + b["tgt"].numel()
    sync(device)
    return tokens / (time.perf_counter() - t0)


def lightning(cfg, data, steps: int, warmup: int, device: str, bf16: bool) -> float:
    import lightning as L

    from pipeline.config import TrainConfig
    from pipeline.lightning_module import Seq2SeqModule

    class Clock(L.Callback):
        def __init__(self):
            self.t0, self.tokens = 0.0, 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == warmup:
                sync(device)
                self.t0, self.tokens = time.perf_counter(), 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step > warmup:
                self.tokens += batch["src"].numel() + batch["tgt"].numel()

    torch.manual_seed(0)
    module = Seq2SeqModule(cfg, TrainConfig(lr=1e-4, warmup_steps=0, max_steps=steps, log_every_steps=50))
    clock = Clock()
    trainer = L.Trainer(
        max_steps=steps, accelerator="gpu" if device.startswith("cuda") else "cpu", devices=1,
        precision="bf16-mixed" if bf16 else "32-true", gradient_clip_val=1.0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[clock],
    )
    # batches already live on the device; Lightning's transfer is then a no-op
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(data * (steps // len(data) + 1), batch_size=None))
    sync(device)
    return clock.tokens / (time.perf_counter() - clock.t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="base")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--vocab", type=int, default=32000)
    args = p.parse_args()
    bf16 = args.device.startswith("cuda")
    cfg = model_config(args.model, args.vocab)
    data = batches(8, args.batch, args.length, args.vocab, args.device)
    a = plain(cfg, data, args.steps, args.warmup, args.device, bf16)
    b = lightning(cfg, data, args.steps, args.warmup, args.device, bf16)
    name = torch.cuda.get_device_name() if bf16 else "cpu"
    print(f"{args.model} on {name}, {'bf16' if bf16 else 'fp32'}, batch {args.batch}x{args.length}, {args.steps} steps")
    print(f"{'':28s} {'tokens/s':>12s} {'vs plain':>9s}")
    print(f"{'plain PyTorch loop':28s} {a:12.0f} {1.0:9.2f}")
    print(f"{'tpipe LightningModule':28s} {b:12.0f} {b / a:9.2f}")
    print(json.dumps({"model": args.model, "device": name, "precision": "bf16-mixed" if bf16 else "fp32",
                      "plain_tokens_per_s": round(a), "lightning_tokens_per_s": round(b), "ratio": round(b / a, 3)}))


if __name__ == "__main__":
    main()
