"""``mapo-train --sft-weight``: an SFT term on the chosen images added to a pair objective's loss (the issue-29
ablation "DPO + an SFT term"; TRL's ``rpo_alpha``). Values worked out by hand, the objectives that refuse it, and a
real run that logs it, records it and refuses to resume with another weight."""
from __future__ import annotations

import json
import math

import pytest
import torch

from tests.helpers import run_cli
from tests.train.conftest import train_args
from train.cli import app
from train.objectives import Terms, with_sft_term
from train.step import Objective

# [chosen..., rejected...] errors of 2 pairs: e_w = (0.2, 0.4), e_l = (0.3, 0.1); mean(e_w) = 0.3.
E = (0.2, 0.4, 0.3, 0.1)


def _errors():
    return torch.tensor(E, dtype=torch.float64, requires_grad=True)


def test_dpo_plus_the_sft_term_by_hand():
    """Reference errors equal to the policy's: Diffusion-DPO's loss is ln 2; the term adds 0.5 x 0.3 = 0.15, and
    0.5 / 2 to the gradient of each chosen error (none to the rejected ones)."""
    e = _errors()
    out = Objective("dpo", 5000.0, 1000, "epsilon", sft_weight=0.5).loss(Terms(e, e.detach().clone()))
    assert math.isclose(out.loss.item(), math.log(2) + 0.15, rel_tol=1e-12)
    assert math.isclose(out.metrics["sft_term"].item(), 0.3, rel_tol=1e-6)
    # logged: the loss optimised (the sum), and Diffusion-DPO's own part beside it
    assert math.isclose(out.metrics["loss"].item(), math.log(2) + 0.15, rel_tol=1e-6)
    assert math.isclose(out.metrics["preference_term"].item(), math.log(2), rel_tol=1e-6)
    (grad,) = torch.autograd.grad(out.loss, e)
    e0 = _errors()
    (plain,) = torch.autograd.grad(Objective("dpo", 5000.0, 1000, "epsilon").loss(Terms(e0, e0.detach().clone())).loss,
                                   e0)
    torch.testing.assert_close(grad - plain, torch.tensor([0.25, 0.25, 0.0, 0.0], dtype=torch.float64))


def test_weight_zero_is_the_objective_alone_and_mapo_keeps_its_own_sft_term():
    e = _errors()
    plain = Objective("dpo", 5000.0, 1000, "epsilon").loss(Terms(e, e.detach().clone()))
    assert plain.loss.item() == math.log(2) and "sft_term" not in plain.metrics
    # MaPO's loss already is mean(e_w) + a margin term: a second SFT term would be a silent reweighting.
    mapo = Objective("mapo", 0.1, 1000, "epsilon").loss(Terms(e))
    with pytest.raises(ValueError, match="SFT term of its own"):
        with_sft_term(mapo, Terms(e), 1.0)


@pytest.mark.parametrize("objective", ["mapo", "sft", "kto", "spo"])
def test_objectives_other_than_dpo_refuse_it_in_one_line(tmp_path, objective):
    extra = ["--prompts", tmp_path / "p.txt", "--model", "tiny-sdxl"] if objective == "spo" else ["--data", tmp_path]
    result = run_cli(app, [*extra, "--objective", objective, "--sft-weight", "1", "--output-dir", tmp_path / "run"])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert f"--sft-weight applies to --objective dpo (a pair objective without an SFT term of its own), not " \
           f"--objective {objective}" in lines[0]
    assert not (tmp_path / "run").exists()


def test_a_run_logs_and_records_the_term_and_resumes_only_with_its_weight(tmp_path, latents_sdxl):
    out = tmp_path / "run"
    args = train_args(latents_sdxl, out, "tiny-sdxl", 2, "--objective", "dpo", "--sft-weight", "0.5",
                      "--checkpointing-steps", "1")
    result = run_cli(app, args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["sft_term"] > 0 for r in rows)
    assert all(r["loss"] == pytest.approx(r["preference_term"] + 0.5 * r["sft_term"], rel=1e-5) for r in rows)
    assert json.loads((out / "training_config.json").read_text())["sft_weight"] == 0.5
    assert "| sft_weight | 0.5 |" in (out / "README.md").read_text()
    args[args.index("0.5")] = "1.0"
    result = run_cli(app, [*args, "--resume-from-checkpoint", str(out / "checkpoints" / "checkpoint-1")])
    assert result.exit_code == 2 and "sft_weight 0.5 (now 1.0)" in result.output, result.output


def test_a_run_made_before_the_option_existed_resumes_only_at_its_default(tmp_path):
    """A config without ``sft_weight`` (a run made before --sft-weight) trained without the term: resuming it with
    a weight is refused like any other change of objective, resuming at the default is not."""
    from pipeline.errors import UserError
    from train.config import TrainConfig
    from train.run_folder import check_resume_config

    defaults = TrainConfig(data="lat", output_dir="run").to_json()
    old = {**{k: v for k, v in defaults.items() if k != "sft_weight"}, "objective": "dpo", "world_size": 1}
    (tmp_path / "training_config.json").write_text(json.dumps(old))
    assert check_resume_config(tmp_path, {**old, "sft_weight": 0.0}) == old
    with pytest.raises(UserError, match=r"different sft_weight 0\.0 \(now 0\.5\)"):
        check_resume_config(tmp_path, {**old, "sft_weight": 0.5})


def test_an_option_recorded_resolved_is_not_filled_with_its_none_default(tmp_path):
    """beta, lora_alpha and lora_target_modules default to None and are recorded resolved (per objective, from the
    rank, the family's modules): a config lacking one is not refused on an unchanged resume for "None (now ...)"."""
    from train.config import TrainConfig
    from train.run_folder import check_resume_config

    mine = {**TrainConfig(data="lat", output_dir="run", objective="dpo", lora_rank=4).to_json(), "world_size": 1,
            "lora_target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}
    assert mine["beta"] == 5000.0 and mine["lora_alpha"] == 4
    old = {k: v for k, v in mine.items() if k not in ("beta", "lora_alpha", "lora_target_modules", "sft_weight")}
    (tmp_path / "training_config.json").write_text(json.dumps(old))
    assert check_resume_config(tmp_path, mine) == old
