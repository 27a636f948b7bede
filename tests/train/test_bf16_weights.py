"""bf16 weights for big-model training (train/optimizers.py) on tiny models, CPU: stochastic rounding, BF16AdamW
(fp32 AdamW's update on bf16 weights, compared with plain bf16 AdamW, which loses small updates) and
``--master-weights bf16`` training (within a stated tolerance of fp32 training). The other memory options:
test_memory_options.py.
"""
from __future__ import annotations

import pytest
import torch

from tests.train.memory_runs import BF16, metrics_by_step, train_ok, unet_weights
from train.optimizers import BF16AdamW, stochastic_round_bf16


# ------------------------------------------------------------------ stochastic rounding, BF16AdamW
def test_stochastic_rounding_is_unbiased_and_keeps_exact_values():
    g = torch.Generator().manual_seed(0)
    # 1 + 2**-9 lies a quarter of the way from 1 to the next bf16 value, 1 + 2**-7: rounded up 1 time in 4.
    x = torch.full((200_000,), 1 + 2**-9)
    for sign in (1, -1):
        r = stochastic_round_bf16(sign * x, g).float()
        assert set(r.unique().tolist()) == {sign * 1.0, sign * (1 + 2**-7)}
        assert (r.abs() > 1).float().mean().item() == pytest.approx(0.25, abs=0.005)
        assert r.mean().item() == pytest.approx(sign * (1 + 2**-9), abs=2e-5)
    exact = torch.tensor([0.0, 1.0, -2.5, 2.0**127, float("inf")])  # bf16 values pass unchanged
    assert torch.equal(stochastic_round_bf16(exact, g).float(), exact)
    with pytest.raises(TypeError):
        stochastic_round_bf16(x.bfloat16())


def _drift(make, dtype, steps=100):
    """Mean change of weights at 1.0 after ``steps`` AdamW steps of lr 1e-4 with gradient 1: fp32 gives -1e-2."""
    p = torch.nn.Parameter(torch.ones(4096, dtype=dtype))
    opt = make([p])
    for _ in range(steps):
        p.grad = torch.ones_like(p)
        opt.step()
    return (p.float() - 1).mean().item()


def test_bf16_adamw_keeps_updates_that_plain_bf16_adamw_loses():
    # Each step moves a weight at 1.0 by lr = 1e-4; bf16's spacing there is 2**-7 = 0.0078: round to nearest
    # (torch's AdamW on bf16 weights) throws every update away, stochastic rounding keeps them on average.
    kw = dict(lr=1e-4, weight_decay=0.0)
    fp32 = _drift(lambda p: torch.optim.AdamW(p, **kw), torch.float32)
    assert fp32 == pytest.approx(-1e-2, rel=1e-3)
    assert _drift(lambda p: torch.optim.AdamW(p, **kw), torch.bfloat16) == 0.0  # stalled
    assert _drift(lambda p: BF16AdamW(p, **kw), torch.bfloat16) == pytest.approx(fp32, rel=0.03)
    assert (
        _drift(lambda p: BF16AdamW(p, state_dtype=torch.float32, **kw), torch.bfloat16) == pytest.approx(fp32, rel=0.03)
    )
    with pytest.raises(TypeError, match="bf16 weights"):
        _drift(lambda p: BF16AdamW(p, **kw), torch.float32, steps=1)


def test_bf16_adamw_state_dict_continues_bit_for_bit():
    def grads(i):
        return torch.randn(64, generator=torch.Generator().manual_seed(i))

    def run(steps, opt=None, p=None):
        for i in steps:
            p.grad = grads(i).bfloat16()
            opt.step()
        return p

    make = lambda p: BF16AdamW([p], lr=1e-3, seed=3)  # noqa: E731
    p = torch.nn.Parameter(torch.zeros(64, dtype=torch.bfloat16))
    straight = run(range(6), make(p), p).detach().clone()
    p = torch.nn.Parameter(torch.zeros(64, dtype=torch.bfloat16))
    opt = make(p)
    run(range(3), opt, p)
    saved, weights = opt.state_dict(), p.detach().clone()
    p2 = torch.nn.Parameter(weights)
    opt2 = make(p2)
    opt2.load_state_dict(saved)  # the moments AND the rounding generator's state
    assert opt2.state[p2]["exp_avg"].dtype == torch.bfloat16
    assert torch.equal(run(range(3, 6), opt2, p2).detach(), straight)


def _mixed_weights():
    """bf16 weights of several shapes, one channels_last (strided) and one without a gradient this step."""
    g = torch.Generator().manual_seed(1)
    shapes = [(5,), (3, 4), (2, 3, 3, 3), (7, 2), (1,), (4, 4)]
    params = [torch.nn.Parameter(torch.randn(s, generator=g).bfloat16()) for s in shapes]
    params[2] = torch.nn.Parameter(params[2].detach().to(memory_format=torch.channels_last))
    return params, [None if i == 4 else torch.randn(s, generator=g).bfloat16() for i, s in enumerate(shapes)]


@pytest.mark.parametrize("state_dtype", [torch.bfloat16, torch.float32])
def test_bf16_adamw_chunking_does_not_change_the_update(monkeypatch, state_dtype):
    # With rounding to nearest (no random bits) the flat-chunk update must be the same bits whether each weight
    # is its own chunk, chunks hold a few weights, or all weights share one; and one step must equal
    # torch's AdamW on fp32 copies rounded to bf16 (skipping the weight without a gradient).
    _round_to_nearest(monkeypatch)
    results = []
    for chunk_numel in (1, 20, 10**9):
        params, grads = _mixed_weights()
        opt = BF16AdamW(params, lr=1e-2, weight_decay=0.1, state_dtype=state_dtype, chunk_numel=chunk_numel)
        for _ in range(3):
            for p, grad in zip(params, grads):
                p.grad = grad
            opt.step()
        results.append([p.detach().clone() for p in params])
        assert params[2].is_contiguous(memory_format=torch.channels_last)
        assert opt.state[params[0]]["step"] == 3 and params[4] not in opt.state
    assert all(torch.equal(a, b) for run in results[1:] for a, b in zip(results[0], run))
    params, grads = _mixed_weights()
    fp32 = [torch.nn.Parameter(p.detach().float()) for p in params]
    ref = torch.optim.AdamW(fp32, lr=1e-2, weight_decay=0.1, foreach=False)
    ours = BF16AdamW(params, lr=1e-2, weight_decay=0.1, state_dtype=state_dtype, chunk_numel=20)
    for p, q, grad in zip(params, fp32, grads):
        p.grad, q.grad = grad, None if grad is None else grad.float()
    ref.step()
    ours.step()
    for p, q in zip(params, fp32):
        assert torch.allclose(p.float(), q.detach().bfloat16().float(), rtol=2**-7, atol=0), (p, q)


def test_bf16_adamw_weights_at_different_steps_get_their_own_bias_correction(monkeypatch):
    # The first weight has a gradient one step earlier than the second: in one chunk they would share a step
    # count (the second weight's first move would be 0.53x what Adam's bias correction gives: lr * sign(grad)).
    _round_to_nearest(monkeypatch)
    params, grads = _mixed_weights()
    params, grads = params[:2], grads[:2]
    fp32 = [torch.nn.Parameter(p.detach().float()) for p in params]
    ours = BF16AdamW(params, lr=1e-2, state_dtype=torch.float32)
    ref = torch.optim.AdamW(fp32, lr=1e-2, foreach=False)
    for with_grad in ([True, False], [True, True]):
        for p, q, grad, on in zip(params, fp32, grads, with_grad):
            p.grad, q.grad = (grad, grad.float()) if on else (None, None)
        ours.step()
        ref.step()
    assert [ours.state[p]["step"] for p in params] == [2, 1]
    for p, q in zip(params, fp32):
        assert torch.allclose(p.float(), q.detach().bfloat16().float(), rtol=2**-7, atol=0), (p, q)


def _kernels(work) -> int:
    """Operators ``work()`` dispatches that stand for a device kernel (the bench's ops/step count)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from bench.fake import launches_kernel

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            Count.n += launches_kernel(func, out)
            return out

    with Count():
        work()
    return Count.n


def test_bf16_adamw_launches_as_many_kernels_for_100_weights_as_for_10():
    # The point of the flat chunks: the operators per step do not grow with the number of weight tensors
    # (per weight they did: ~25 each; SDXL has ~1,700).
    counts = []
    for n in (10, 100):
        params = [torch.nn.Parameter(torch.ones(8, dtype=torch.bfloat16)) for _ in range(n)]
        opt = BF16AdamW(params, lr=1e-3)
        for _ in range(2):  # the first step creates the state (zeros_like per weight)
            for p in params:
                p.grad = torch.ones_like(p)
            count = _kernels(opt.step)
        counts.append(count)
    assert counts[0] == counts[1] < 40, counts


# ------------------------------------------------------------------ bf16 master weights in training
BROKEN = pytest.mark.xfail(
    strict=True, raises=AssertionError, reason="rounding broken on purpose: the test must catch it"
)


def _round_to_nearest(monkeypatch):
    import train.optimizers

    monkeypatch.setattr(train.optimizers, "stochastic_round_bf16", lambda x, generator=None: x.bfloat16())


@pytest.mark.parametrize("sabotage", [None, pytest.param(_round_to_nearest, marks=BROKEN)],
                         ids=["stochastic-rounding", "round-to-nearest"])
def test_bf16_master_weights_train_like_fp32(tmp_path, latents_sdxl, monkeypatch, sabotage):
    """10 MaPO steps at lr 1e-4 under bf16 autocast: bf16 weights + moments with stochastic rounding vs fp32 AdamW.

    Measured (tiny-sdxl, CPU): losses within 0.7% of fp32's at every step, and the bf16 run's weight change
    projected on fp32's is 0.96 of it (the update in flat chunks since 2026-12-01; per weight it was 0.95).
    Rounding to nearest instead (the sabotage) loses updates: 3.6% loss difference, projection 0.48.
    """
    from train.model_setup import load_base_unet_and_scheduler

    if sabotage is not None:
        sabotage(monkeypatch)
    runs = {}
    for name, extra in (("fp32", ("--mixed-precision", "bf16")), ("bf16", BF16)):
        runs[name] = tmp_path / name
        train_ok(latents_sdxl, runs[name], 10, "--learning-rate", "1e-4", *extra)
    a, b = metrics_by_step(runs["fp32"]), metrics_by_step(runs["bf16"])
    worst = max(abs(a[s]["loss"] - b[s]["loss"]) / abs(a[s]["loss"]) for s in a)
    base = {k: v.float() for k, v in load_base_unet_and_scheduler("tiny-sdxl")[0].state_dict().items()}
    wa, wb = unet_weights(runs["fp32"]), unet_weights(runs["bf16"])
    assert next(iter(wb.values())).dtype == torch.bfloat16
    da = torch.cat([(wa[k].float() - base[k]).flatten() for k in base])
    db = torch.cat([(wb[k].float() - base[k].bfloat16().float()).flatten() for k in base])  # from its bf16 start
    along = (db @ da / (da @ da)).item()
    print(f"bf16 master vs fp32: worst relative loss difference {worst:.2e}, update projected on fp32's {along:.3f}")
    assert worst < 1.5e-2
    assert 0.85 < along < 1.15
