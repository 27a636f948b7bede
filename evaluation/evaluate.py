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
from pathlib import Path

from pipeline.cli.options import options_record
from pipeline.data.atomic import write_json_atomic
from pipeline.data.output_folder import OutputFolder
from pipeline.data.prompts import load_prompts
from pipeline.errors import UserError
from pipeline.families import a_family, get_family
from pipeline.judges.registry import check_prompts
from pipeline.models.loading import (
    check_model_available,
    check_negative_prompt,
    check_resolution,
    check_t5_options,
    t5_length_to_record,
)
from pipeline.models.option_checks import check_t5_length
from pipeline.models.training_output import TrainingOutput, read_training_output

from .candidates import (
    check_unets_fit,
    eval_resolution,
    model_path,
    resolution_note,
    resolve_base,
    text_encoding_note,
    unique_names,
)
from .config import BASE, EVAL_CONFIG, OWNED, EvalConfig, EvalResult, ImageKey
from .sampling import generate_missing
from .scoring import missing_scores, read_scores, score_missing


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



def run_evaluate(cfg: EvalConfig) -> EvalResult:
    """Generate what is missing, score what is missing, and write summary.json, plots and report.html.

    Every input is checked (metrics, candidates, prompts, judge weights, output folder) before
    anything is written, so bad input leaves no output behind.
    """
    from pipeline.judges.loading import judge_provenance, load_judges

    from .report import write_report

    record = options_record(cfg)  # as given, before validate() resolves the judges
    t0 = time.perf_counter()
    cfg.validate()
    cands = unique_names([read_training_output(p) for p in cfg.candidates])
    base_model = resolve_base(cfg, cands)
    given = cfg.resolution is not None
    if not given:
        cfg.resolution = eval_resolution(cands, base_model)
    note = resolution_note(cands, cfg.resolution, given)
    prompt_set = load_prompts(cfg.prompts, column=cfg.prompt_column, split=cfg.prompt_split, limit=cfg.limit)
    check_prompts(cfg.metrics, [p.text for p in prompt_set.prompts], cfg.resolution)
    models: list[tuple[str, TrainingOutput | None]] = [(BASE, None)] + [(c.name, c) for c in cands]
    if cfg.base_max_sequence_length is not None:  # a model without T5: refused, as generate and precompute do
        check_t5_options(base_model, ["--base-max-sequence-length"])
        check_t5_length(base_model, cfg.base_max_sequence_length, "--base-max-sequence-length")
    base_tokens = t5_length_to_record(base_model, cfg.base_max_sequence_length)  # None at the default, given or not
    base_text = {"max_sequence_length": base_tokens} if base_tokens else {}
    model_info = {BASE: {"path": base_model, "kind": "base", "fingerprint": None,
                         **({"text_encoding": base_text} if base_text else {})}}
    model_info.update({c.name: {"path": c.path, "kind": c.kind, "objective": c.objective, "trained_from": c.base_model,
                                "fingerprint": c.fingerprint(),
                                **({"text_encoding": c.text_encoding()} if c.text_encoding() else {})} for c in cands})
    text_note = text_encoding_note(cands, cfg.base_max_sequence_length)
    generation = cfg.generation(base_model)
    state = {**_prepare_output(cfg, generation, model_info), **record}
    out = Path(cfg.output)
    _output_folder(out).check_writable()  # an unwritable --output: one line now, before any judge or model loads

    # Scores made with other judge weights are dropped (rescored), never mixed with new ones.
    rows = [] if state.get("overwrite") else read_scores(out)
    judge_ids = {m: cfg.judges.describe([m]) for m in cfg.metrics}
    stale = {m for m in cfg.metrics if m in state["scorers"] and state["scorers"][m].get("options") != judge_ids[m]}
    rows = [r for r in rows if r["metric"] not in stale]
    keys = [ImageKey(name, p.id, k) for name, _ in models for p in prompt_set.prompts for k in range(cfg.seeds)]
    missing = {m: ks for m, ks in missing_scores(cfg, keys, rows).items() if ks}
    # Load the judges before generating: missing weights fail before any image is made.
    judges = load_judges(list(missing), cfg.judges, cfg.device) if missing else {}
    family = check_model_available(base_model, cfg.vae, whole_pipeline=True)  # before the output folder exists
    for c in cands:
        if c.family and c.family != family:
            kind = "UNet" if get_family(c.family).denoiser_dir == "unet" else "transformer"
            raise UserError(f"candidate {c.name} is {a_family(c.family)} {kind} (trained from '{c.base_model}') but "
                            f"--model '{base_model}' is {a_family(family)} pipeline; pass its base model or leave "
                            "--model out")
    check_unets_fit(cands, base_model)
    check_resolution(base_model, cfg.resolution)
    check_negative_prompt(base_model, ["--negative-prompt"] if cfg.negative_prompt is not None else [])
    for c in cands:
        if c.base_model and c.base_model != base_model:
            print(f"warning: candidate {c.name} was trained from '{c.base_model}', compared here with --model "
                  f"'{base_model}'", file=sys.stderr)
    for line in (note, text_note):  # after every check: a refused run says its one error line alone
        if line:
            print(f"note: {line}", file=sys.stderr)

    if state.get("overwrite"):
        _output_folder(out).clear()  # what mapo-eval wrote; anything else in the folder is left alone
    out.mkdir(parents=True, exist_ok=True)
    for m, judge in judges.items():
        state["scorers"][m] = {"options": judge_ids[m], "higher_is_better": judge.higher_is_better,
                               "threshold": judge.threshold, "judge": judge_provenance(m, cfg.judges)}
    state["prompts"] = {"source": prompt_set.source, "count": len(prompt_set.prompts)}
    _save_state(out, state)

    generated = generate_missing(cfg, base_model, models, prompt_set, out)
    scored = score_missing(cfg, judges, missing, rows, prompt_set, out) if missing else 0

    current = {(k.model, k.prompt_id, k.seed_index) for k in keys}
    rows = [r for r in rows if (r["model"], r["prompt_id"], r["seed_index"]) in current and r["metric"] in cfg.metrics]
    settings = {**generation, "seeds_per_prompt": cfg.seeds, "prompts": prompt_set.source,
                "prompt_count": len(prompt_set.prompts), "metrics": cfg.metrics}
    if note:
        settings["resolution_note"] = note
    if text_note:
        settings["text_encoding_note"] = text_note
    shown = {name: {**model_info[name], "path": model_path(str(model_info[name]["path"]), out)} for name, _ in models}
    report, summary = write_report(out, rows, [name for name, _ in models],
                                   shown,
                                   {m: state["scorers"][m] for m in cfg.metrics}, settings, prompt_set,
                                   cfg.grid_prompts, cfg.seed)
    return EvalResult(str(out), generated, scored, str(report), summary, time.perf_counter() - t0)
