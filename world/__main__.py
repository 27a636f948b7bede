"""``python -m world``: caption files for the miniature world, the judges' check on renders, and the base
models' check on the held-out captions."""
from __future__ import annotations

import json
from dataclasses import dataclass

import typer

from pipeline.cli.options import at_least, command, option
from pipeline.cli.support import one_line_errors_group

from .scene import CAPTION_PREFIXES
from .scene import captions as world_captions

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help=__doc__, cls=one_line_errors_group())

@dataclass
class CaptionsConfig:
    """``python -m world captions``: declared once (:mod:`pipeline.cli.options`)."""

    split: str = option("all", choices=("train", "heldout", "all"),
                        help="train (48 captions the base model saw), heldout (12 it never saw) or all.")
    prefix: str | None = option(None, choices=tuple(CAPTION_PREFIXES), help=(
        "Prefix every caption with the prompt prefix of: cartoon, pixel, realistic, unsafe (the paper's strings)."))
    repeat: int = option(1, check=at_least(1), help=(
        "Write each caption this many times (with generate --keep-duplicates: more pairs)."))
    output: str | None = option(None, help="Write to this file (default: print).")


@dataclass
class CheckJudgesConfig:
    """``python -m world check-judges``."""

    per_scene: int = option(2, check=at_least(1), help=(
        "Renders per (caption, look, frame); the renders use held-out jitter seeds."))
    seed: int = option(12345, help="Jitter seed (the pretraining renders use other seeds).")


@dataclass
class CheckBaseConfig:
    """``python -m world check-base``."""

    model: str = option("shapes-sdxl", help="The world model to check: shapes-sdxl or shapes-sd3.")
    seeds: int = option(4, check=at_least(1), help="Images per held-out caption and prompt kind.")
    num_inference_steps: int = option(12, check=at_least(1), help="Sampling steps (make fidelity's 12).")
    guidance_scale: float = option(3.0, help="Classifier-free guidance (make fidelity's 3).")


@command(app, CaptionsConfig, name="captions")
def captions(cfg: CaptionsConfig):
    """Write the world's captions, one per line: a prompt file for generate, eval or validation."""
    lines = [f"{CAPTION_PREFIXES[cfg.prefix]} {c}" if cfg.prefix else c for c in world_captions(cfg.split)] * cfg.repeat
    text = "\n".join(lines) + "\n"
    if cfg.output is None:
        typer.echo(text, nl=False)
    else:
        from pipeline.data.atomic import write_text_atomic

        write_text_atomic(cfg.output, text)


@command(app, CheckJudgesConfig, name="check-judges")
def check_judges(cfg: CheckJudgesConfig):
    """Agreement of each judge with the renderer on fresh renders of all 60 captions (JSON on stdout)."""
    from .judges import agreement_on_renders

    typer.echo(json.dumps(agreement_on_renders(cfg.per_scene, cfg.seed), indent=1))


@command(app, CheckBaseConfig, name="check-base")
def check_base(cfg: CheckBaseConfig):
    """The base model's rates on the 12 held-out captions under every prompt kind (plain, cartoon, pixel, unsafe
    prefix), read by the world's judges (JSON on stdout): the bars a world model must meet."""
    from pipeline.errors import UserError
    from pipeline.models.loading import load_pipeline

    from .checks import base_model_check
    from .model import WORLD_MODELS

    if cfg.model not in WORLD_MODELS:
        raise UserError(f"--model must be a world model ({', '.join(WORLD_MODELS)}), got '{cfg.model}'")
    pipe = load_pipeline(cfg.model, device="cpu", dtype="fp32")
    result = base_model_check(pipe, seeds=cfg.seeds, num_inference_steps=cfg.num_inference_steps,
                              guidance_scale=cfg.guidance_scale)
    settings = {k: result[k] for k in ("seeds", "num_inference_steps", "guidance_scale")}
    typer.echo(json.dumps({"model": cfg.model, **settings, "rates": result["rates"]}, indent=1))


if __name__ == "__main__":  # pragma: no cover
    app()
