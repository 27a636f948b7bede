"""Memory options for big-model training (train/optimizers.py, train/offload.py) on tiny models, CPU.

Each option is compared with what it replaces: optimizer-in-backward with plain AdamW (same losses),
a bf16 DPO reference with the fp32 one (the step-0 bias), the CPU-offloaded reference with the one on the
device. bf16 weights (stochastic rounding, BF16AdamW, --master-weights bf16): test_bf16_weights.py.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from tests.helpers import run_cli
from tests.train.conftest import train_args
from tests.train.memory_runs import BF16, metrics_by_step, train_ok, unet_weights
from train.cli import app
from train.optimizers import OptimizerInBackward

NO_CLIP = ("--max-grad-norm", "1e9")  # clip_grad_norm_'s coefficient is then exactly 1
IN_BWD = ("--optimizer-in-backward",)


# ------------------------------------------------------------------ optimizer in backward
@pytest.mark.parametrize("bucket_numel,most_alive", [(0, 1), (20, 3), (10**9, 4)],
                         ids=["per-weight", "buckets", "one-bucket-at-the-end"])
def test_optimizer_in_backward_frees_each_gradient_and_equals_adamw(bucket_numel, most_alive):
    # Weights finish in the backward as: 2nd bias (1 value), 2nd weight (16), 1st bias (16), 1st weight (128).
    # Buckets of 20 values: [1, 16, 16] then [128], so at most 3 gradients are alive; one bucket of all: 4, all
    # stepped by the end-of-backward callback.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    twin = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    twin.load_state_dict(model.state_dict())
    plain = torch.optim.AdamW(twin.parameters(), lr=1e-2, fused=True)
    in_bwd = OptimizerInBackward(model.parameters(), lambda p: torch.optim.AdamW(p, lr=1e-2, fused=True), lr=1e-2,
                                 bucket_numel=bucket_numel)
    seen = []
    in_bwd.grad_observers.append(lambda p: seen.append(sum(q.grad is not None for q in model.parameters())))
    x = torch.randn(32, 8)
    for _ in range(3):
        twin(x).square().mean().backward()
        norm = torch.nn.utils.clip_grad_norm_(twin.parameters(), 1e9)
        plain.step()
        plain.zero_grad()
        model(x).square().mean().backward()
        assert all(p.grad is None for p in model.parameters())  # updated and freed inside the backward
        assert in_bwd.take_grad_norm().item() == pytest.approx(norm.item(), rel=1e-6)
    assert max(seen) == most_alive
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(a, b, atol=1e-7)
    with pytest.raises(ValueError, match="not an optimizer-in-backward state; it is another optimizer's"):
        in_bwd.load_state_dict(plain.state_dict())
    with pytest.raises(ValueError, match="saved per weight by an older mapo-train"):
        in_bwd.load_state_dict({"param_groups": [], "per_parameter": []})


def test_optimizer_in_backward_clips_each_tensor_and_recovers_from_a_failed_backward():
    weights = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))]
    opt = OptimizerInBackward(weights, lambda p: torch.optim.SGD(p, lr=1.0), lr=1.0, max_grad_norm=1.0,
                              bucket_numel=10**9)
    # One bucket, two gradients: [3, 0, 4] (norm 5: clipped to norm 1) and 0.5 each (norm 1: kept), clipped each
    # on its own; a norm per bucket would scale both by 1 / sqrt(26).
    ((weights[0] * torch.tensor([3.0, 0, 4])).sum() + (weights[1] * 0.5).sum()).backward()
    assert torch.allclose(weights[0].detach(), -torch.tensor([0.6, 0, 0.8]))
    assert torch.allclose(weights[1].detach(), torch.full((4,), -0.5))
    assert opt.take_grad_norm().item() == pytest.approx(26**0.5)

    class Boom(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            raise RuntimeError("out of memory (simulated)")

    # Buckets of 4 values: w_a (4 values, newest nodes: finishes first) is stepped at once, w_b (2) waits in the
    # bucket, then w_c's branch raises. zero_grad must drop w_b's stale bucket and w_a's norm.
    w_a, w_b, w_c = (torch.nn.Parameter(torch.zeros(n)) for n in (4, 2, 3))
    opt = OptimizerInBackward([w_a, w_b, w_c], lambda p: torch.optim.SGD(p, lr=1.0), lr=1.0, bucket_numel=4)
    failing = Boom.apply(w_c).sum()
    with pytest.raises(RuntimeError, match="simulated"):
        (failing + w_b.sum() + (w_a * 2).sum()).backward()
    assert torch.equal(w_a.detach(), torch.full((4,), -2.0)) and w_b.grad is not None
    assert list(opt._pending.values()) == [w_b]
    opt.zero_grad()  # what the trainer and the bench do before the next try
    (w_b * 0.5).sum().backward()
    assert torch.allclose(w_b.detach(), torch.full((2,), -0.5)) and w_b.grad is None  # stepped once
    assert opt.take_grad_norm().item() == pytest.approx(0.5 * 2**0.5)  # this backward's norm alone


def test_optimizer_in_backward_passes_the_scheduled_learning_rate_and_steps_only_the_bucket():
    weights = [torch.nn.Parameter(torch.zeros(2)) for _ in range(3)]
    stepped = []

    class Recording(torch.optim.SGD):
        def step(self, closure=None):
            stepped.append([id(p) for p in self.param_groups[0]["params"]])
            return super().step(closure)

    opt = OptimizerInBackward(weights, lambda p: Recording(p, lr=1.0), lr=1.0, bucket_numel=0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.1 * (step + 1))  # warm-up: 0.1, 0.2, ...
    for step in range(2):
        sum((i + 1) * w.sum() for i, w in enumerate(weights)).backward()
        opt.step()  # nothing (the weights moved in the backward), called as the trainer does
        sched.step()
    # Per weight i (gradient i + 1): -(0.1 + 0.2) * (i + 1); each flush stepped one weight, not all three.
    for i, w in enumerate(weights):
        assert torch.allclose(w.detach(), torch.full((2,), -0.3 * (i + 1))), (i, w)
    assert all(len(ids) == 1 for ids in stepped) and len(stepped) == 6
    assert len(opt.inner.param_groups[0]["params"]) == 3  # restored after each flush
    with pytest.raises(ValueError, match="one param group"):
        OptimizerInBackward(weights, lambda p: torch.optim.SGD([{"params": p[:1]}, {"params": p[1:]}], lr=1.0), lr=1.0)


def test_in_backward_clipping_multiplies_once_for_100_weights_as_for_10():
    # _scale_each: one flat multiply. torch._foreach_mul_ with a 0-d factor per tensor falls back to a multiply
    # (and a cast) per tensor INSIDE one dispatched operator, so the profiler counts them, not the dispatch mode.
    from torch.profiler import profile

    from train.optimizers import _scale_each

    counts = []
    for n in (10, 100):
        tensors = [torch.full((3, 2), float(i % 16), dtype=torch.bfloat16) for i in range(n)]
        with profile() as prof:
            _scale_each(tensors, torch.arange(n, dtype=torch.float32) % 4)
        counts.append(sum(e.name in ("aten::mul_", "aten::mul", "aten::_to_copy") for e in prof.events()))
        assert all(torch.equal(t.float(), torch.full((3, 2), float(i % 16 * (i % 4)))) for i, t in enumerate(tensors))
    assert counts[0] == counts[1] <= 3, counts


def test_in_backward_training_equals_plain_adamw(tmp_path, latents_sdxl):
    plain, in_bwd = tmp_path / "plain", tmp_path / "inbwd"
    train_ok(latents_sdxl, plain, 3, *NO_CLIP)
    train_ok(latents_sdxl, in_bwd, 3, *NO_CLIP, *IN_BWD)
    a, b = metrics_by_step(plain), metrics_by_step(in_bwd)
    for step in (1, 2, 3):
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-6, abs=1e-7), step
        assert b[step]["grad_norm"] == pytest.approx(a[step]["grad_norm"], rel=1e-5), step
    wa, wb = unet_weights(plain), unet_weights(in_bwd)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-6


@pytest.mark.parametrize("extra", [IN_BWD, (*IN_BWD, *BF16)], ids=["in-backward", "in-backward-bf16"])
def test_in_backward_resume_equals_uninterrupted(tmp_path, latents_sdxl, monkeypatch, extra):
    args = (*extra, "--lr-scheduler", "cosine", "--lr-warmup-steps", "2", "--checkpointing-steps", "3")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_ok(latents_sdxl, straight, 5, *args)
    import train.trainer as trainer_mod

    real = trainer_mod.Trainer._stop_requested
    monkeypatch.setattr(trainer_mod.Trainer, "_stop_requested",
                        lambda self: "SIGTERM" if self.state.global_step == 3 else real(self))
    assert run_cli(app, train_args(latents_sdxl, resumed, "tiny-sdxl", 5, *args)).exit_code == 143
    monkeypatch.setattr(trainer_mod.Trainer, "_stop_requested", real)
    result = train_ok(latents_sdxl, resumed, 5, *args, "--resume-from-checkpoint", "latest")
    assert "2 steps (3 -> 5)" in result.output, result.output
    a, b = metrics_by_step(straight), metrics_by_step(resumed)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5]
    for step in a:  # bit-identical: the AdamW state (and the rounding generator) was saved
        assert (a[step]["loss"], a[step]["lr"]) == (b[step]["loss"], b[step]["lr"]), step
    wa, wb = unet_weights(straight), unet_weights(resumed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_of_a_per_weight_in_backward_checkpoint_is_a_one_line_error(tmp_path, latents_sdxl):
    # Checkpoints written before 2026-12-01 hold one optimizer state per weight ("per_parameter").
    out = tmp_path / "run"
    train_ok(latents_sdxl, out, 1, *IN_BWD, "--checkpointing-steps", "1")
    (saved,) = (out / "checkpoints").glob("checkpoint-1/optimizer.bin")
    state = torch.load(saved, weights_only=False)
    torch.save({"param_groups": state["param_groups"], "per_parameter": [state["inner"]]}, saved)
    result = run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", 2, *IN_BWD, "--resume-from-checkpoint", "latest"))
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "saved per weight by an older" in lines[0], result.output
    assert "Traceback" not in result.output


def test_resume_refuses_to_switch_the_optimizer_layout(tmp_path, latents_sdxl):
    out = tmp_path / "run"
    train_ok(latents_sdxl, out, 1)
    result = run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", 2, *IN_BWD, "--resume-from-checkpoint", "latest"))
    assert result.exit_code == 2 and "different optimizer_in_backward" in result.output, result.output


def test_a_skipped_step_updates_nothing_with_in_backward(tmp_path, latents_sdxl, monkeypatch):
    import train.batch_sources as batch_sources
    from train.losses import LossOutput

    real, calls = batch_sources.compute_loss, {"n": 0}

    def nan_on_second(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        return LossOutput(loss=out.loss * float("nan"), metrics=out.metrics) if calls["n"] == 2 else out

    monkeypatch.setattr(batch_sources, "compute_loss", nan_on_second)
    out = tmp_path / "run"
    train_ok(latents_sdxl, out, 3, *IN_BWD, "--debug-weight-checksums")
    sums = [json.loads(line)["checksum"] for line in (out / "debug" / "weights-rank0.jsonl").read_text().splitlines()]
    assert sums[1] == sums[0] != sums[2]  # step 2 (the NaN loss) changed no weight; step 3 did
    assert sorted(metrics_by_step(out)) == [1, 3]


@pytest.mark.parametrize("extra,message", [
    ((*IN_BWD, "--gradient-accumulation-steps", "2"), "cannot accumulate gradients"),
    ((*IN_BWD, "--mixed-precision", "fp16"), "--optimizer-in-backward cannot unscale fp16"),
    (("--master-weights", "bf16"), "--master-weights bf16 needs --mixed-precision bf16"),
    ((*BF16, "--lora-rank", "4"), "--master-weights bf16 is for full fine-tunes"),
    ((*BF16, "--use-8bit-adam"), "drop --use-8bit-adam"),
    (("--reference-dtype", "bf16", "--mixed-precision", "bf16"),
     "--reference-dtype is for DPO, KTO and SPO full fine-tunes"),
    (("--objective", "dpo", "--reference-dtype", "bf16"), "--reference-dtype bf16 needs --mixed-precision bf16"),
    (("--objective", "dpo", "--lora-rank", "4", "--reference-device", "cpu"),
     "--reference-device is for DPO, KTO and SPO full"),
])
def test_invalid_combinations_are_one_line_errors(tmp_path, latents_sdxl, extra, message):
    result = run_cli(app, train_args(latents_sdxl, tmp_path / "run", "tiny-sdxl", 1, *extra))
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert (
        result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    ), result.output
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ DPO reference: dtype and offload
def test_step0_dpo_loss_is_ln2_with_the_reference_in_the_policys_dtype(tmp_path, latents_sdxl):
    losses = {}
    for name, extra in (("auto", ()), ("bf16-master", BF16[:2])):
        out = tmp_path / name
        train_ok(latents_sdxl, out, 1, "--objective", "dpo", "--mixed-precision", "bf16", *extra)
        losses[name] = metrics_by_step(out)[1]["loss"]
    ln2_fp32 = float(torch.tensor(math.log(2)))  # the loss is computed in fp32
    assert losses == {"auto": ln2_fp32, "bf16-master": ln2_fp32}


def _bf16_reference_bias(scale: float) -> tuple[float, float]:
    """Step-0 DPO loss - ln 2 (beta 5000, bf16 autocast, 2 pairs) with an fp32 and a bf16 reference of tiny-sdxl
    whose weights are scaled by (1 + scale * N(0, 1)) (a trained model's weights are not bf16 values; the
    fresh tiny UNet's norm weights, 1 and 0, are)."""
    import copy

    from train.model_setup import load_base_unet_and_scheduler
    from train.step import Objective, compute_loss, step_generator

    unet, scheduler = load_base_unet_and_scheduler("tiny-sdxl")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():
            p.mul_(1 + scale * torch.randn(p.shape, generator=g)).add_(scale * torch.randn(p.shape, generator=g))
    c = unet.config
    pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
    batch = {"latents": torch.randn(2, 2, c.in_channels, 8, 8, generator=g),
             "prompt_embeds": torch.randn(2, 77, c.cross_attention_dim, generator=g),
             "pooled_prompt_embeds": torch.randn(2, pooled, generator=g),
             "add_time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
    objective = Objective("dpo", 5000.0, 1000, scheduler.config.prediction_type)
    out = []
    for ref_dtype in (torch.float32, torch.bfloat16):
        reference = copy.deepcopy(unet).requires_grad_(False).to(ref_dtype)
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
            loss = compute_loss(unet, batch, scheduler, objective, step_generator(0, 0, 0, 0), reference=reference).loss
        out.append(loss.item() - math.log(2))
    return tuple(out)


def test_bf16_reference_of_fp32_weights_biases_the_step0_dpo_loss():
    """Measured on the CPU (beta 5000, 2 pairs): no bias on the fresh tiny UNet (its norm weights, 1 and 0, are bf16
    values), +0.52 (loss 1.21 instead of ln 2 = 0.69) once its weights are not: the ops autocast keeps in fp32
    (GroupNorm, LayerNorm) see bf16-rounded weights in the reference and exact ones in the policy."""
    fresh = _bf16_reference_bias(0.0)
    trained_like = _bf16_reference_bias(0.05)
    print(f"step-0 DPO loss - ln 2, fp32 / bf16 reference: fresh {fresh[0]:+.2e} / {fresh[1]:+.2e}, "
          f"perturbed {trained_like[0]:+.2e} / {trained_like[1]:+.2e}")
    assert abs(fresh[0]) < 1e-6 and abs(trained_like[0]) < 1e-6  # reference == policy: ln 2
    assert abs(trained_like[1]) > 1e-2


def test_offloaded_module_runs_on_the_execution_device_and_stays_on_the_cpu():
    from train.offload import offload_to_cpu

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GroupNorm(2, 8), torch.nn.Linear(8, 2))
    model.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    offload_to_cpu(model, "meta")  # the meta device stands in for a GPU: shapes only, and a device != cpu
    model[2].register_forward_pre_hook(lambda m, a: seen.append(m.weight.device.type))  # runs after offload's
    with torch.no_grad():
        out = model(torch.randn(3, 4, device="meta"))
    assert out.device.type == "meta" and out.shape == (3, 2)
    assert seen == ["meta"]  # the layer's weights were on the execution device during its forward
    assert all(torch.equal(v, before[k]) and v.device.type == "cpu" for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="frozen"):
        offload_to_cpu(torch.nn.Linear(2, 2), "meta")


def test_reference_on_cpu_gives_the_same_losses(tmp_path, latents_sdxl):
    same, cpu = tmp_path / "same", tmp_path / "cpu"
    train_ok(latents_sdxl, same, 2, "--objective", "dpo")
    train_ok(latents_sdxl, cpu, 2, "--objective", "dpo", "--reference-device", "cpu")
    a, b = metrics_by_step(same), metrics_by_step(cpu)
    assert [a[s]["loss"] for s in (1, 2)] == [b[s]["loss"] for s in (1, 2)]
    assert a[1]["loss"] == pytest.approx(math.log(2), abs=1e-6)
