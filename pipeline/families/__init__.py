"""Model families behind one seam: SD1.5, SDXL (UNet, DDPM), SD3/SD3.5 and Flux.1 (transformer, rectified flow).

One module per family (:mod:`.sd15`, :mod:`.sdxl`, :mod:`.sd3`, :mod:`.flux`), the protocol in :mod:`.base`, the noise
processes in :mod:`.noise`. This registry recognises a model's family from its ``model_index.json``, a
loaded pipeline, or its denoiser's config. Adding a family = one module and one entry in ``FAMILIES``.
"""
from __future__ import annotations

from pipeline.errors import UserError

from .base import ModelFamily
from .flux import Flux
from .sd3 import SD3
from .sd15 import SD15
from .sdxl import SDXL

# Most specific first: SD15 matches any UNet pipeline without a second text encoder; Flux any transformer pipeline
# with a second but no third text encoder (so before SDXL, which also has a text_encoder_2).
FAMILIES: tuple[type[ModelFamily], ...] = (SD3, Flux, SDXL, SD15)
BY_NAME = {f.name: f for f in FAMILIES}


def get_family(name: str) -> type[ModelFamily]:
    """The family called ``name`` ("sd15", "sdxl", "sd3", "flux"); UserError for an unknown name."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise UserError(f"unknown model family '{name}'; known: {', '.join(BY_NAME)}") from None


def a_family(name: str) -> str:
    """A family name with its indefinite article as the name is read: "an sd3", "an sdxl", "an sd15" (ess-dee),
    "a flux"; for error messages that name a family."""
    return f"{'an' if name[:1].lower() in 'aeiosx' else 'a'} {name}"


def family_from_index(index: dict, what: str = "the model") -> type[ModelFamily]:
    """The family of a pipeline from its ``model_index.json`` (a dict); UserError when none matches."""
    for fam in FAMILIES:
        if fam.matches_index(index):
            return fam
    raise UserError(f"{what} is a {index.get('_class_name', 'diffusers')} pipeline, which mapo-tools does not "
                    f"support (supported: {', '.join(f.pipeline_class for f in FAMILIES)})")


def family_of_pipe(pipe) -> type[ModelFamily]:
    """The family of a loaded pipeline (components may be None: skipped at load time), the first of
    :data:`FAMILIES` whose ``matches_pipe`` says yes.

    Raises:
        ValueError: no family recognises it (a pipeline is only loaded after :func:`family_from_index`
            recognised its folder, so this means a pipeline built some other way)."""
    for fam in FAMILIES:
        if fam.matches_pipe(pipe):
            return fam
    raise ValueError(f"no model family recognises a {type(pipe).__name__} pipeline")


def family_of_denoiser(model) -> type[ModelFamily]:
    """The family of a denoiser module (unwraps DDP / compiled wrappers) or of its config dict."""
    if not isinstance(model, dict):
        model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
        model = getattr(model, "module", model)  # DDP's
    config = model if isinstance(model, dict) else getattr(model, "config", None)
    if config is None:
        raise ValueError(f"{type(model).__name__} has no diffusers config")
    for fam in FAMILIES:
        if fam.matches_denoiser(config):
            return fam
    raise ValueError(f"no model family recognises a denoiser with config keys {sorted(config)[:8]} ...")


__all__ = ["FAMILIES", "Flux", "SD15", "SD3", "SDXL", "ModelFamily", "a_family", "family_from_index",
           "family_of_denoiser", "family_of_pipe", "get_family"]
