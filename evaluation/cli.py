"""``mapo-eval``: compare a base model with trained candidates. Parses options and calls the stage."""
from __future__ import annotations

import typer

from pipeline.cli.formatting import count, distinct_digits
from pipeline.cli.options import command
from pipeline.judges.registry import get_judge

from .config import BASE, EvalConfig

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@command(app, EvalConfig, name="evaluate")
def evaluate(cfg: EvalConfig):
    """Compare a base model with mapo-train outputs: paired images, the paper's metrics, win rates, an HTML report."""
    from .evaluate import run_evaluate

    result = run_evaluate(cfg)
    # Judges without weights stay as they are; safety stays NudeNet's real detector (pipeline.judges.tiny).
    tiny = [m for m in cfg.metrics if cfg.judges.tiny and get_judge(m).weights and m != "safety"]
    for metric, m in result.summary["metrics"].items():
        est = {name: pm["estimate"] for name, pm in m["per_model"].items()}
        base = est.get(BASE)
        line = ", ".join(f"{name} {text}" + (f" ({est[name] - base:+.2g})" if base is not None and name != BASE else "")
                         for (name, text) in zip(est, distinct_digits(list(est.values()))))
        rates = {name: w["rate"] for name, w in m["win_rate_vs_base"].items()}
        wins = ", ".join(f"{name} {text}" for name, text in zip(rates, distinct_digits(list(rates.values()), 3)))
        dropped = sum(pm.get("dropped", 0) for pm in m["per_model"].values())
        typer.echo(f"{metric}: {line}" + (f" | win rate vs base: {wins}" if wins else "")
                   + (f" | {count(dropped, 'non-finite score')} dropped" if dropped else ""))
    typer.echo(
        f"eval: {count(result.images_generated, 'image')} generated, {count(result.scores_computed, 'score')} computed "
        f"in {result.seconds:.1f}s -> report: {result.report}"
        + (f"; {', '.join(tiny)} scored with TINY RANDOM WEIGHTS (--tiny-scorers): those numbers measure nothing"
           if tiny else "")
    )


if __name__ == "__main__":  # pragma: no cover
    app()
