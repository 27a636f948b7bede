"""SPO: the stochastic DDIM step against diffusers, log-probabilities and the loss by hand, pairing, and
``mapo-train --objective spo`` end to end (SD1.5 LoRA loads with plain diffusers, SDXL resumes exactly)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from tests.helpers import run_cli, write_prompts
from train.cli import app
from train.ddim_logprob import ddim_scheduler, ddim_step_with_log_prob, step_kwargs
from train.losses import spo_loss
from train.spo import JudgePreference, threshold_gap

# --------------------------------------------------------------------------- the DDIM step


def _scheduler(prediction_type="epsilon", steps=10):
    from diffusers import EulerDiscreteScheduler

    from pipeline.models.builtin import _SCHEDULER

    config = EulerDiscreteScheduler(**{**_SCHEDULER, "prediction_type": prediction_type}).config
    return ddim_scheduler(config, steps)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_step_equals_diffusers_with_the_same_noise(prediction_type):
    sched = _scheduler(prediction_type)
    kw = step_kwargs(sched)
    g = torch.Generator().manual_seed(0)
    for t in sched.timesteps.tolist():  # every step, the last one (prev_t < 0) included
        x, out, noise = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
        mine = ddim_step_with_log_prob(out, t, x, eta=1.0, variance_noise=noise, **kw)
        ref = sched.step(out, t, x, eta=1.0, variance_noise=noise)
        torch.testing.assert_close(mine.prev_sample, ref.prev_sample, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mine.pred_original_sample, ref.pred_original_sample, rtol=1e-5, atol=1e-5)
        assert torch.isfinite(mine.log_prob).all() and mine.log_prob.shape == (2,)


def test_ddim_step_takes_one_timestep_per_sample():
    sched = _scheduler()
    kw = step_kwargs(sched)
    g = torch.Generator().manual_seed(1)
    x, out, noise = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    t0, t1 = sched.timesteps[2].item(), sched.timesteps[7].item()
    both = ddim_step_with_log_prob(out, torch.tensor([t0, t1]), x, eta=0.5, variance_noise=noise, **kw)
    for i, t in enumerate((t0, t1)):
        one = ddim_step_with_log_prob(out[i:i + 1], t, x[i:i + 1], eta=0.5, variance_noise=noise[i:i + 1], **kw)
        torch.testing.assert_close(both.prev_sample[i:i + 1], one.prev_sample)
        torch.testing.assert_close(both.log_prob[i:i + 1], one.log_prob)


def test_log_prob_by_hand():
    # alphas_cumprod [0.81, 0.36], step size 1, t = 1: a_t = 0.36, a_prev = 0.81, beta_t = 0.64.
    # eps = [0.5, -1], x = [1.2, 0]: x0 = (x - 0.8 eps) / 0.6 = [4/3, 4/3].
    # variance = (0.19 / 0.64) * (1 - 0.36 / 0.81) = 0.296875 * 5/9 = 0.16493056; std = 0.40611643 (eta 1).
    # mean = 0.9 * x0 + sqrt(0.19 - variance) * eps = 1.2 + 0.15833333 * eps = [1.27916667, 1.04166667].
    # x_{t-1} = mean + std * [1, 0]: per-element log N = -z^2/2 - log std - log sqrt(2 pi), z = [1, 0];
    # averaged over the 2 elements: -0.25 + 0.90111538 - 0.91893853 = -0.26782315.
    variance = (0.19 / 0.64) * (1 - 0.36 / 0.81)
    std = math.sqrt(variance)
    coeff = math.sqrt(0.19 - variance)
    mean = [1.2 + coeff * 0.5, 1.2 - coeff]
    expected = -0.25 - math.log(std) - 0.5 * math.log(2 * math.pi)
    acp = torch.tensor([0.81, 0.36], dtype=torch.float64)
    x = torch.tensor([1.2, 0.0], dtype=torch.float64).reshape(1, 1, 1, 2)
    eps = torch.tensor([0.5, -1.0], dtype=torch.float64).reshape(1, 1, 1, 2)
    prev = torch.tensor([mean[0] + std, mean[1]], dtype=torch.float64).reshape(1, 1, 1, 2)
    got = ddim_step_with_log_prob(eps, 1, x, acp, step_size=1, final_alpha_cumprod=1.0, eta=1.0, prev_sample=prev)
    assert got.pred_original_sample.flatten().tolist() == pytest.approx([4 / 3, 4 / 3], rel=1e-12)
    assert got.mean.flatten().tolist() == pytest.approx(mean, rel=1e-12)
    assert got.std.item() == pytest.approx(std, rel=1e-12)
    assert got.log_prob.item() == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(-0.26782315, abs=1e-8)


def test_log_prob_gradient_flows_through_the_mean_only():
    acp = torch.tensor([0.81, 0.36])
    x = torch.randn(1, 1, 2, 2)
    eps = torch.randn(1, 1, 2, 2, requires_grad=True)
    prev = torch.randn(1, 1, 2, 2, requires_grad=True)
    got = ddim_step_with_log_prob(eps, 1, x, acp, step_size=1, final_alpha_cumprod=1.0, eta=1.0, prev_sample=prev)
    got.log_prob.sum().backward()
    assert eps.grad is not None and eps.grad.abs().sum() > 0 and prev.grad is None


def test_ddim_step_refuses_bad_calls():
    acp, x = torch.tensor([0.81, 0.36]), torch.zeros(1, 1, 2, 2)
    kw = dict(step_size=1, final_alpha_cumprod=1.0, eta=1.0)
    with pytest.raises(ValueError, match="exactly one"):
        ddim_step_with_log_prob(x, 1, x, acp, **kw)
    with pytest.raises(ValueError, match="prediction_type"):
        ddim_step_with_log_prob(x, 1, x, acp, prediction_type="flow", variance_noise=x, **kw)


# --------------------------------------------------------------------------- the loss


def _t(*v):
    return torch.tensor(v, dtype=torch.float64, requires_grad=True)


def test_spo_loss_by_hand():
    # r_w = 0.05 - 0 = 0.05, r_l = -0.02 - 0 = -0.02 (both inside [log 0.9, log 1.1] = [-0.10536, 0.09531]);
    # logits = 10 * 0.07 = 0.7; loss = -logsigmoid(0.7) = log(1 + e^-0.7) = 0.40318605.
    lw, ll = _t(0.05), _t(-0.02)
    out = spo_loss(lw, ll, _t(0.0), _t(0.0), beta=10.0, clip=0.1)
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-0.7)), rel=1e-12)
    assert out.loss.item() == pytest.approx(0.40318605, abs=1e-8)
    assert out.metrics["implicit_acc"].item() == 1.0
    assert out.metrics["ratio_w"].item() == pytest.approx(math.exp(0.05), rel=1e-6)
    out.loss.backward()
    # d loss / d logp_w = -beta * sigmoid(-0.7) = -10 / (1 + e^0.7) = -3.3181223
    assert lw.grad.item() == pytest.approx(-10 / (1 + math.exp(0.7)), rel=1e-12)
    assert ll.grad.item() == pytest.approx(10 / (1 + math.exp(0.7)), rel=1e-12)


def test_spo_loss_clips_the_ratio_as_published():
    # r_w = 0.5 clipped to log 1.1, r_l = -0.5 clipped to log 0.9: logits = 10 * log(1.1 / 0.9) = 2.00670695,
    # loss = log(1 + e^-2.00670695) = 0.12613088; outside the clip range no gradient reaches the policy.
    lw, ll = _t(0.5), _t(-0.5)
    out = spo_loss(lw, ll, _t(0.0), _t(0.0), beta=10.0, clip=0.1)
    logits = 10 * math.log(1.1 / 0.9)
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-logits)), rel=1e-12)
    out.loss.backward()
    assert lw.grad.item() == 0.0 and ll.grad.item() == 0.0


def test_spo_loss_is_ln2_when_policy_is_the_reference_and_never_updates_the_reference():
    lw, ll = _t(-0.3, 0.2), _t(0.1, -0.4)
    rw, rl = _t(-0.3, 0.2), _t(0.1, -0.4)
    out = spo_loss(lw, ll, rw, rl)
    assert out.loss.item() == pytest.approx(math.log(2), rel=1e-12)
    out.loss.backward()
    assert rw.grad is None and rl.grad is None and lw.grad is not None
    with pytest.raises(ValueError):
        spo_loss(lw, ll, rw, rl, clip=1.5)


# --------------------------------------------------------------------------- pairing and preference


def test_threshold_is_the_public_softmax_gap():
    # The public compare: softmax over (best, worst) scores, kept when p_best - p_worst > threshold.
    def public_keeps(best, worst, threshold):
        p = torch.tensor([best, worst]).softmax(0)
        return bool(p[0] - p[1] > threshold)

    from pipeline.judges.reward import pair_candidates

    for scores in ([0.9, 0.1], [0.5, 0.1, 0.3], [21.3, 20.1], [0.2, 0.2]):
        for threshold in (0.0, 0.3, 0.4):
            found = pair_candidates(scores, "best-worst", threshold_gap(threshold))
            assert found[0].kept == public_keeps(max(scores), min(scores), threshold), (scores, threshold)
            if found[0].kept:
                assert (scores[found[0].chosen], scores[found[0].rejected]) == (max(scores), min(scores))


def test_lower_is_better_judges_are_turned_around():
    class Judge:
        name, higher_is_better, threshold = "world-unsafe", False, 0.5

        def score(self, images, prompts):
            return [0.1, 0.7]

    assert JudgePreference(Judge()).__call__(["a", "b"], ["p", "q"], [0, 0]) == pytest.approx([-0.1, -0.7])


# --------------------------------------------------------------------------- the CLI


def _spo_args(prompts, out, model, steps, *extra):
    return ["--objective", "spo", "--prompts", prompts, "--model", model, "--output-dir", out,
            "--max-steps", str(steps), "--batch-size", "2", "--num-inference-steps", "4", "--spo-start-step", "1",
            "--spo-threshold", "0",
            "--preference-model", "world-style", "--validation-style", "cartoon", "--learning-rate", "1e-3",
            "--report-to", "none", *extra]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    return write_prompts(tmp_path_factory.mktemp("spo") / "prompts.txt", [
        "a red circle at the top left", "a blue square at the bottom right", "a green triangle in the center"])


@pytest.mark.parametrize("args, message", [
    (["--objective", "spo", "--model", "tiny-sdxl"], "--objective spo samples its own images: pass --prompts"),
    (["--objective", "spo", "--model", "tiny-sdxl", "--prompts", "p.txt", "--data", "lat"], "--data is not used"),
    (["--objective", "mapo", "--model", "tiny-sdxl"], "--data is required for --objective mapo"),
    (["--objective", "spo", "--model", "tiny-sdxl", "--prompts", "p.txt", "--preference-model", "world-style"],
     "needs --validation-style"),
])
def test_which_input_each_objective_needs(tmp_path, args, message):
    result = run_cli(app, [*args, "--output-dir", tmp_path / "run"])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("model, candidates", [("tiny-sd15", 4), ("tiny-sdxl", 2)])
def test_spo_lora_trains_and_loads_with_the_cards_snippet(request, tmp_path, prompts, model, candidates):
    """SD1.5 from a text file, SDXL from a Pick-a-Pic Parquet shard's caption column."""
    source = prompts if model == "tiny-sd15" else request.getfixturevalue("pickapic")
    out = tmp_path / "run"
    result = run_cli(app, _spo_args(source, out, model, 2, "--lora-rank", "4", "--learning-rate", "1e-2"))
    assert result.exit_code == 0 and "2 steps (0 -> 2)" in result.output, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5) and rows[0]["pairs"] > 0  # policy = reference
    assert {"logp_w", "logp_l", "ratio_w", "pair_rate", "preference", "implicit_acc"} <= set(rows[0])
    config = json.loads((out / "training_config.json").read_text())
    assert config["spo"]["num_candidates"] == candidates and config["beta"] == 10.0  # upstream defaults per family
    card = (out / "README.md").read_text()
    assert "SPO" in card and "world-style" in card
    snippet = card.split("```python\n")[1].split("```")[0].replace("PATH_TO_THIS_FOLDER", str(out))
    namespace: dict = {}
    exec(snippet.rsplit("image = ", 1)[0], namespace)  # noqa: S102 - our own generated snippet
    pipe = namespace["pipe"]
    assert pipe.get_list_adapters()["unet"]


def _rows(out):
    return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def _indices(out):
    return [json.loads(x)["indices"] for x in (out / "debug" / "weights-rank0.jsonl").read_text().splitlines()]


def test_spo_sdxl_resume_after_sigterm_equals_uninterrupted(tmp_path, prompts, monkeypatch):
    """Same prompts, candidates, continuation choices and losses after a SIGTERM stop and a resume."""
    import train.trainer as trainer_mod

    args = ("--checkpointing-steps", "100", "--debug-weight-checksums")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_cli(app, _spo_args(prompts, straight, "tiny-sdxl", 3, *args)).exit_code == 0
    real = trainer_mod.Trainer._stop_requested
    monkeypatch.setattr(trainer_mod.Trainer, "_stop_requested",
                        lambda self: "SIGTERM" if self.state.global_step == 2 else real(self))
    result = run_cli(app, _spo_args(prompts, resumed, "tiny-sdxl", 3, *args))
    assert result.exit_code == 143, result.output
    monkeypatch.setattr(trainer_mod.Trainer, "_stop_requested", real)
    result = run_cli(app, _spo_args(prompts, resumed, "tiny-sdxl", 3, *args, "--resume-from-checkpoint", "latest"))
    assert result.exit_code == 0 and "1 step (2 -> 3)" in result.output, result.output
    a, b = _rows(straight), _rows(resumed)
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for step in a:
        assert {k: a[step][k] for k in ("loss", "pairs", "preference", "logp_w")} == \
               {k: b[step][k] for k in ("loss", "pairs", "preference", "logp_w")}, step
    assert _indices(straight) == _indices(resumed)
    other = run_cli(app, _spo_args(prompts, resumed, "tiny-sdxl", 4, *args, "--resume-from-checkpoint", "latest",
                                   "--num-candidates", "3"))
    assert other.exit_code == 2 and "different spo" in other.output, other.output
    # The prompt order crosses an epoch (3 prompts, 2 per step) the same way in both runs.
    assert (
        [r["checksum"] for r in map(json.loads, (straight / "debug" / "weights-rank0.jsonl").read_text().splitlines())]
        == [r["checksum"]
            for r in map(json.loads, (resumed / "debug" / "weights-rank0.jsonl").read_text().splitlines())]
    )


@pytest.mark.parametrize("processes", [1, 2])
def test_a_micro_batch_without_pairs_updates_nothing_and_keeps_ddp_ranks_in_step(tmp_path, prompts, monkeypatch,
                                                                               processes):
    """No kept pair: zero loss. Under DDP (2 processes) it must still run the UNet forward and backward,
    or the ranks with pairs would wait forever in the all-reduce: every weight gets a zero gradient."""
    from pipeline.cli.options import build_config
    from train.config import TrainConfig
    from train.spo import Pairs
    from train.trainer import Trainer

    cfg = build_config(TrainConfig, {"objective": "spo", "prompts": str(prompts), "model": "tiny-sdxl",
                                     "output_dir": str(tmp_path / "run"), "batch_size": 2, "num_inference_steps": 4,
                                     "spo_start_step": 1, "preference_model": "world-style",
                                     "validation_style": "cartoon", "report_to": "none"})
    trainer = Trainer(cfg)
    try:
        trainer.setup()
        online, unet = trainer.source, trainer.unet
        monkeypatch.setattr(type(online.acc), "num_processes", property(lambda self: processes))
        empty = torch.zeros((0, 4, 8, 8))
        monkeypatch.setattr(online, "sample_pairs",
                            lambda *a: Pairs(empty, torch.zeros(0, dtype=torch.long), empty,
                                             empty, torch.zeros(0, dtype=torch.long), [], 4, [0.5] * 8))
        gen = torch.Generator().manual_seed(0)
        out = online.loss(unet, online.next_batch(unet, gen), gen, trainer.objective,
                          reference=trainer.models.reference)
        assert out.loss.item() == 0 and out.metrics["pairs"].item() == 0 and not out.has_signal
        assert math.isnan(out.metrics["logp_w"].item()) and math.isnan(out.metrics["loss"].item())  # not measured
        out.loss.backward()
        grads = [p.grad for p in trainer.params]
        if processes == 1:
            assert all(g is None for g in grads)  # a constant: nothing to all-reduce on one process
        else:
            assert all(g is not None and not g.any() for g in grads)  # every weight took part, with zeros
    finally:
        trainer.cleanup()


def test_a_step_without_any_pair_leaves_the_weights_as_they_were(tmp_path, prompts):
    """No kept pair in the whole step: no optimizer update (AdamW's weight decay and momentum would still move the
    weights, and fp16's GradScaler refuses a step without gradients); the metrics say so."""
    from diffusers import UNet2DConditionModel

    from train.model_setup import load_base_unet_and_scheduler

    out = tmp_path / "run"
    # A softmax gap above 0.999999 between two rewards in [0, 1] never happens: no pair is ever kept.
    result = run_cli(app, _spo_args(prompts, out, "tiny-sdxl", 2, "--spo-threshold", "0.999999"))
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["pairs"] for r in rows] == [0, 0] and all(math.isnan(r["grad_norm"]) for r in rows)
    assert all(math.isnan(r["loss"]) for r in rows)  # no pair, no loss measured (not a 0 averaged in)
    trained = UNet2DConditionModel.from_pretrained(str(out / "unet"))
    base = load_base_unet_and_scheduler("tiny-sdxl")[0]
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), base.state_dict().values()))


def test_the_trainer_steps_on_the_losss_has_signal_not_on_a_metric_name(tmp_path, prompts, monkeypatch):
    """The loop reads LossOutput.has_signal: an SPO loss that keeps pairs but logs no "pairs" metric still updates
    the weights (the loop once looked up that metric, and would have skipped every step here)."""
    from train.batch_sources import OnlineSpo

    real, kept = OnlineSpo.loss, []

    def without_pair_metrics(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        assert out.has_signal == (out.metrics["pairs"] > 0)
        kept.append(out.has_signal)
        return type(out)(out.loss, {k: v for k, v in out.metrics.items() if not k.startswith("pair")}, out.has_signal)

    monkeypatch.setattr(OnlineSpo, "loss", without_pair_metrics)
    out = tmp_path / "run"
    result = run_cli(app, _spo_args(prompts, out, "tiny-sdxl", 3))
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(kept) and len(kept) == len(rows) == 3 and not any("pairs" in r for r in rows)
    assert [math.isfinite(r["grad_norm"]) for r in rows] == kept  # one micro-batch per step


def test_resuming_an_spo_run_as_another_objective_is_refused_in_one_line(tmp_path):
    from pipeline.errors import UserError
    from train.config import TrainConfig
    from train.run_folder import TRAINING_CONFIG, check_resume_config

    (tmp_path / TRAINING_CONFIG).write_text(
        json.dumps({"objective": "spo", "spo": {"num_candidates": 2}, "world_size": 1})
    )
    mine = {**TrainConfig(data="lat", output_dir="run").to_json(), "objective": "mapo", "world_size": 1}
    # Only what differs is named: the options both sides have at their defaults are not.
    with pytest.raises(UserError, match=r"different objective 'spo' \(now 'mapo'\), spo \{'num_candidates': 2\} "
                                        r"\(now None\); "):
        check_resume_config(tmp_path, mine)


@pytest.mark.parametrize("num_candidates", [2, 3])
def test_a_non_finite_preference_score_is_in_no_pair_and_counted(tmp_path, prompts, monkeypatch, num_candidates):
    """Issue 24 item 1: a preference model returning NaN for a candidate (an fp16 head can) gave a kept pair with
    gap NaN: NaN fails `gap <= min_gap`, and `rewards[a] >= rewards[b]` is False for NaN, so the other was chosen.
    Now a non-finite candidate is left out of the pairing, counted in the metrics, and never in a pair."""
    from pipeline.cli.options import build_config
    from train.config import TrainConfig
    from train.trainer import Trainer

    cfg = build_config(TrainConfig, {"objective": "spo", "prompts": str(prompts), "model": "tiny-sdxl",
                                     "output_dir": str(tmp_path / "run"), "batch_size": 2, "num_inference_steps": 3,
                                     "spo_start_step": 1, "spo_threshold": 0.0, "num_candidates": num_candidates,
                                     "preference_model": "world-style", "validation_style": "cartoon",
                                     "report_to": "none"})
    trainer = Trainer(cfg)
    try:
        trainer.setup()
        online = trainer.source
        calls = []

        def nan_for_candidate_0(images, texts, timesteps):  # candidate-major: the first B images are candidate 0
            b = len(images) // num_candidates
            calls.append(len(images))
            return [float("nan") if i < b else 0.1 * i for i in range(len(images))]

        monkeypatch.setattr(online, "preference", nan_for_candidate_0)
        sampled, real_sample = [], online.sample_pairs
        monkeypatch.setattr(online, "sample_pairs", lambda *a: sampled.append(real_sample(*a)) or sampled[-1])
        gen = torch.Generator().manual_seed(0)
        out = online.loss(trainer.unet, online.next_batch(trainer.unet, gen), gen, trainer.objective,
                          reference=trainer.models.reference)
        compared = len(calls) * 2  # one comparison per prompt (batch 2) per scored step
        pairs = out.metrics["pairs"].item()
        assert all(math.isfinite(g) for g in sampled[0].gaps) and len(sampled[0].gaps) == pairs
        assert out.metrics["non_finite_rewards"].item() == sum(calls) // num_candidates
        assert math.isfinite(out.metrics["preference"].item())  # the mean of the finite rewards
        if num_candidates == 2:  # one finite candidate per prompt: nothing to compare
            assert pairs == 0 and not out.has_signal
        else:  # candidates 1 and 2 still make a pair, with a finite gap
            assert pairs == compared and out.has_signal
            assert out.metrics["pair_rate"].item() == 1.0
    finally:
        trainer.cleanup()
