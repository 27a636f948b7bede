"""Options a model's family cannot honour, refused in one line before any output folder exists (read from the
model's config files only, no weights): T5 token counts above the family's pipeline limit, ``--compile`` for a
denoiser without repeated blocks. The older checks of this kind (``check_resolution``, ``check_t5_options``) live
in :mod:`pipeline.models.loading`.
"""
from __future__ import annotations

from pipeline.errors import UserError
from pipeline.models.loading import model_family_of


def check_t5_length(model: str, max_sequence_length: int | None, flag: str = "--max-sequence-length") -> None:
    """Refuse, in one line, a T5 token count above what ``model``'s pipeline samples with
    (``ModelFamily.max_sequence_length_limit``: 512 for SD3, as ``StableDiffusion3Pipeline.check_inputs``). Our
    stages encode prompts themselves, so a larger count would run, be recorded, and then fail in the plain
    diffusers call of the model card's snippet. Call after :func:`check_t5_options` (no T5: refused there).

    Raises:
        UserError: ``max_sequence_length`` is above the family's limit.
    """
    if max_sequence_length is None:
        return
    from pipeline.families import a_family

    fam = model_family_of(model)
    limit = fam.max_sequence_length_limit
    if limit is not None and max_sequence_length > limit:
        raise UserError(f"{flag} {max_sequence_length}: '{model}' is {a_family(fam.name)} model, whose pipeline "
                        f"({fam.pipeline_class}) takes at most {limit} T5 tokens")


def check_compile(model: str) -> None:
    """Refuse ``--compile`` in one line, before any output folder exists, for a model whose denoiser class declares
    no repeated blocks for :func:`compile_unet` (diffusers 0.42's ``SD3Transformer2DModel``: its
    ``_repeated_blocks`` is empty), instead of diffusers' error after the output was claimed.

    Raises:
        UserError: the family's denoiser class has no ``_repeated_blocks``.
    """
    import diffusers

    from pipeline.families import a_family

    fam = model_family_of(model)
    if not getattr(getattr(diffusers, fam.denoiser_class), "_repeated_blocks", None):
        raise UserError(f"--compile: '{model}' is {a_family(fam.name)} model, whose {fam.denoiser_class} declares no "
                        "repeated blocks for diffusers' regional compilation (compile_repeated_blocks); leave "
                        "--compile out")
