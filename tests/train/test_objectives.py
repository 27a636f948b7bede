"""Objectives as data (train/objectives.py): the declarations drive the config's choices and help, the loss
dispatch, the reference, the data check and the model card; a newly registered objective is trained with its
declared loss without any other file knowing its name."""
from __future__ import annotations

import ast
import dataclasses
import math
from pathlib import Path

import pytest
import torch

from pipeline.families.noise import noise_process
from tests.helpers import run_cli
from tests.train.batches import real_batch
from tests.train.conftest import train_args
from train import objectives
from train.config import TrainConfig
from train.losses import LossOutput
from train.objectives import ObjectiveSpec, Terms
from train.step import Objective, compute_loss, draw_noise, errors, step_generator, unet_inputs

TRAIN = Path(__file__).resolve().parents[2] / "train"


def test_the_config_offers_the_registered_objectives_with_their_help_and_default_betas():
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    objective, beta = (next(iter(fields[name].metadata.values())) for name in ("objective", "beta"))
    assert tuple(objective.choices) == objectives.names() == ("mapo", "dpo", "sft", "kto", "spo")
    for spec in objectives.specs():
        assert f"{spec.name} ({spec.help})" in objective.help
        assert (f"{spec.default_beta:g} for {spec.name}" in beta.help if spec.default_beta is not None
                else f"for {spec.name}" not in beta.help)
        cfg = TrainConfig(data="x", objective=spec.name)
        assert cfg.resolved_beta == spec.default_beta
        assert cfg.has_reference_copy == spec.needs_reference
        assert TrainConfig(data="x", objective=spec.name, lora_rank=4).has_reference_copy is False
    assert objective.help.endswith("or spo (online step-aware preference optimisation: samples from --prompts, "
                                      "needs --model).")
    assert beta.help == "Preference strength: default 0.1 for mapo, 5000 for dpo, 1000 for kto, 10 for spo."


def test_the_registry_refuses_a_second_objective_of_a_name_and_an_unknown_input_kind():
    spec = objectives.get("mapo")
    with pytest.raises(ValueError, match="already registered"):
        objectives.register(spec)
    with pytest.raises(ValueError, match="reads must be one of"):
        dataclasses.replace(spec, name="other", reads="images")
    with pytest.raises(KeyError, match="unknown objective 'nope'"):
        objectives.get("nope")


def test_the_losses_and_the_declarations_do_not_import_the_config_or_the_trainer():
    """The issue's rule: losses stop importing the config (dependencies point from config to objectives)."""
    for module in ("losses.py", "objectives.py"):
        tree = ast.parse((TRAIN / module).read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
        assert not imported & {"config", "trainer", "train.config", "train.trainer", "step", "batch_sources"}, module


def test_the_trainer_loop_does_not_branch_on_an_objective_name():
    source = (TRAIN / "trainer.py").read_text()
    for name in objectives.names():
        assert f'"{name}"' not in source and f"'{name}'" not in source


@pytest.fixture
def registered():
    """Register throwaway objectives for one test, then remove them."""
    added = []

    def register(spec):
        added.append(objectives.register(spec).name)
        return spec

    yield register
    for name in added:
        del objectives._REGISTRY[name]


def _margin_hinge(terms: Terms, objective) -> LossOutput:
    """A throwaway objective: max(0, 1 + beta * (e_w - e_l)), mean over pairs."""
    e_w, e_l = terms.e.chunk(2)
    loss = torch.relu(1 + objective.beta * (e_w - e_l)).mean()
    return LossOutput(loss, {"loss": loss.detach().float()})


def test_a_registered_objective_is_dispatched_to_its_declared_loss_with_the_errors_of_its_pairs(registered):
    """compute_loss knows no objective by name: a new declaration's loss gets the policy's errors in
    [chosen..., rejected...] order (and the reference's when it asks for one), checked here by hand."""
    from train.model_setup import setup_models

    seen = {}

    def record(terms, objective):
        seen["terms"] = terms
        return _margin_hinge(terms, objective)

    registered(ObjectiveSpec("hinge-test", "a margin hinge", "Hinge", default_beta=2.0, needs_reference=True,
                             reads="pairs", loss=record))
    cfg = TrainConfig(data="x", model="tiny-sd15", objective="dpo")  # dpo: setup_models builds a reference copy
    models = setup_models(cfg, torch.float32, torch.device("cpu"))
    obj = Objective("hinge-test", 2.0, models.num_train_timesteps, models.prediction_type)
    batch = real_batch("tiny-sd15", pairs=2)
    out = compute_loss(models.unet, batch, models.noise_scheduler, obj, step_generator(0, 0, 0, 0),
                       reference=models.reference)
    # The same draw again: the policy's errors on chosen then rejected.
    noise, t = draw_noise(batch["latents"], noise_process(models.noise_scheduler), step_generator(0, 0, 0, 0))
    x_t, tt, target, cond = unet_inputs(batch, noise, t, models.noise_scheduler, obj)
    with torch.no_grad():
        e = errors(models.unet, x_t, tt, target, cond)
    assert torch.allclose(seen["terms"].e.detach(), e, rtol=1e-5, atol=1e-7)
    assert torch.allclose(seen["terms"].ref, e, rtol=1e-5, atol=1e-7)  # the reference starts as the policy
    e_w, e_l = e.tolist()[:2], e.tolist()[2:]
    expected = sum(max(0.0, 1 + 2.0 * (w - r)) for w, r in zip(e_w, e_l)) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in models.unet.parameters())


def test_an_objective_without_a_reference_gets_none_and_one_reading_examples_gets_its_own_noise(registered):
    from train.model_setup import setup_models

    seen = []
    registered(ObjectiveSpec("free-test", "x", "X", default_beta=None, needs_reference=False, reads="examples",
                             loss=lambda t, o: seen.append(t) or LossOutput(t.e.mean(), {})))
    cfg = TrainConfig(data="x", model="tiny-sd15", objective="mapo")
    models = setup_models(cfg, torch.float32, torch.device("cpu"))
    obj = Objective("free-test", None, models.num_train_timesteps, models.prediction_type)
    assert obj.per_example_noise and not obj.uses_reference
    compute_loss(models.unet, real_batch("tiny-sd15", pairs=2), models.noise_scheduler, obj, step_generator(0, 0, 0, 0))
    assert seen[0].ref is None and seen[0].e.shape == (4,) and math.isfinite(seen[0].e.sum().item())


def test_the_model_card_and_the_data_check_read_the_declarations(tmp_path):
    from train.model_card import write_model_card

    config = {"objective": "kto", "model": "tiny-sdxl", "family": "sdxl", "lora_rank": 0, "data": str(tmp_path)}
    card = write_model_card(tmp_path, config, {}, {"pairs": 3, "resolution": 64, "model": "tiny-sdxl"}).read_text()
    assert objectives.get("kto").title in card
    source = (TRAIN / "data.py").read_text()
    assert '"kto"' not in source and "reads" in source


@pytest.mark.parametrize("args, warned", [
    (["--objective", "kto", "--learning-rate", "2e-4"], "saturates"),
    (["--objective", "kto", "--learning-rate", "2e-4", "--beta", "50"], None),
    (["--objective", "mapo", "--learning-rate", "2e-4", "--beta", "1000"], None),  # KTO's sigmoid only
    (["--objective", "dpo", "--learning-rate", "2e-4"], "lost prompt following"),
    (["--objective", "dpo", "--learning-rate", "2e-5"], None),
])
def test_mapo_train_says_an_objectives_warning_before_loading_models(tmp_path, latents_sd15, monkeypatch, args,
                                                                    warned):
    """An objective's declared warning (KTO: beta x lr; DPO: lr) comes at start-up (before the slow model loading,
    here stopped right there), once, and does not stop the run."""
    import train.trainer
    from pipeline.errors import UserError
    from train.cli import app as train_app

    def stop(*a, **k):
        raise UserError("stopped where the models would load")

    monkeypatch.setattr(train.trainer, "setup_models", stop)
    result = run_cli(train_app, [*train_args(latents_sd15, tmp_path / "run", "tiny-sd15", 1), *args])
    assert result.exit_code == 2 and "stopped where the models would load" in result.stderr, result.output
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("warning: ")]
    assert len(warnings) == (warned is not None) and all(warned in w for w in warnings), result.stderr
