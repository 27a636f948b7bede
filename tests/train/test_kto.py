"""Diffusion-KTO end to end: unpaired examples through the real `mapo-data precompute` CLI, then `mapo-train
--objective kto` on them; pair-only objectives refuse them."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.helpers import run_cli
from tests.train.conftest import train_args, write_unpaired


@pytest.fixture(scope="module")
def unpaired(tmp_path_factory):
    """6 hand-made unpaired examples (2 desirable) through the real `mapo-data precompute` CLI: (latents, its
    output)."""
    from stages.cli import app as data_app

    root = tmp_path_factory.mktemp("kto")
    src = write_unpaired(root / "kto" / "data" / "train-00000-of-00001.parquet")
    lat = root / "latents"
    result = run_cli(data_app, ["precompute", "--input", src.parent.parent, "--output", lat, "--model", "tiny-sd15",
                                "--resolution", "64", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return lat, result.output


def test_unpaired_precompute_then_kto_trains_and_pair_objectives_refuse(tmp_path, unpaired):
    from pipeline.data.latent_shards import open_latents
    from stages.cli import app as data_app
    from train.cli import app as train_app

    lat, output = unpaired
    assert "6 unpaired examples (2 desirable, 33.3%)" in output, output
    arr = np.load(next((lat / "data").glob("*.latents.npy")))
    assert arr.shape == (6, 1, 1, 4, 8, 8)  # [n, V, 1, C, h, w]
    ds = open_latents(lat)
    assert ds.unpaired and ds.labels == [1, 0, 0, 1, 0, 0] and len(ds) == 6
    item = ds[3]
    assert item["latents"].shape == (1, 4, 8, 8) and item["label"].item() == 1 and "example_id" in item
    # The latent of a desirable example is not the one of an undesirable one (the images differ).
    assert not torch.equal(ds[0]["latents"], ds[1]["latents"])
    shown = run_cli(data_app, ["inspect", lat])
    assert shown.exit_code == 0 and "examples" in shown.output and "desirable" in shown.output, shown.output

    out = tmp_path / "run"
    result = run_cli(train_app, train_args(lat, out, "tiny-sd15", 3, "--objective", "kto", "--lora-rank", "2"))
    assert result.exit_code == 0, result.output
    assert "kto: 6 unpaired examples, 33.3% desirable" in result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert {"loss", "e", "ref_e", "kl", "reward_desirable", "reward_undesirable", "implicit_acc",
            "desirable_fraction"} <= set(rows[0])
    # At step 1 the adapter is ~zero (LoRA B starts at 0): policy = reference, every g = 0, loss = 1 - sigmoid(0).
    assert abs(rows[0]["loss"] - 0.5) < 1e-3 and rows[0]["kl"] < 1e-4
    assert all(0.0 <= r["desirable_fraction"] <= 1.0 for r in rows)
    config = json.loads((out / "training_config.json").read_text())
    assert config["data_info"]["examples"] == 6 and config["beta"] == 1000.0
    assert "6 unpaired examples" in (out / "README.md").read_text()
    assert (out / "pytorch_lora_weights.safetensors").exists()

    for objective in ("mapo", "dpo", "sft"):
        refused = run_cli(
            train_app, train_args(lat, tmp_path / f"no-{objective}", "tiny-sd15", 1, "--objective", objective)
        )
        # One error line; dpo at this test's lr 1e-3 also says its start-up learning-rate warning first.
        lines = [ln for ln in refused.output.splitlines() if ln.strip() and not ln.startswith("warning: ")]
        assert refused.exit_code == 2 and len(lines) == 1, refused.output
        assert lines[0].startswith("error: ") and "holds unpaired examples; use --objective kto" in lines[0]


def test_kto_options_refuse_non_positive_values(tmp_path, latents_sd15):
    from train.cli import app as train_app

    for flag, value in (("--kto-lambda-desirable", "0"), ("--kto-lambda-undesirable", "-1"), ("--beta", "0")):
        result = run_cli(train_app, train_args(latents_sd15, tmp_path / "run", "tiny-sd15", 1, "--objective", "kto",
                                               flag, value))
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert (
            result.exit_code == 2 and len(lines) == 1 and flag in lines[0] and "must be > 0" in lines[0]
        ), result.output
        assert not (tmp_path / "run").exists()



@pytest.mark.parametrize("beta, lr, warned", [
    (1000.0, 1e-7, False),  # the public recipe (beta x lr = 1e-4)
    (1000.0, 1e-5, False),  # our default learning rate: exactly at the threshold, 1e-2
    (50.0, 2e-4, False),  # the `make fidelity` run by hand that kept prompt following
    (1000.0, 2e-4, True),  # the fidelity run that saturated: 0.2
    (51.0, 2e-4, True),
])
def test_kto_saturation_warning_above_100x_the_public_recipes_beta_times_lr(beta, lr, warned):
    from train.losses import kto_saturation_warning

    message = kto_saturation_warning(beta, lr)
    assert (message is not None) == warned
    if warned:
        assert message.startswith("warning: ") and "\n" not in message and "lower --beta" in message
        assert f"to {1e-2 / lr:g} or less" in message and "--learning-rate" in message


@pytest.mark.parametrize("accumulation", [4, 6])
def test_per_class_metrics_average_only_the_micro_batches_that_had_the_class(tmp_path, unpaired, monkeypatch,
                                                                             accumulation):
    """Batch 1 with accumulation: most micro-batches hold one class only. The other class is not measured there
    (NaN), so the step's e_desirable is the mean of e over the desirable micro-batches alone, not diluted by zeros
    (it read about half of e). Accumulation 6 is a whole epoch; 4 leaves a micro-batch of each class out."""
    import math

    import train.batch_sources as batch_sources
    from train.cli import app as train_app

    lat, _ = unpaired
    seen = []
    real = batch_sources.compute_loss

    def recording(unet, batch, *args, **kwargs):
        out = real(unet, batch, *args, **kwargs)
        seen.append((int(batch["label"][0]), {k: v.item() for k, v in out.metrics.items()}))
        return out

    monkeypatch.setattr(batch_sources, "compute_loss", recording)
    out = tmp_path / "run"
    args = train_args(lat, out, "tiny-sd15", 1, "--objective", "kto", "--batch-size", "1", "--beta", "50",
                      "--gradient-accumulation-steps", str(accumulation))
    result = run_cli(train_app, args)
    assert result.exit_code == 0, result.output
    assert len(seen) == accumulation and {label for label, _ in seen} == {0, 1}
    for label, m in seen:  # a micro-batch of one class did not measure the other
        assert math.isnan(m["e_undesirable" if label else "e_desirable"]) and not math.isnan(m["e"])
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    for name, label in (("e_desirable", 1), ("e_undesirable", 0), ("reward_desirable", 1), ("reward_undesirable", 0)):
        values = [m[name] for lab, m in seen if lab == label]
        assert row[name] == pytest.approx(sum(values) / len(values), rel=1e-5), name
    assert row["e"] == pytest.approx(sum(m["e"] for _, m in seen) / accumulation, rel=1e-5)
