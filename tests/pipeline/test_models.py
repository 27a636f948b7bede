"""Model loading: built-ins through from_pretrained, clear errors, tokenizer check, batch invariance."""
import re

import pytest
import torch

from pipeline.errors import ModelNotFoundError, UserError
from pipeline.models import builtin as builtin_models
from pipeline.models.loading import load_pipeline, resolve_dtype, resolve_model_source, weights_fingerprint
from pipeline.models.tokenizer import CLIP_VOCAB_SIZE, build_clip_tokenizer, check_tokenizer


def test_builtin_is_a_diffusers_folder_loaded_back():
    path = resolve_model_source("tiny-sdxl")
    assert (builtin_models.cache_root() / "tiny-sdxl-v1" / "model_index.json").exists()
    pipe = load_pipeline(path)  # a plain local folder path takes the same route
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert pipe.unet.config.cross_attention_dim == (
        pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    )
    assert len(pipe.tokenizer) == CLIP_VOCAB_SIZE and pipe.tokenizer_2.pad_token == "!"
    assert pipe.tokenizer.model_max_length == 77
    sd15 = load_pipeline("tiny-sd15")
    assert type(sd15).__name__ == "StableDiffusionPipeline" and not hasattr(sd15, "text_encoder_2")


def test_a_folders_tokenizers_are_read_once_per_process_and_again_once_changed(tmp_path):
    import os
    import shutil

    folder = shutil.copytree(resolve_model_source("tiny-sd15"), tmp_path / "model")
    first = load_pipeline(str(folder), dtype="fp32", device="cpu", skip=("unet",))
    again = load_pipeline(str(folder), dtype="fp32", device="cpu", skip=("unet",))
    assert again.tokenizer is first.tokenizer  # reused: no second read of the vocabulary
    assert again.text_encoder is not first.text_encoder and again.vae is not first.vae  # the models load anew
    other = load_pipeline(str(shutil.copytree(folder, tmp_path / "copy")), dtype="fp32", device="cpu",
                          skip=("unet",))
    assert other.tokenizer is not first.tokenizer  # another folder
    vocab = folder / "tokenizer" / "tokenizer.json"
    stat = vocab.stat()
    os.utime(vocab, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # rewritten in place
    changed = load_pipeline(str(folder), dtype="fp32", device="cpu", skip=("unet",))
    assert changed.tokenizer is not first.tokenizer
    ids = [tok("a red circle at the top left").input_ids for tok in (first.tokenizer, other.tokenizer,
                                                                      changed.tokenizer)]
    assert ids[0] == ids[1] == ids[2]


def test_real_clip_tokenization(tmp_path):
    tok = build_clip_tokenizer(tmp_path)
    ids = tok("a photo of a cat").input_ids
    # Standard CLIP ids: <|startoftext|>=49406, "a</w>"=320, "photo</w>"=1125, "of</w>"=539, "cat</w>"=2368
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_broken_tokenizer_refused():
    class Broken:
        def __len__(self):
            return 2

    with pytest.raises(UserError, match="only 2 tokens"):
        check_tokenizer(Broken(), "'x'")


@pytest.mark.parametrize("name", ["no-org/no-model", "./does/not/exist"])
def test_model_not_found_is_one_line(name):
    with pytest.raises(ModelNotFoundError) as err:
        load_pipeline(name)
    msg = str(err.value)
    assert f"'{name}' was not found" in msg and "tiny-sdxl" in msg and "\n" not in msg


@pytest.mark.parametrize("typo, meant", [("tiny-sdx1", "tiny-sdxl"), ("tiny-sd1.5", "tiny-sd15"),
                                          ("shapes-sdx", "shapes-sdxl"), ("tiny-sd-3", "tiny-sd3")])
def test_a_near_miss_of_a_built_in_is_refused_at_once_with_a_suggestion(typo, meant):
    """resolve_model_source refuses it before any from_pretrained (no hub lookups: half a minute of retries
    without a network): one line naming the built-in. A hub id (owner/name) is left to the loader."""
    with pytest.raises(ModelNotFoundError, match=rf"'{typo}' was not found \(did you mean '{meant}'\?\)") as err:
        resolve_model_source(typo)
    assert "download" not in str(err.value) and "\n" not in str(err.value)  # never: `hf download <the typo>`
    hub_id = "stabilityai/stable-diffusion-xl-base-1.0"
    assert resolve_model_source(hub_id) == hub_id


def test_folder_without_model_index(tmp_path):
    with pytest.raises(UserError, match="not a diffusers pipeline folder"):
        resolve_model_source(str(tmp_path))


def test_dtype_rules():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(UserError, match="fp16 is not supported on the CPU"):
        resolve_dtype("fp16", cpu)
    with pytest.raises(UserError, match="Unknown dtype"):
        resolve_dtype("fp8", cpu)


def test_weights_fingerprint_tracks_weights():
    pipe = load_pipeline("tiny-sd15")
    before = weights_fingerprint(pipe.vae)
    assert before == weights_fingerprint(pipe.vae)
    with torch.no_grad():
        next(pipe.vae.parameters()).add_(0.5)
    assert weights_fingerprint(pipe.vae) != before


def test_per_sample_unet_matches_single_sample_bits():
    from pipeline.runtime.batch_invariance import make_batch_invariant

    pipe = load_pipeline("tiny-sdxl")
    make_batch_invariant(pipe)
    g = torch.Generator().manual_seed(0)
    x, emb = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 77, 64, generator=g)
    cond = {"text_embeds": torch.randn(3, 32, generator=g), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 3)}
    with torch.no_grad():
        batched = pipe.unet(x, 10, encoder_hidden_states=emb, added_cond_kwargs=cond).sample
        single = pipe.unet(x[1:2], 10, encoder_hidden_states=emb[1:2],
                           added_cond_kwargs={k: v[1:2] for k, v in cond.items()}).sample
    assert torch.equal(batched[1:2], single)


def test_sdxl_arch_has_sdxl_base_sizes():
    # Built on the meta device: shapes and parameter counts without allocating 10 GB.
    comps = builtin_models.sdxl_arch_components(torch.float32, "meta")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(comps["unet"]) == 2_567_463_684
    assert comps["unet"].config.cross_attention_dim == 2048
    assert count(comps["text_encoder_2"]) > 690_000_000 and comps["text_encoder_2"].config.projection_dim == 1280
    assert builtin_models.sdxl_arch_components(torch.float32, "meta", skip=("unet",))["unet"] is None


def test_sd15_safety_checker_is_not_loaded(tmp_path):
    """A folder that ships a safety checker (as SD1.5 does) loads without it: it would black out images."""
    import json
    import shutil

    from diffusers import DiffusionPipeline

    from pipeline.judges.safety_classifiers import build_tiny_safety_checker

    folder = tmp_path / "sd15-with-checker"
    shutil.copytree(resolve_model_source("tiny-sd15"), folder)
    checker = build_tiny_safety_checker(tmp_path / "checker")
    shutil.copytree(checker, folder / "safety_checker")
    shutil.copytree(checker, folder / "feature_extractor")
    index = json.loads((folder / "model_index.json").read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    (folder / "model_index.json").write_text(json.dumps(index))
    assert DiffusionPipeline.from_pretrained(folder).safety_checker is not None  # the folder really ships one
    assert load_pipeline(str(folder)).safety_checker is None


def test_every_model_option_help_names_every_built_in_it_loads():
    """--model's help (generate, precompute, mapo-train, mapo-eval) names every built-in that loads as a whole
    pipeline, read from the registry: hand-written lists had fallen behind (mapo-train's lacked tiny-sd3 and
    shapes-sd3, every one shapes-sd3); a transformer alone (sd35-medium-arch) loads in none and is not named."""
    from evaluation.config import EvalConfig
    from pipeline.cli.options import declared_options
    from pipeline.models.builtin import builtin_models, builtin_names
    from stages.generate import GenerateConfig
    from stages.precompute.config import PrecomputeConfig
    from train.config import TrainConfig

    names = tuple(name for name, entry in builtin_models().items() if entry.whole_pipeline)
    assert {"tiny-sd3", "shapes-sd3", "sdxl-arch"} <= set(names) and "sd35-medium-arch" not in names
    for cls in (GenerateConfig, PrecomputeConfig, TrainConfig, EvalConfig):
        (model,) = [d for d in declared_options(cls) if d.name == "model"]
        listed = set(re.findall(r"[\w-]+", model.spec.help))
        assert listed >= set(names) and "sd35-medium-arch" not in listed, (cls.__name__, model.spec.help)
    assert builtin_names(whole_pipeline=True) == names


def test_readme_models_list_names_every_built_in():
    """The README's "Models" bullets (the names before each bullet's colon) are exactly the built-ins."""
    import re
    from pathlib import Path

    from pipeline.models.builtin import builtin_names

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("\n## Models\n", 1)[1].split("\n## ", 1)[0]
    listed = {name for line in section.splitlines() if line.startswith("- ")
              for name in re.findall(r"`([^`]+)`", line.split(":", 1)[0])}
    assert listed == set(builtin_names())
