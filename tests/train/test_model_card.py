"""The model card holds no absolute path of the machine that trained it: local paths relative to the output
folder, a built-in model through mapo-tools' resolver, a hub id as it is."""
from __future__ import annotations

import os
import re

import pytest

from train.model_card import write_model_card


def _card(tmp_path, model: str, lora: bool = True) -> str:
    out = tmp_path / "runs" / "run"
    out.mkdir(parents=True, exist_ok=True)
    config = {"model": model, "objective": "mapo", "lora_rank": 2 if lora else 0, "family": "sdxl",
              "data": str(tmp_path / "lat")}
    path = write_model_card(out, config, {"loss": 0.5}, {"pairs": 8, "resolution": 64, "model": model})
    return path.read_text()


def _snippet(card: str) -> str:
    return card.split("```python\n")[1].split("```")[0]


@pytest.mark.parametrize("lora", [True, False])
def test_a_local_base_model_and_data_are_written_relative_to_the_output(tmp_path, lora):
    base = tmp_path / "models" / "base"
    base.mkdir(parents=True)
    (base / "model_index.json").write_text("{}")
    card = _card(tmp_path, str(base), lora)
    assert str(tmp_path) not in card, card  # no machine path anywhere
    assert "`../../lat`" in card and "of `../../models/base`" in card and "base_model:" not in card
    source = re.search(r'from_pretrained\("PATH_TO_THIS_FOLDER/([^"]+)"', _snippet(card).split("pipe =")[1]).group(1)
    assert os.path.normpath(tmp_path / "runs" / "run" / source) == str(base)  # where the base model really is


def test_a_builtin_goes_through_the_resolver_and_a_hub_id_stays(tmp_path):
    card = _card(tmp_path, "tiny-sdxl")
    assert str(tmp_path) not in card and "cache" not in _snippet(card)
    namespace: dict = {}
    exec(_snippet(card).split("pipe =")[0], namespace)  # noqa: S102 - the card's own imports
    assert 'from_pretrained(resolve_model_source("tiny-sdxl"))' in _snippet(card)
    assert os.path.isdir(namespace["resolve_model_source"]("tiny-sdxl"))
    # sampled at the resolution it was trained at, not the pipeline's default
    assert '.images[0]' in _snippet(card) and 'pipe("' in _snippet(card)
    assert ", height=64, width=64)" in _snippet(card)
    hub = _card(tmp_path, "stabilityai/stable-diffusion-xl-base-1.0")
    assert 'from_pretrained("stabilityai/stable-diffusion-xl-base-1.0")' in _snippet(hub)
    assert "base_model: stabilityai/stable-diffusion-xl-base-1.0" in hub


@pytest.mark.parametrize("model, without_t5", [("shapes-sd3", True), ("tiny-sd3", False)])
def test_an_sd3_base_saved_without_t5_is_loaded_without_it(tmp_path, model, without_t5):
    """shapes-sd3's folder has no T5 ([null, null] in its model_index.json), which diffusers' from_pretrained does
    not fill in by itself (it raised "expected [...] text_encoder_3 ..."): the card's snippet passes
    text_encoder_3=None, tokenizer_3=None, and its from_pretrained line runs in plain diffusers; tiny-sd3's has
    a T5 and keeps it."""
    out = tmp_path / "run"
    out.mkdir()
    config = {"model": model, "objective": "mapo", "lora_rank": 2, "family": "sd3", "data": str(tmp_path / "lat")}
    card = write_model_card(out, config, {"loss": 0.5}, {"pairs": 2, "resolution": 64, "model": model,
                                                         "t5": True}).read_text()
    snippet = _snippet(card)
    assert ("text_encoder_3=None, tokenizer_3=None" in snippet) is without_t5, snippet
    namespace: dict = {}
    exec(snippet.split("pipe.load_lora_weights")[0], namespace)  # noqa: S102 - the card's imports and from_pretrained
    assert (namespace["pipe"].text_encoder_3 is None) is without_t5
