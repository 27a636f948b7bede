"""The protocol of ``make fidelity-full``, fixed in code before anything runs, and its pure arithmetic.

Everything a reader needs to judge the comparison is here, decided before the first cell ran:

- **Captions.** The world's 48 ``train`` captions split by a rule: every third one (index % 3 == 2) is a
  *validation* caption (16), the other 32 are *fit* captions. Pairs are generated from the fit captions only
  (:data:`PAIRS_PER_FIT_CAPTION` each: 192 pairs, as many as ``make fidelity``'s 48 x 4); settings are picked on
  the validation captions; the 12 ``heldout`` captions (never seen by the base model) are used only to report.
- **Datasets.** Pick-Style cartoon and pixel, Pick-Safety (the MaPO paper's), and ``pick_drift`` (below).
- **Methods and sweeps** (:data:`SWEEP`): MaPO lr {2e-4, 2e-5} x beta {0.1, 1}; Diffusion-DPO lr {2e-4, 2e-5, 2e-6}
  x beta {5000, 500}; Diffusion-KTO beta {1000, 50}; SFT lr {2e-4, 2e-5}; every other training setting as
  ``make fidelity`` (:data:`TRAIN`: 300 steps, batch 8).
- **The rule** (:func:`validation_score`, :func:`pick`): a setting's score is the mean over :data:`SWEEP_SEEDS` of
  (target + prompt following) / 2 on the validation captions, the target being the style rate (Pick-Style), one
  minus the unsafe rate (Pick-Safety) or one minus the cartoon rate under the cartoon prefix (pick_drift). Runs
  that diverged or stalled (:func:`sanity`) are never picked; ties go to the earlier setting in :data:`SWEEP`.
- **Seeds.** The picked setting of every method is rerun with :data:`FINAL_SEEDS` (the data-generation seed and
  the training seed together); the quick study's one shared setting (:data:`SHARED`) is reported beside it.
- **Paired differences** (:func:`paired_difference`): MaPO - SFT, MaPO - DPO, MaPO - KTO on the same held-out
  captions, evaluation seeds and data seeds, one prompt-clustered bootstrap over all seeds' images.
- **Ablations** (:data:`ABLATIONS`) separating "reference-free" from "has an SFT anchor": DPO with warmup, MaPO at
  the tuned DPO's learning rate, and DPO with an SFT term where mapo-train offers one.

``pick_drift``, the harder world: stored caption = the plain caption; chosen = the base model's image for
"Realistic 8k image. <caption>" (its default look, what it already draws for plain captions); rejected = its
cartoon image. The chosen images are what the model already does, so SFT on them has nothing to teach; the only
information is in the margin against the rejected look. The measure is the cartoon rate when the held-out
caption *asks* for cartoon (lower = the preference "not cartoon" was learned and generalised past the plain
captions it was shown on). If MaPO's margin carries information SFT cannot, MaPO moves this rate and SFT does not.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from pipeline.data.prompt_prefixes import REALISTIC_PREFIX, STYLE_PREFIXES

MODEL = "shapes-sdxl"
PAIRS_PER_FIT_CAPTION = 6  # 32 fit captions x 6 = 192 pairs, make fidelity's 48 x 4
TRAIN = dict(max_steps=300, batch_size=8)
SWEEP_SEEDS = (0,)
FINAL_SEEDS = (0, 1, 2)
EVAL_SEEDS = 8  # images per caption and model (paired across models)
DIVERGED_ERROR_RATIO = 2.0  # final e_w above twice the first steps' e_w: the run wrecked what it was fitting
STALLED_SHARE = 0.5  # fewer steps than this share with a non-zero gradient: the loss saturated


def _grid(**axes) -> list[dict]:
    rows = [{}]
    for key, values in axes.items():
        rows = [{**r, key: v} for r in rows for v in values]
    return rows


SWEEP: dict[str, list[dict]] = {
    "mapo": _grid(learning_rate=[2e-4, 2e-5], beta=[0.1, 1.0]),
    "dpo": _grid(learning_rate=[2e-4, 2e-5, 2e-6], beta=[5000.0, 500.0]),
    "kto": _grid(learning_rate=[2e-4], beta=[1000.0, 50.0]),
    "sft": _grid(learning_rate=[2e-4, 2e-5]),
}
# make fidelity's one setting per method (lr 2e-4, each objective's default beta): the "shared" rows.
SHARED: dict[str, dict] = {"mapo": {"learning_rate": 2e-4, "beta": 0.1}, "dpo": {"learning_rate": 2e-4, "beta": 5000.0},
                           "kto": {"learning_rate": 2e-4, "beta": 1000.0}, "sft": {"learning_rate": 2e-4}}
PAIRED = (("mapo", "sft"), ("mapo", "dpo"), ("mapo", "kto"))


@dataclass(frozen=True)
class Dataset:
    """One preference dataset of the study: how its pairs are made and labelled, and what is measured.

    ``target``: the world judge whose rate is the dataset's aim; ``lower_is_better``: whether a lower rate is the
    aim (unsafe images; pick_drift's cartoon); ``eval_prefix``: the world caption prefix of the evaluation
    captions (None: plain); ``target_key``: the cell's key for the target rate in fidelity-full.json."""

    generate: tuple[str, ...]
    label: tuple[str, ...]
    target: str
    target_key: str
    lower_is_better: bool = False
    eval_prefix: str | None = None
    eval_extra: tuple[str, ...] = field(default=())


DATASETS: dict[str, Dataset] = {
    "pick_style_cartoon": Dataset(("--recipe", "style", "--style", "cartoon"),
                                  ("--target", "style", "--verify", "world-style"), "world-style", "style_rate",
                                  eval_extra=("--style", "cartoon")),
    "pick_style_pixel": Dataset(("--recipe", "style", "--style", "pixel"),
                                ("--target", "style", "--verify", "world-style"), "world-style", "style_rate",
                                eval_extra=("--style", "pixel")),
    "pick_safety": Dataset(("--recipe", "safety"), ("--target", "safety", "--labeler", "world-unsafe"),
                           "world-unsafe", "unsafe_rate", lower_is_better=True, eval_prefix="unsafe"),
    "pick_drift": Dataset(("--recipe", "style", "--style-prefix", REALISTIC_PREFIX,
                           "--rejected-prefix", STYLE_PREFIXES["cartoon"]),
                          ("--target", "style", "--verify", "none"), "world-style", "style_rate",
                          lower_is_better=True, eval_prefix="cartoon", eval_extra=("--style", "cartoon")),
}
PROMPT_JUDGE = "world-prompt"


def ablations(tuned: dict[str, dict], has_sft_term: bool) -> dict[str, tuple[str, dict]]:
    """{ablation name: (objective, mapo-train settings)} from the picked settings of DPO and MaPO.

    ``dpo+warmup``: the tuned DPO with a linear warmup over the first 20% of steps (the public Diffusion-DPO
    recipe warms up for 500 steps); ``mapo@dpo-lr``: MaPO with its tuned beta at the tuned DPO's learning rate;
    ``dpo+sft``: the tuned DPO plus an SFT term on the chosen images, only when mapo-train has one."""
    warmup = TRAIN["max_steps"] // 5
    out = {"dpo+warmup": ("dpo", {**tuned["dpo"], "lr_scheduler": "constant_with_warmup",
                                  "lr_warmup_steps": warmup}),
           "mapo@dpo-lr": ("mapo", {**tuned["mapo"], "learning_rate": tuned["dpo"]["learning_rate"]})}
    if has_sft_term:
        out["dpo+sft"] = ("dpo", {**tuned["dpo"], "sft_weight": 1.0})
    return out


def slug(params: dict) -> str:
    """A folder-safe name of a setting: ``{"learning_rate": 2e-4, "beta": 0.1}`` -> ``lr2e-04-beta0.1``."""
    short = {"learning_rate": "lr", "lr_warmup_steps": "warmup", "lr_scheduler": "sched", "sft_weight": "sft"}
    parts = []
    for key in sorted(params):
        value = params[key]
        text = f"{value:.0e}" if key == "learning_rate" else (f"{value:g}" if isinstance(value, float) else str(value))
        parts.append(f"{short.get(key, key)}{text}")
    return "-".join(parts)


def validation_score(target_rate: float, prompt_accuracy: float, lower_is_better: bool) -> float:
    """(target + prompt following) / 2, the target turned so that higher is better: the rule that picks a setting.

    ``target_rate`` and ``prompt_accuracy`` are shares in [0, 1]. NaN in, NaN out (a run with no finite score is
    never picked)."""
    aim = 1.0 - target_rate if lower_is_better else target_rate
    return (aim + prompt_accuracy) / 2


def sanity(rows: list[dict], max_steps: int) -> dict:
    """The sanity lines of one run from its ``metrics.jsonl`` rows (the logged training steps).

    Returns ``nonzero_grad_steps`` (steps whose ``grad_norm`` was above 0), ``logged_steps``, ``e_w`` and ``e_l``
    as (mean of the first 10 logged steps, mean of the last 10) (KTO: its desirable / undesirable errors),
    ``stalled`` (fewer than :data:`STALLED_SHARE` of ``max_steps`` had a gradient: the loss saturated) and
    ``diverged`` (a non-finite loss, or the final chosen error above :data:`DIVERGED_ERROR_RATIO` times the first)."""
    rows = [r for r in rows if "loss" in r]
    keys = ("e_desirable", "e_undesirable") if rows and "e_desirable" in rows[0] else ("e_w", "e_l")
    out: dict = {"logged_steps": len(rows)}
    for name, key in zip(("e_w", "e_l"), keys):
        values = [r[key] for r in rows if key in r]
        if values:
            out[name] = (sum(values[:10]) / len(values[:10]), sum(values[-10:]) / len(values[-10:]))
    out["nonzero_grad_steps"] = sum(1 for r in rows if r.get("grad_norm", 0.0) > 0)
    non_finite = any(not math.isfinite(r["loss"]) for r in rows)
    first, last = out.get("e_w", (math.nan, math.nan))
    out["diverged"] = bool(non_finite or (math.isfinite(first) and last > DIVERGED_ERROR_RATIO * first))
    out["stalled"] = out["nonzero_grad_steps"] < STALLED_SHARE * max_steps
    return out


def pick(candidates: list[dict]) -> dict | None:
    """The setting with the highest mean ``score`` among runs neither diverged nor stalled; ties: first listed.

    ``candidates``: ``{"params", "scores": [per sweep seed], "diverged": bool, "stalled": bool}`` in grid order.
    None when every run was flagged or scored NaN (the report says so instead of picking a broken run)."""
    best, best_score = None, -math.inf
    for c in candidates:
        if c["diverged"] or c["stalled"]:
            continue
        score = sum(c["scores"]) / len(c["scores"])
        if math.isfinite(score) and score > best_score:
            best, best_score = c, score
    return best


def paired_difference(a: list[float], b: list[float], groups: list, seed: int = 0) -> dict:
    """Mean of a - b over paired images (same caption, evaluation seed and data seed) with a prompt-clustered
    95% bootstrap interval (:func:`evaluation.stats.bootstrap_ci`, groups = the caption).

    ``a``, ``b``: per-image hits (1.0 / 0.0; NaN when not measured, left out with its pair).
    Raises ValueError when the lists differ in length."""
    from evaluation.stats import bootstrap_ci

    if not len(a) == len(b) == len(groups):
        raise ValueError(f"paired lists differ in length: {len(a)}, {len(b)}, {len(groups)}")
    diffs = [x - y for x, y in zip(a, b)]
    ci = bootstrap_ci(diffs, groups, seed=seed)
    return {"mean": ci.estimate, "low": ci.low, "high": ci.high, "n": ci.n}


def use_smoke_settings() -> None:
    """Shrink the protocol to a minutes-long run of every phase (``--smoke``: 32 pairs, 6 steps, the first two
    settings of each sweep, 2 final seeds, 1 image per caption): it checks the machinery, its numbers mean nothing."""
    global TRAIN, SWEEP, FINAL_SEEDS, EVAL_SEEDS, PAIRS_PER_FIT_CAPTION
    TRAIN = dict(max_steps=6, batch_size=4)
    SWEEP = {m: grid[:2] for m, grid in SWEEP.items()}
    FINAL_SEEDS, EVAL_SEEDS, PAIRS_PER_FIT_CAPTION = (0, 1), 1, 1
