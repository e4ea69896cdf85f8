"""DDP through Ray Train: 2 workers on half batches make the same update as 1 worker on whole ones.

Real Ray (a local cluster of 2 CPUs), real gloo process group, the real LightningModule and the
same Ray Lightning pieces (and DDP options: gradients as bucket views, no buffer broadcast) the
training driver uses.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.e2e

PAD, BOS, EOS = 0, 1, 2


def fixed_batches(n_batches: int, size: int, length: int) -> list[dict[str, torch.Tensor]]:
    """Unpadded batches: every row has the same length, so halves have equal token counts and the
    mean over ranks of per-rank mean losses equals the whole batch's mean loss."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n_batches):
        body = torch.randint(3, 24, (size, length), generator=g)
        out.append({
            "src": torch.cat([body, torch.full((size, 1), EOS)], 1),
            "tgt": torch.cat([torch.full((size, 1), BOS), body.flip(1), torch.full((size, 1), EOS)], 1),
        })
    return out


def ddp_train_func(config):
    import lightning as L
    import ray.train
    from ray.train.lightning import RayLightningEnvironment, prepare_trainer
    from safetensors.torch import save_model

    from model.config import ModelConfig
    from pipeline.config import TrainConfig
    from pipeline.lightning_module import Seq2SeqModule
    from pipeline.train import ddp_strategy

    torch.set_num_threads(1)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(0)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    model_cfg = ModelConfig(vocab_size=24, d_model=32, n_heads=2, n_encoder_layers=1, n_decoder_layers=1,
                            d_ff=64, dropout=0.0, max_seq_len=16)
    tcfg = TrainConfig(lr=1e-3, warmup_steps=0, label_smoothing=0.0, grad_clip=0.0, max_steps=config["steps"])
    module = Seq2SeqModule(model_cfg, tcfg)
    # rank r takes rows r, r+world, ... of every whole batch
    shards = [{k: v[rank::world] for k, v in b.items()} for b in fixed_batches(config["steps"], 8, 6)]
    trainer = L.Trainer(
        max_steps=config["steps"], accelerator="cpu", devices="auto", strategy=ddp_strategy(),
        plugins=[RayLightningEnvironment()], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
    )
    trainer = prepare_trainer(trainer)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(shards, batch_size=None))
    if rank == 0:
        save_model(module.model, config["out"])


def train_with(workers: int, out: str, steps: int, storage: str) -> dict[str, torch.Tensor]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from safetensors.torch import load_file

    TorchTrainer(
        ddp_train_func,
        train_loop_config={"out": out, "steps": steps},
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=f"ddp-{workers}", storage_path=storage),
    ).fit()
    return load_file(out)


@pytest.fixture(scope="module")
def ray_cluster():
    import sys

    from pipeline_testlib import fresh_ray
    from ray import cloudpickle

    # Workers cannot import this test module: ship its functions by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with fresh_ray(num_cpus=2, dashboard_host="127.0.0.1"):
        yield


def test_two_workers_equal_one_worker_on_the_combined_batch(ray_cluster, tmp_path):
    steps = 4
    one = train_with(1, str(tmp_path / "one.safetensors"), steps, str(tmp_path / "ray"))
    two = train_with(2, str(tmp_path / "two.safetensors"), steps, str(tmp_path / "ray"))
    assert one.keys() == two.keys()
    for name in one:
        if name.endswith("k_proj.bias"):
            # softmax is shift-invariant, so the key bias has an exactly-zero gradient; what float
            # round-off leaves of it, Adam normalises into lr-sized steps that differ run to run.
            continue
        assert torch.allclose(one[name], two[name], atol=1e-5, rtol=1e-4), name
    # and training did move the weights: the comparison is not one of initial weights
    from model.config import ModelConfig
    from model.transformer import Transformer

    torch.manual_seed(0)
    init = Transformer(ModelConfig(vocab_size=24, d_model=32, n_heads=2, n_encoder_layers=1, n_decoder_layers=1,
                                   d_ff=64, dropout=0.0, max_seq_len=16)).state_dict()
    key = "decoder.layers.0.cross_attn.q_proj.weight"
    assert not torch.allclose(init[key], one[key])
