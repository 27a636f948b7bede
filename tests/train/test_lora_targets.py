"""--lora-target-modules: each model family declares its default (SD3: both streams of the joint attention),
the run records the list it used, and a name that matches no module of the denoiser is one line."""
from __future__ import annotations

import json

import pytest
import torch

from pipeline.families import FAMILIES, SD3, SD15, SDXL
from tests.helpers import run_cli
from tests.train.conftest import train_args
from train.cli import app
from train.config import TrainConfig
from train.model_setup import setup_models

UNET_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")
# diffusers examples/dreambooth/train_dreambooth_lora_sd3.py, its default without --lora_layers
SD3_TARGETS = ("attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
               "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v")


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread):
    """One torch thread (tests/conftest.py)."""


def _adapted(unet) -> set[str]:
    """Dotted paths of the modules that hold a LoRA adapter."""
    return {name.removesuffix(".lora_A") for name, _ in unet.named_modules() if name.endswith(".lora_A")}


def test_each_family_declares_its_default_and_the_help_names_it():
    assert SD15.lora_target_modules == SDXL.lora_target_modules == UNET_TARGETS
    assert SD3.lora_target_modules == SD3_TARGETS
    from pipeline.cli.options import declared_options

    (option,) = [d for d in declared_options(TrainConfig) if d.name == "lora_target_modules"]
    assert option.default is None  # resolved from the model's family, not one list for every family
    for fam in FAMILIES:
        assert f"{fam.name}" in option.spec.help and ",".join(fam.lora_target_modules) in option.spec.help


@pytest.mark.parametrize("model, family", [("tiny-sd15", SD15), ("tiny-sd3", SD3)])
def test_the_default_is_the_family_s(model, family):
    cfg = TrainConfig(data="x", model=model, lora_rank=2)
    models = setup_models(cfg, torch.float32, torch.device("cpu"))
    assert models.lora_target_modules == list(family.lora_target_modules)
    adapted = _adapted(models.unet)
    # Every adapted module is one of the targets, and every target adapts at least one module.
    assert all(any(n == t or n.endswith("." + t) for t in family.lora_target_modules) for n in adapted)
    assert all(any(n.endswith("." + t) for n in adapted) for t in family.lora_target_modules)
    if family is SD3:  # the text (context) stream of the joint attention too
        assert any(n.endswith("attn.add_q_proj") for n in adapted)


def test_given_targets_win_over_the_family_s():
    cfg = TrainConfig(data="x", model="tiny-sd3", lora_rank=2, lora_target_modules=["to_q", "to_v"])
    models = setup_models(cfg, torch.float32, torch.device("cpu"))
    assert models.lora_target_modules == ["to_q", "to_v"]
    assert {n.rsplit(".", 1)[1] for n in _adapted(models.unet)} == {"to_q", "to_v"}


def test_the_run_records_the_list_it_used(tmp_path, latents_sd15):
    out = tmp_path / "run"
    result = run_cli(app, train_args(latents_sd15, out, "tiny-sd15", 1, "--lora-rank", "2"))
    assert result.exit_code == 0, result.output
    config = json.loads((out / "training_config.json").read_text())
    assert config["lora_target_modules"] == list(UNET_TARGETS) and "lora_target_modules" not in config["options"]
    assert f"| lora_target_modules | {list(UNET_TARGETS)} |" in (out / "README.md").read_text()


@pytest.mark.parametrize("targets, unmatched", [("to_q,to_kk", "to_kk matches"),
                                                ("add_k_proj,to_add_out", "add_k_proj, to_add_out match")])
def test_a_target_that_matches_no_module_is_one_line(tmp_path, latents_sdxl, targets, unmatched):
    """A misspelt name beside good ones: peft alone would adapt the good ones and drop it without a word.
    SD3's context-stream names on an SDXL UNet: no such modules."""
    out = tmp_path / "run"
    result = run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", 1, "--lora-rank", "2",
                                     "--lora-target-modules", targets))
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert f"--lora-target-modules: {unmatched} no module of the sdxl UNet2DConditionModel" in lines[0]
    assert "to_k,to_q,to_v,to_out.0" in lines[0]  # the family's default, to compare with
    assert not (out / "training_config.json").exists() and not (out / "pytorch_lora_weights.safetensors").exists()


def test_an_adapter_beyond_the_attention_projections_loads_whole(tmp_path, latents_sd15):
    """diffusers renames only the attention projections' LoRA keys (to_q -> to_q.lora.down); a file mixing
    renamed and peft keys would load as peft's and drop every renamed layer without a word (to_q here)."""
    from diffusers import StableDiffusionPipeline
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    from pipeline.models.loading import resolve_model_source

    out = tmp_path / "run"
    result = run_cli(app, train_args(latents_sd15, out, "tiny-sd15", 1, "--lora-rank", "2",
                                     "--lora-target-modules", "to_q,proj_in"))
    assert result.exit_code == 0, result.output
    saved = load_file(out / "pytorch_lora_weights.safetensors")
    pipe = StableDiffusionPipeline.from_pretrained(resolve_model_source("tiny-sd15"))
    pipe.load_lora_weights(str(out))
    loaded = get_peft_model_state_dict(pipe.unet, adapter_name=pipe.get_active_adapters()[0])
    assert {k.removeprefix("unet.") for k in saved} == set(loaded)
    assert any(".to_q." in k for k in loaded) and any(".proj_in." in k for k in loaded)
    for k, v in loaded.items():
        assert torch.equal(v.to(saved["unet." + k].dtype), saved["unet." + k]), k


def test_default_targets_keep_diffusers_unet_key_names(tmp_path, latents_sd15):
    """SD1.5 / SDXL with the attention projections: the file keeps diffusers' names, as before (unchanged files)."""
    from safetensors.torch import load_file

    out = tmp_path / "run"
    assert run_cli(app, train_args(latents_sd15, out, "tiny-sd15", 1, "--lora-rank", "2")).exit_code == 0
    keys = list(load_file(out / "pytorch_lora_weights.safetensors"))
    assert keys and all(".lora.down." in k or ".lora.up." in k for k in keys)



def test_the_adapter_config_lists_its_target_modules_sorted(tmp_path):
    """peft keeps target_modules as a set, whose order follows Python's per-process string hashing; save_lora
    writes them sorted into the file's adapter config, so the same adapter gives the same config text in every
    process. Eight targets: an unsorted set would come out sorted by chance once in 8! = 40,320 processes. (The
    file's bytes may still differ: safetensors writes its top-level metadata keys in the order of a Rust HashMap.)"""
    from diffusers import UNet2DConditionModel
    from safetensors import safe_open

    from pipeline.models.loading import resolve_model_source
    from train.lora_io import save_lora
    from train.model_setup import add_lora

    targets = ["to_k", "to_q", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.2", "time_emb_proj"]
    unet = UNet2DConditionModel.from_pretrained(resolve_model_source("tiny-sd15"), subfolder="unet")
    add_lora(unet, TrainConfig(model="tiny-sd15", lora_rank=2), targets)
    with safe_open(str(save_lora(unet, tmp_path, "sd15")), "pt") as f:
        saved = json.loads(f.metadata()["lora_adapter_metadata"])["unet.target_modules"]
    assert saved == sorted(targets)
