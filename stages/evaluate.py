"""``mapo-eval``: generate paired images with the base model and each candidate, score, report.

Every model draws each (prompt, seed index k) image from the same seed,
``derive_seed(seed, prompt_id, k)``, and the same CPU-drawn initial noise (the generation
stage's own :func:`stages.generate.generate_images`), so base and candidate images differ only
by the weights: win rates compare like with like.

Resumable at two levels: images are PNG files ``images/<model>/<prompt_id>-<k>.png`` written
under a temporary name and renamed, so a rerun generates only the missing ones; scores are rows
of ``scores.parquet`` keyed by (model, prompt_id, seed_index, metric), so a rerun (e.g. with
another --metrics) scores only what is missing.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from pipeline.cli.options import (
    PANEL_IO,
    PANEL_RUN,
    PANEL_SAMPLING,
    at_least,
    batch_invariant_option,
    check_options,
    dtype_option,
    guidance_scale_option,
    model_option,
    num_inference_steps_option,
    option,
    options_record,
    prompt_column_option,
    prompt_split_option,
    resolution_option,
    seed_option,
    vae_option,
)
from pipeline.cli.progress import progress_bar
from pipeline.data.atomic import atomic_write, write_json_atomic
from pipeline.data.output_folder import OutputFolder
from pipeline.data.prompts import PromptSet, load_prompts
from pipeline.errors import UserError
from pipeline.families import get_family
from pipeline.judges.options import JudgeOptions
from pipeline.judges.registry import check_judges, check_prompts
from pipeline.models.loading import check_model_available, check_resolution
from pipeline.models.training_output import TrainingOutput, load_lora, load_unet, read_training_output
from pipeline.runtime.seeds import derive_seed

EVAL_CONFIG = "eval_config.json"
SCORES = "scores.parquet"
# What mapo-eval writes in its --output (all that --overwrite removes).
OWNED = (EVAL_CONFIG, SCORES, "images", "plots", "grids", "summary.json", "report.html")
BASE = "base"
DEFAULT_METRICS = ("aesthetic", "hps", "pickscore", "clip")
# Lower is better only for unsafety; every other metric rewards higher scores.
SCORE_CHUNK = 64  # images scored between two saves of scores.parquet


# A candidate is read as a training output (kept under its old name for callers).
read_candidate = read_training_output


@dataclass
class EvalConfig:
    """``mapo-eval``: every option, declared once (:mod:`pipeline.cli.options`); the sampling defaults are the
    paper's validation settings (25 steps, guidance 5.0; method.md, Evaluation)."""

    prompts: str = option(panel=PANEL_IO, help=(
        "Prompt source: .txt, .jsonl/.csv/.parquet (caption column), or a datasets name."))
    output: str = option(panel=PANEL_IO, help=(
        "Output folder (images, scores.parquet, summary.json, plots, report.html); resumable."))
    candidates: list[str] = option(name="candidate", default_factory=list, separator=None, panel=PANEL_IO, help=(
        "A mapo-train output folder (full UNet or LoRA); repeat to compare several."))
    # None: the candidates' base model (training_config.json "model")
    model: str | None = model_option(None, help=(
        "Base model: hub id, local diffusers folder, or built-in (tiny-sdxl, tiny-sd15, tiny-sd3, shapes-sdxl); "
        "default: the candidates' training model."))
    metrics: list[str] = option(default_factory=lambda: list(DEFAULT_METRICS), panel=PANEL_IO, help=(
        "Comma-separated: aesthetic, hps, pickscore, clip, style, safety; on the miniature world world-style, "
        "world-prompt, world-unsafe."))
    judges: JudgeOptions = field(default_factory=JudgeOptions)
    vae: str | None = vae_option()
    dtype: str = dtype_option()
    device: str = option("auto", panel=PANEL_RUN, help="auto, cpu, cuda, cuda:N (generation and scoring).")
    num_inference_steps: int = num_inference_steps_option(25)
    guidance_scale: float = guidance_scale_option(5.0)
    # None: the candidates' training resolution, else the base model's own
    resolution: int | None = resolution_option(help=(
        "Image side in pixels (a multiple of the model family's: 8 for SD1.5/SDXL, 16 for SD3); default: the "
        "resolution the candidates were trained at, else the base model's own "
        "(1024 for SDXL, 512 for SD1.5, 64 for the built-in models)."))
    seeds: int = option(1, check=at_least(1), panel=PANEL_SAMPLING, help=(
        "Images (seeds) per prompt; every model gets the same seeds."))
    seed: int = seed_option("Global seed; image k of a prompt uses derive_seed(seed, prompt id, k).")
    negative_prompt: str | None = option(None, panel=PANEL_SAMPLING, help="Negative prompt for every image.")
    batch_size: int = option(4, check=at_least(1), panel=PANEL_RUN, help="Images per pipeline call.")
    batch_invariant: bool = batch_invariant_option()
    prompt_column: str | None = prompt_column_option()
    prompt_split: str = prompt_split_option()
    limit: int | None = option(None, check=at_least(1), panel=PANEL_IO, help="Use only the first N prompts.")
    grid_prompts: int = option(8, check=at_least(0), panel=PANEL_IO, help=(
        "Prompts shown as image grids (base | candidates) in the report."))
    overwrite: bool = option(
        False, panel=PANEL_IO, help="Replace an output folder made with other generation settings."
    )

    def validate(self) -> "EvalConfig":
        """The declared checks; metric names deduplicated; the judges' style texts and tiny weights resolved.

        Raises:
            UserError: a value outside its choices or range, no metric.
        """
        check_options(self)
        self.metrics = check_judges(self.metrics)
        self.judges = self.judges.resolved()
        return self

    def generation(self, base_model: str) -> dict:
        """What decides the image bytes: a rerun with other values is refused."""
        from pipeline.models.loading import dtype_name, resolve_device, resolve_dtype

        dtype = dtype_name(resolve_dtype(self.dtype, resolve_device(self.device)))  # "auto" differs per device
        return {"model": base_model, "vae": self.vae, "dtype": dtype, "num_inference_steps": self.num_inference_steps,
                "guidance_scale": self.guidance_scale, "resolution": self.resolution, "seed": self.seed,
                "negative_prompt": self.negative_prompt, "batch_invariant": self.batch_invariant}


@dataclass
class EvalResult:
    output: str
    images_generated: int
    scores_computed: int
    report: str
    summary: dict
    seconds: float


@dataclass(frozen=True)
class ImageKey:
    model: str
    prompt_id: str
    seed_index: int

    def relpath(self) -> str:
        return f"images/{self.model}/{self.prompt_id}-{self.seed_index}.png"


def _unique_names(cands: list[TrainingOutput]) -> list[TrainingOutput]:
    out, seen = [], {BASE}
    for c in cands:
        name, n = c.name, 2
        while name in seen:
            name, n = f"{c.name}-{n}", n + 1
        seen.add(name)
        out.append(replace(c, name=name))
    return out


def _default_resolution(cands: list[TrainingOutput], base_model: str) -> int:
    """The candidates' training resolution when they agree, else the base model's own."""
    from pipeline.models.loading import default_resolution

    trained = {c.resolution for c in cands if c.resolution}
    return trained.pop() if len(trained) == 1 else default_resolution(base_model)


def resolution_note(cands: list[TrainingOutput], resolution: int, given: bool) -> str | None:
    """One line when the candidates were trained at different resolutions: which, and the one every model is
    evaluated at (``given``: from ``--resolution``, else the base model's default); None when they agree."""
    trained = {c.name: c.resolution for c in cands if c.resolution}
    if len(set(trained.values())) < 2:
        return None
    which = ", ".join(f"{name} {side}" for name, side in trained.items())
    why = "--resolution" if given else "the base model's default; pass --resolution to choose"
    return (f"candidates were trained at different resolutions ({which}); every model is evaluated at {resolution} px "
            f"({why})")


def text_encoding_note(cands: list[TrainingOutput]) -> str | None:
    """One line when the candidates' text was encoded differently (SD3: T5 on or off, T5 tokens): each is
    sampled as it was trained (the base model with the pipeline's defaults), so their images differ in
    conditioning as well as weights; None when they agree."""
    seen = {c.name: c.text_encoding() for c in cands if c.text_encoding()}
    if len({tuple(sorted(v.items())) for v in seen.values()}) < 2:
        return None

    def words(enc: dict) -> str:
        return "no T5" if enc.get("t5") is False else f"T5 {enc.get('max_sequence_length', 'default')} tokens"

    which = ", ".join(f"{name} {words(enc)}" for name, enc in seen.items())
    return f"candidates were trained on text encoded differently ({which}); each is sampled as it was trained"


def _model_path(path: str, out: Path) -> str:
    """How the report names a model: a hub id as given; a local folder relative to the output folder (no
    absolute machine path in a report that is shared)."""
    import os

    local = Path(path).expanduser()
    if not local.exists():
        return path  # a hub id (or a name the report cannot resolve): as given
    return Path(os.path.relpath(local.resolve(), Path(out).resolve())).as_posix()


def _check_unets_fit(cands: list[TrainingOutput], base_model: str) -> None:
    """Refuse, before any image is made, a candidate whose UNet does not fit ``base_model``'s pipeline
    (another family, or the same family with other text-encoder or time-embedding widths).

    Raises:
        UserError: naming the candidate, the settings that differ and what to pass instead.
    """
    from pipeline.models.loading import model_family_of, unet_config

    base = unet_config(base_model)
    fit_keys = model_family_of(base_model).fit_keys
    if base is None:
        return
    for c in cands:
        if c.kind == "unet":
            theirs = json.loads((Path(c.path) / c.denoiser_dir / "config.json").read_text())
        elif c.base_model and c.base_model != base_model:
            theirs = unet_config(c.base_model)
        else:
            continue
        diff = [k for k in fit_keys if theirs is not None and theirs.get(k) != base.get(k)]
        if diff:
            shown = ", ".join(f"{k} {theirs.get(k)} vs {base.get(k)}" for k in diff)
            raise UserError(f"candidate {c.name}'s UNet (trained from '{c.base_model}') does not fit --model "
                            f"'{base_model}' ({shown}); pass the model it was trained from or leave --model out")


def _resolve_base(cfg: EvalConfig, cands: list[TrainingOutput]) -> str:
    from pipeline.models.loading import DEFAULT_MODEL

    trained_on = {c.base_model for c in cands if c.base_model}
    if cfg.model is None:
        if len(trained_on) > 1:
            raise UserError(
                f"candidates were trained from different models ({', '.join(sorted(trained_on))}); name the base with "
                "--model"
            )
        return trained_on.pop() if trained_on else DEFAULT_MODEL
    return cfg.model


# ---------------------------------------------------------------------------------------------
# Output folder state: eval_config.json
# ---------------------------------------------------------------------------------------------


def _output_folder(out: Path) -> OutputFolder:
    return OutputFolder(Path(out), OWNED, EVAL_CONFIG, "mapo-eval")


def _prepare_output(cfg: EvalConfig, generation: dict, models: dict[str, dict]) -> dict:
    """Check a rerun's settings against the folder's, and return the (merged) state to save.

    Images made with other generation settings or by another candidate under the same name
    would be silently mixed into the comparison, so both are refused (unless --overwrite).
    """
    out = Path(cfg.output)
    state_file = out / EVAL_CONFIG
    folder = _output_folder(out)
    folder.refuse_foreign()
    if state_file.is_file() and cfg.overwrite:
        return {"generation": generation, "models": models, "scorers": {}, "overwrite": True}
    if not state_file.is_file():
        return {"generation": generation, "models": models, "scorers": {}}
    old = json.loads(state_file.read_text())
    folder.refuse_differences(old["generation"], generation, generation, said="holds images made with other settings",
                              show_values=True, remedy="Use --overwrite or another --output.")
    for name, info in models.items():
        prev = old["models"].get(name)
        if prev and (prev["path"], prev.get("fingerprint")) != (info["path"], info.get("fingerprint")):
            raise UserError(
                f"{cfg.output} holds images of another model named '{name}' ({prev['path']}); "
                "use --overwrite or another --output"
            )
        if prev and prev.get("text_encoding") != info.get("text_encoding"):  # e.g. made before it was applied
            raise UserError(f"{cfg.output} holds images of '{name}' sampled with other text encoding "
                            f"({prev.get('text_encoding') or 'the pipeline defaults'}, now "
                            f"{info.get('text_encoding') or 'the pipeline defaults'}); use --overwrite or another "
                            "--output")
    return {"generation": generation, "models": {**old["models"], **models}, "scorers": old.get("scorers", {})}


def _save_state(out: Path, state: dict) -> None:
    write_json_atomic(out / EVAL_CONFIG, {k: v for k, v in state.items() if k != "overwrite"}, sort_keys=False)


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


def _patch_batch_invariant(pipe) -> None:
    """Per-sample UNet once per UNet object (candidates swap UNets in and out)."""
    from pipeline.families import family_of_pipe
    from pipeline.runtime.batch_invariance import make_batch_invariant

    denoiser = family_of_pipe(pipe).denoiser(pipe)
    if not getattr(denoiser, "_mapo_batch_invariant", False):
        make_batch_invariant(pipe)
        denoiser._mapo_batch_invariant = True


class _ModelSwitch:
    """Puts one model's weights into a single loaded base pipeline, and takes them out again."""

    def __init__(self, pipe, batch_invariant: bool):
        from pipeline.families import family_of_pipe

        self.family = family_of_pipe(pipe)
        self.pipe, self.base_unet, self.batch_invariant = pipe, self.family.denoiser(pipe), batch_invariant
        self.t5 = None

    def use(self, cand: TrainingOutput | None) -> None:
        """Put ``cand``'s weights in (None: the base model as loaded); a candidate trained without T5 samples
        without it (``text_encoder_3=None``: zeros where T5 goes, as its latents had)."""
        pipe = self.pipe
        if cand is not None and cand.t5 is False:
            self.t5, pipe.text_encoder_3 = pipe.text_encoder_3, None
        if cand is not None and cand.kind == "unet":
            self.family.set_denoiser(pipe, load_unet(cand, self.base_unet.dtype).to(pipe.device).eval())
        elif cand is not None:
            load_lora(pipe, cand)
        if self.batch_invariant:
            _patch_batch_invariant(pipe)

    def restore(self, cand: TrainingOutput | None) -> None:
        if cand is None:
            return
        if cand.t5 is False:
            self.pipe.register_modules(text_encoder_3=self.t5)  # back in the pipeline and its config
            self.t5 = None
        if cand.kind == "unet":
            self.family.set_denoiser(self.pipe, self.base_unet)
        else:
            self.pipe.unload_lora_weights()


def _write_png(image, path: Path) -> None:
    with atomic_write(path) as tmp:  # the final name only ever holds a complete image
        image.save(tmp, format="PNG")


def _generate_missing(cfg: EvalConfig, base_model: str, models: list[tuple[str, TrainingOutput | None]],
                      prompt_set: PromptSet, out: Path) -> int:
    from pipeline.models.conditioning import report_truncation
    from pipeline.models.loading import load_pipeline, resolve_device, resolve_dtype

    from .generate import generate_images
    from .recipes import ImageRequest

    work = {
        name: [ImageKey(name, p.id, k) for p in prompt_set.prompts for k in range(cfg.seeds)
               if not (out / ImageKey(name, p.id, k).relpath()).is_file()]
        for name, _ in models
    }
    total = sum(len(v) for v in work.values())
    if not total:
        return 0
    text = {p.id: p.text for p in prompt_set.prompts}
    device = resolve_device(cfg.device)
    pipe = load_pipeline(base_model, vae=cfg.vae, dtype=resolve_dtype(cfg.dtype, device), device=device)
    switch = _ModelSwitch(pipe, cfg.batch_invariant)
    bar = progress_bar(total=total, desc="eval: generate", unit="img")
    for name, cand in models:
        todo = work[name]
        if not todo:
            continue
        switch.use(cand)
        try:
            for b in range(0, len(todo), cfg.batch_size):
                keys = todo[b : b + cfg.batch_size]
                requests = [ImageRequest(text[k.prompt_id], cfg.negative_prompt, k.seed_index) for k in keys]
                seeds = [derive_seed(cfg.seed, k.prompt_id, k.seed_index) for k in keys]
                images = generate_images(pipe, requests, seeds, cfg, **(cand.sampling_kwargs() if cand else {}))
                for key, image in zip(keys, images):
                    _write_png(image, out / key.relpath())
                bar.update(len(keys))
        finally:
            switch.restore(cand)
    bar.close()
    report_truncation("eval")
    return total


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


def _score_schema():
    import pyarrow as pa

    return pa.schema([("model", pa.string()), ("prompt_id", pa.string()), ("seed_index", pa.int64()),
                      ("seed", pa.int64()), ("prompt", pa.string()), ("metric", pa.string()), ("score", pa.float64()),
                      ("image", pa.string())])


def _read_scores(out: Path) -> list[dict]:
    import pyarrow.parquet as pq

    path = out / SCORES
    return pq.read_table(path).to_pylist() if path.is_file() else []


def _write_scores(out: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_write(out / SCORES) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=_score_schema()), tmp)


def _missing_scores(cfg: EvalConfig, keys: list[ImageKey], rows: list[dict]) -> dict[str, list[ImageKey]]:
    done = {(r["model"], r["prompt_id"], r["seed_index"], r["metric"]) for r in rows}
    return {m: [k for k in keys if (k.model, k.prompt_id, k.seed_index, m) not in done] for m in cfg.metrics}


def _score_missing(cfg: EvalConfig, judges: dict, missing: dict[str, list[ImageKey]], rows: list[dict],
                   prompt_set: PromptSet, out: Path) -> int:
    from PIL import Image

    text = {p.id: p.text for p in prompt_set.prompts}
    total = sum(len(v) for v in missing.values())
    bar = progress_bar(total=total, desc="eval: score", unit="img")
    for metric, keys in missing.items():
        for b in range(0, len(keys), SCORE_CHUNK):
            chunk = keys[b : b + SCORE_CHUNK]
            images = []
            for k in chunk:
                with Image.open(out / k.relpath()) as im:
                    images.append(im.convert("RGB"))
            scores = judges[metric].score(images, [text[k.prompt_id] for k in chunk])
            rows += [{"model": k.model, "prompt_id": k.prompt_id, "seed_index": k.seed_index,
                      "seed": derive_seed(cfg.seed, k.prompt_id, k.seed_index), "prompt": text[k.prompt_id],
                      "metric": metric, "score": float(s), "image": k.relpath()} for k, s in zip(chunk, scores)]
            _write_scores(out, rows)  # a killed run keeps every finished chunk
            bar.update(len(chunk))
    bar.close()
    return total


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def run_evaluate(cfg: EvalConfig) -> EvalResult:
    """Generate what is missing, score what is missing, and write summary.json, plots and report.html.

    Every input is checked (metrics, candidates, prompts, judge weights, output folder) before
    anything is written, so bad input leaves no output behind.
    """
    from pipeline.judges.loading import judge_provenance, load_judges

    from .eval_report import write_report

    record = options_record(cfg)  # as given, before validate() resolves the judges
    t0 = time.perf_counter()
    cfg.validate()
    cands = _unique_names([read_candidate(p) for p in cfg.candidates])
    base_model = _resolve_base(cfg, cands)
    given = cfg.resolution is not None
    if not given:
        cfg.resolution = _default_resolution(cands, base_model)
    note = resolution_note(cands, cfg.resolution, given)
    if note:
        print(f"note: {note}", file=sys.stderr)
    prompt_set = load_prompts(cfg.prompts, column=cfg.prompt_column, split=cfg.prompt_split, limit=cfg.limit)
    check_prompts(cfg.metrics, [p.text for p in prompt_set.prompts], cfg.resolution)
    models: list[tuple[str, TrainingOutput | None]] = [(BASE, None)] + [(c.name, c) for c in cands]
    model_info = {BASE: {"path": base_model, "kind": "base", "fingerprint": None}}
    model_info.update({c.name: {"path": c.path, "kind": c.kind, "objective": c.objective, "trained_from": c.base_model,
                                "fingerprint": c.fingerprint(),
                                **({"text_encoding": c.text_encoding()} if c.text_encoding() else {})} for c in cands})
    text_note = text_encoding_note(cands)
    if text_note:
        print(f"note: {text_note}", file=sys.stderr)
    generation = cfg.generation(base_model)
    state = {**_prepare_output(cfg, generation, model_info), **record}
    out = Path(cfg.output)
    _output_folder(out).check_writable()  # an unwritable --output: one line now, before any judge or model loads

    # Scores made with other judge weights are dropped (rescored), never mixed with new ones.
    rows = [] if state.get("overwrite") else _read_scores(out)
    judge_ids = {m: cfg.judges.describe([m]) for m in cfg.metrics}
    stale = {m for m in cfg.metrics if m in state["scorers"] and state["scorers"][m].get("options") != judge_ids[m]}
    rows = [r for r in rows if r["metric"] not in stale]
    keys = [ImageKey(name, p.id, k) for name, _ in models for p in prompt_set.prompts for k in range(cfg.seeds)]
    missing = {m: ks for m, ks in _missing_scores(cfg, keys, rows).items() if ks}
    # Load the judges before generating: missing weights fail before any image is made.
    judges = load_judges(list(missing), cfg.judges, cfg.device) if missing else {}
    family = check_model_available(base_model, cfg.vae)  # a model typo fails before the output folder exists
    for c in cands:
        if c.family and c.family != family:
            kind = "UNet" if get_family(c.family).denoiser_dir == "unet" else "transformer"
            raise UserError(f"candidate {c.name} is an {c.family} {kind} (trained from '{c.base_model}') but --model "
                            f"'{base_model}' is an {family} pipeline; pass its base model or leave --model out")
    _check_unets_fit(cands, base_model)
    check_resolution(base_model, cfg.resolution)
    for c in cands:
        if c.base_model and c.base_model != base_model:
            print(f"warning: candidate {c.name} was trained from '{c.base_model}', compared here with --model "
                  f"'{base_model}'", file=sys.stderr)

    if state.get("overwrite"):
        _output_folder(out).clear()  # what mapo-eval wrote; anything else in the folder is left alone
    out.mkdir(parents=True, exist_ok=True)
    for m, judge in judges.items():
        state["scorers"][m] = {"options": judge_ids[m], "higher_is_better": judge.higher_is_better,
                               "threshold": judge.threshold, "judge": judge_provenance(m, cfg.judges)}
    state["prompts"] = {"source": prompt_set.source, "count": len(prompt_set.prompts)}
    _save_state(out, state)

    generated = _generate_missing(cfg, base_model, models, prompt_set, out)
    scored = _score_missing(cfg, judges, missing, rows, prompt_set, out) if missing else 0

    current = {(k.model, k.prompt_id, k.seed_index) for k in keys}
    rows = [r for r in rows if (r["model"], r["prompt_id"], r["seed_index"]) in current and r["metric"] in cfg.metrics]
    settings = {**generation, "seeds_per_prompt": cfg.seeds, "prompts": prompt_set.source,
                "prompt_count": len(prompt_set.prompts), "metrics": cfg.metrics}
    if note:
        settings["resolution_note"] = note
    if text_note:
        settings["text_encoding_note"] = text_note
    shown = {name: {**model_info[name], "path": _model_path(str(model_info[name]["path"]), out)} for name, _ in models}
    report, summary = write_report(out, rows, [name for name, _ in models],
                                   shown,
                                   {m: state["scorers"][m] for m in cfg.metrics}, settings, prompt_set,
                                   cfg.grid_prompts, cfg.seed)
    return EvalResult(str(out), generated, scored, str(report), summary, time.perf_counter() - t0)
