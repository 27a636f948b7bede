"""`mapo-train` end to end on tiny models with real precomputed latents (in-process CLI)."""
from __future__ import annotations

import json
import re

import pytest
import torch

from tests.helpers import run_cli
from tests.train.conftest import train_args
from train.cli import app


def _train(data, out, model="tiny-sdxl", steps=2, *extra):
    result = run_cli(app, train_args(data, out, model, steps, *extra))
    assert result.exit_code == 0, result.output
    return result


def _base_pipe(model):
    from diffusers import DiffusionPipeline

    from pipeline.models.loading import resolve_model_source

    return DiffusionPipeline.from_pretrained(resolve_model_source(model))


def _probe(unet):
    """The UNet's prediction on fixed inputs (fp32, no grad): equal outputs = equal effective weights."""
    c = unet.config
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, c.in_channels, 8, 8, generator=g)
    cond = {"encoder_hidden_states": torch.randn(2, 5, c.cross_attention_dim, generator=g)}
    if c.addition_embed_type == "text_time":
        pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
        cond["added_cond_kwargs"] = {"text_embeds": torch.randn(2, pooled, generator=g),
                                     "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
    was_training = unet.training
    unet.eval()
    with torch.no_grad():
        out = unet(x, torch.tensor([500, 20]), **cond, return_dict=False)[0].float()
    unet.train(was_training)
    return out


@pytest.fixture
def trained_probe(monkeypatch):
    """The trained UNet's :func:`_probe` output, taken by the trainer just before it saves."""
    import train.trainer as trainer_mod

    seen = {}
    real = trainer_mod.Trainer.save_final

    def save_final(self, final_metrics):
        seen["probe"] = _probe(self.accelerator.unwrap_model(self.unet))
        return real(self, final_metrics)

    monkeypatch.setattr(trainer_mod.Trainer, "save_final", save_final)
    return seen


def _generate(pipe):
    out = pipe("a striped test picture", num_inference_steps=2, height=64, width=64, output_type="np",
               generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 64, 64, 3)
    return out.images


@pytest.mark.parametrize("model,objective,lora", [
    ("tiny-sdxl", "mapo", 0), ("tiny-sdxl", "dpo", 4), ("tiny-sdxl", "sft", 0),
    ("tiny-sd15", "mapo", 4), ("tiny-sd15", "dpo", 0), ("tiny-sd15", "sft", 4),
    ("tiny-sdxl", "kto", 0), ("tiny-sd15", "kto", 4), ("tiny-sdxl", "kto", 4), ("tiny-sd15", "kto", 0),
])
def test_objectives_train_and_outputs_load_with_plain_diffusers(
    request, tmp_path, model, objective, lora, trained_probe
):
    from diffusers import UNet2DConditionModel

    data = request.getfixturevalue("latents_sdxl" if model == "tiny-sdxl" else "latents_sd15")
    out = tmp_path / "run"
    result = _train(data, out, model, 2, "--objective", objective, "--lora-rank", str(lora))
    assert "2 steps (0 -> 2)" in result.output
    config = json.loads((out / "training_config.json").read_text())
    assert (config["model"], config["objective"], config["lora_rank"]) == (model, objective, lora)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    expected = {"loss", "lr", "grad_norm", "pairs_per_s", "peak_mem_gb"}
    expected |= {"e", "ref_e", "kl", "reward_desirable", "reward_undesirable"} if objective == "kto" else {"e_w"}
    expected |= {"implicit_acc"} if objective != "sft" else set()
    expected |= {"e_l"} if objective in ("mapo", "dpo") else set()
    expected |= {"sft_term", "margin_term", "s_w", "s_l", "margin"} if objective == "mapo" else set()
    assert expected <= set(rows[0]) and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    # The summary prints the last step's metrics with enough digits to tell e_w from e_l.
    printed = dict(re.findall(r"\b(loss|e_w|e_l) ([-+.\deE]+)[,;]", result.output))
    assert "loss" in printed, result.output
    for key, text in printed.items():
        assert float(text) == pytest.approx(rows[-1][key], rel=1e-3)
    if {"e_w", "e_l"} <= set(printed):
        assert (printed["e_w"] == printed["e_l"]) == (rows[-1]["e_w"] == rows[-1]["e_l"])
    card = (out / "README.md").read_text()
    assert model in card and objective.upper() in card and "## How to load" in card
    # The card's own snippet loads the result (a built-in name is written as its folder, not as a hub id).
    snippet = card.split("```python\n")[1].split("```")[0].replace("PATH_TO_THIS_FOLDER", str(out))
    namespace: dict = {}
    exec(snippet.rsplit("image = ", 1)[0], namespace)  # noqa: S102 - our own generated snippet
    assert namespace["pipe"].unet is not None
    pipe = _base_pipe(model)
    before = _generate(pipe)
    if lora:
        assert (out / "pytorch_lora_weights.safetensors").exists() and not (out / "unet").exists()
        pipe.load_lora_weights(str(out))
        assert pipe.get_list_adapters()["unet"]
    else:
        unet = UNet2DConditionModel.from_pretrained(str(out / "unet"))
        assert (out / "unet" / "diffusion_pytorch_model.safetensors").exists()
        pipe = type(pipe)(**{**pipe.components, "unet": unet})
    after = _generate(pipe)
    assert not (before == after).all()  # the trained weights are the ones generating
    # ... and at their trained strength: the loaded UNet computes what the trained one did.
    torch.testing.assert_close(_probe(pipe.unet), trained_probe["probe"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model", ["tiny-sdxl", "tiny-sd15"])
def test_lora_alpha_other_than_rank_loads_at_the_trained_strength(request, tmp_path, model, trained_probe):
    data = request.getfixturevalue("latents_sdxl" if model == "tiny-sdxl" else "latents_sd15")
    out = tmp_path / "run"
    _train(data, out, model, 2, "--lora-rank", "2", "--lora-alpha", "16", "--learning-rate", "1e-2")
    pipe = _base_pipe(model)
    base = _probe(pipe.unet)
    pipe.load_lora_weights(str(out))
    loaded = _probe(pipe.unet)
    assert (loaded - trained_probe["probe"]).abs().max() < 1e-3 * (trained_probe["probe"] - base).abs().max()
    torch.testing.assert_close(loaded, trained_probe["probe"], rtol=1e-4, atol=1e-5)


def test_mapo_overfits_a_handful_of_pairs(tmp_path, latents_sd15):
    """MaPO on 8 pairs, high LR: afterwards e_w < e_l on every training pair (implicit accuracy 1.0)."""
    from diffusers import UNet2DConditionModel

    from pipeline.data.latent_shards import collate, open_latents
    from train.data import to_compute
    from train.model_setup import load_base_unet_and_scheduler
    from train.step import Objective, draw_noise, errors, unet_inputs

    out = tmp_path / "run"
    _train(latents_sd15, out, "tiny-sd15", 150, "--batch-size", "4", "--learning-rate", "2e-3", "--beta", "1",
           "--checkpointing-steps", "1000")

    base, sched = load_base_unet_and_scheduler("tiny-sd15")
    trained = UNet2DConditionModel.from_pretrained(str(out / "unet"))
    ds = open_latents(latents_sd15)
    batch = collate([ds[i] for i in range(len(ds))])
    batch = to_compute({k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}, "cpu")
    obj = Objective("mapo", 1.0, 1000, "epsilon")

    def accuracy(unet):
        e_w = e_l = 0
        gen = torch.Generator().manual_seed(123)
        with torch.no_grad():
            for _ in range(16):  # average over noise draws and timesteps
                noise, t = draw_noise(batch["latents"], 1000, gen)
                x_t, tt, target, cond = unet_inputs(batch, noise, t, sched, obj)
                w, lose = errors(unet, x_t, tt, target, cond).chunk(2)
                e_w, e_l = e_w + w, e_l + lose
        return (e_w < e_l).float().mean().item()

    assert accuracy(trained) == 1.0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["implicit_acc"] for r in rows[-20:]) / 20 > sum(r["implicit_acc"] for r in rows[:20]) / 20


@pytest.mark.parametrize("case", ["raw images", "other family", "missing", "no data"])
def test_bad_data_refused_with_one_line(tmp_path, case, pickapic, latents_sd15):
    data = {
        "raw images": pickapic.parent, "other family": latents_sd15, "missing": tmp_path / "nope", "no data": None
    }[case]
    args = train_args(data, tmp_path / "run")
    if data is None:
        args = args[2:]
    result = run_cli(app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "precompute" in lines[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_existing_run_refused_then_overwrite(tmp_path, latents_sdxl):
    out = tmp_path / "run"
    _train(latents_sdxl, out, "tiny-sdxl", 1, "--lora-rank", "2")
    result = run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", 1))
    assert result.exit_code == 2 and "--overwrite" in result.output
    _train(latents_sdxl, out, "tiny-sdxl", 1, "--overwrite")
    assert (out / "unet").exists() and not (out / "pytorch_lora_weights.safetensors").exists()


def test_yaml_config_and_cli_wins(tmp_path, latents_sdxl):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("objective: sft\nlearning-rate: 0.01\nlora_rank: 2\nlora_target_modules: to_q,to_v\nmax_steps: 5\n")
    out = tmp_path / "run"
    _train(latents_sdxl, out, "tiny-sdxl", 1, "--config", cfg, "--learning-rate", "0.002")
    config = json.loads((out / "training_config.json").read_text())
    assert (
        config["objective"] == "sft" and config["lora_rank"] == 2 and config["lora_target_modules"] == ["to_q", "to_v"]
    )
    assert config["learning_rate"] == 0.002 and config["max_steps"] == 1 and config["beta"] is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("objectiv: mapo\n")
    result = run_cli(app, train_args(latents_sdxl, tmp_path / "x", "tiny-sdxl", 1, "--config", bad))
    assert result.exit_code == 2 and "unknown keys: objectiv" in result.output


def test_a_run_folder_repeats_its_options(tmp_path, latents_sdxl):
    """--config <run folder>: its training_config.json's options, the command line winning."""
    first = tmp_path / "run"
    _train(latents_sdxl, first, "tiny-sdxl", 1, "--objective", "sft", "--lora-rank", "2")
    again = tmp_path / "again"
    result = run_cli(app, ["--config", first, "--output-dir", again])
    assert result.exit_code == 0, result.output
    a, b = (json.loads((d / "training_config.json").read_text()) for d in (first, again))
    same = ("objective", "lora_rank", "learning_rate", "max_steps", "batch_size", "model", "data")
    assert {k: a[k] for k in same} == {k: b[k] for k in same} and b["output_dir"] == str(again)


def test_8bit_adam_without_bitsandbytes_is_a_clear_error(tmp_path, latents_sdxl):
    pytest.importorskip  # noqa: B018
    try:
        import bitsandbytes  # noqa: F401
        pytest.skip("bitsandbytes is installed")
    except ImportError:
        pass
    result = run_cli(app, train_args(latents_sdxl, tmp_path / "run", "tiny-sdxl", 1, "--use-8bit-adam"))
    assert result.exit_code == 2 and "bitsandbytes" in result.output


def test_nonfinite_losses_skipped_then_stop_keeps_last_checkpoint(tmp_path, latents_sdxl, monkeypatch):
    import train.batch_sources as batch_sources
    from train.losses import LossOutput

    real = batch_sources.compute_loss
    calls = {"n": 0}
    bad_calls = {2} | set(range(5, 100))  # one isolated bad step, then only bad ones

    def flaky(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        if calls["n"] in bad_calls:
            return LossOutput(loss=out.loss * float("nan"), metrics=out.metrics)
        return out

    monkeypatch.setattr(batch_sources, "compute_loss", flaky)
    out = tmp_path / "run"
    result = run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", 20, "--checkpointing-steps", "2",
                                     "--max-consecutive-nonfinite", "3"))
    assert result.exit_code == 2, result.output
    assert "3 non-finite losses in a row (step 7)" in result.output and "checkpoint-6" in result.output
    # weights of step 4: skipped steps change nothing
    assert (out / "checkpoints" / "checkpoint-6" / "model.safetensors").exists()
    assert not (out / "unet").exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 3, 4] and rows[-1]["nonfinite_skipped"] == 1


def test_a_run_whose_every_step_was_skipped_is_an_error_and_saves_nothing(tmp_path, latents_sdxl, monkeypatch):
    import train.batch_sources as batch_sources
    from train.losses import LossOutput

    real = batch_sources.compute_loss

    def always_nan(*a, **k):
        out = real(*a, **k)
        return LossOutput(loss=out.loss * float("nan"), metrics=out.metrics)

    monkeypatch.setattr(batch_sources, "compute_loss", always_nan)
    out = tmp_path / "run"  # 3 skipped steps stay under --max-consecutive-nonfinite (10): the run used to exit 0
    result = run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", 3))
    assert result.exit_code == 2, result.output
    assert "no training step succeeded: all 3 steps had a non-finite loss" in result.output
    assert not (out / "unet").exists()


def test_validation_grids_and_tensorboard(tmp_path, latents_sdxl):
    out = tmp_path / "run"
    _train(latents_sdxl, out, "tiny-sdxl", 2, "--validation-steps", "1", "--validation-prompts", "a cat",
           "--validation-prompts", "a dog", "--validation-inference-steps", "2", "--report-to", "tensorboard",
           "--lora-rank", "2")
    from PIL import Image

    names = sorted(p.name for p in (out / "validation").iterdir())
    assert names == ["before_after.png", "step-000000.png", "step-000001.png", "step-000002.png"]
    assert Image.open(out / "validation" / "step-000001.png").size == (128, 128)  # 2 seeds x 2 prompts at 64 px
    from pipeline.data.images import GRID_CAPTION_HEIGHT, GRID_TITLE_HEIGHT

    # before | after (2 seeds each) at 64 px, scaled to 128 px tiles, titled, one captioned row per prompt
    assert Image.open(out / "validation" / "before_after.png").size == (
        4 * 128 + 3 * 4, GRID_TITLE_HEIGHT + 2 * (GRID_CAPTION_HEIGHT + 128 + 4)
    )
    assert list((out / "logs").rglob("events.out.tfevents.*"))


def _halves(path):
    """The (before, after) images of the one prompt and seed of a before_after.png, at their own 64 px."""
    import numpy as np
    from PIL import Image

    from pipeline.data.images import labelled_grid_tile

    grid = Image.open(path)
    return tuple(np.asarray(labelled_grid_tile(grid, 0, col, 128))[::2, ::2] for col in (0, 1))


@pytest.mark.parametrize("lora", [2, 0])
def test_before_after_after_resume_shows_the_base_model(tmp_path, latents_sdxl, lora):
    """A resumed run did not see step 0: its 'before' images are remade from the untrained weights."""
    import numpy as np
    from PIL import Image

    out = tmp_path / "run"
    args = ("--validation-prompts", "a cat", "--validation-seeds", "0", "--validation-inference-steps", "2",
            "--checkpointing-steps", "1", "--lora-rank", str(lora), "--learning-rate", "1e-2")
    _train(latents_sdxl, out, "tiny-sdxl", 2, *args)
    straight_before, straight_after = _halves(out / "validation" / "before_after.png")
    step0 = np.asarray(Image.open(out / "validation" / "step-000000.png"))
    assert np.array_equal(straight_before, step0) and not np.array_equal(straight_before, straight_after)
    result = _train(latents_sdxl, out, "tiny-sdxl", 2, *args, "--resume-from-checkpoint",
                    str(out / "checkpoints" / "checkpoint-1"))
    assert "1 step (1 -> 2)" in result.output
    before, after = _halves(out / "validation" / "before_after.png")
    assert not np.array_equal(before, after)
    assert np.array_equal(before, step0) and np.array_equal(after, straight_after)


def test_step0_validation_only_on_the_main_process(tmp_path, latents_sdxl, monkeypatch):
    """Pretend to be rank 1: no validation images (rank 0 makes them), no files at all."""
    from accelerate import Accelerator

    monkeypatch.setattr(Accelerator, "is_main_process", property(lambda self: False))
    out = tmp_path / "run"
    _train(latents_sdxl, out, "tiny-sdxl", 1, "--validation-prompts", "a cat", "--validation-inference-steps", "1")
    assert not (out / "validation").exists()


def test_validation_metrics_scored_with_the_shared_scorers(tmp_path, latents_sdxl):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    _train(latents_sdxl, out, "tiny-sdxl", 2, "--validation-steps", "1", "--validation-prompts", "a cat",
           "--validation-seeds", "0", "--validation-inference-steps", "1", "--validation-metrics", "style,clip",
           "--validation-tiny-scorers", "--validation-style", "cartoon", "--report-to", "tensorboard",
           "--lora-rank", "2")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val/style" in r]
    assert [r["step"] for r in val] == [0, 1, 2]
    for r in val:
        assert set(r) == {"step", "val/style", "val/style_rate", "val/clip"}
        assert -2 <= r["val/style"] <= 2 and 0 <= r["val/style_rate"] <= 1 and 0 <= r["val/clip"] <= 100
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    acc = EventAccumulator(str(out / "logs" / "mapo-train")).Reload()
    assert {"val/style", "val/style_rate", "val/clip"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("val/clip")] == [0, 1, 2]


@pytest.mark.parametrize("extra,message", [
    (("--validation-metrics", "sharpness"), "unknown metric 'sharpness'"),
    (("--validation-metrics", "style"), "--validation-style"),
    (("--validation-metrics", "clip", "--validation-style", "oil"), "Unknown --validation-style 'oil'"),
    (("--validation-metrics", "aesthetic"), "aesthetic weights"),
])
def test_validation_metrics_errors_are_one_line_before_training(tmp_path, latents_sdxl, extra, message):
    out = tmp_path / "run"
    result = run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", 1, "--validation-prompts", "a cat", *extra))
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert message in lines[0]
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()




class _Items:
    """Stands in for a LatentDataset in ``training_sampler``, which reads only its length and kind."""

    def __init__(self, n: int, unpaired: bool = False):
        self.n, self.unpaired = n, unpaired

    def __len__(self):
        return self.n


def test_batch_too_large_says_the_largest_batch_that_fits():
    from pipeline.errors import UserError
    from train.config import TrainConfig
    from train.data import training_sampler

    cfg = TrainConfig(data="unused", model="tiny-sdxl", batch_size=4)
    with pytest.raises(UserError, match=r"5 pairs .* x 2 processes\); lower --batch-size to at most 2"):
        training_sampler(cfg, _Items(5), 0, 2)
    with pytest.raises(UserError, match=r"^3 examples .*; launch at most 3 processes"):
        training_sampler(cfg, _Items(3, unpaired=True), 0, 4)
    assert len(training_sampler(cfg, _Items(8), 1, 2)) == 1
