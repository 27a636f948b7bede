"""Write docs/cli-reference.md from the option declarations (the one source of every option).

    python scripts/cli_reference.py            # rewrite docs/cli-reference.md
    python scripts/cli_reference.py --check    # exit 1 if it is out of date (the test suite runs this)
"""
from __future__ import annotations

import sys
from dataclasses import MISSING
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.cli.options import declared_options  # noqa: E402


def commands() -> list[tuple[str, type]]:
    from evaluation.config import EvalConfig
    from stages.generate import GenerateConfig
    from stages.inspect import InspectConfig
    from stages.label import LabelConfig
    from stages.precompute import PrecomputeConfig
    from train.config import TrainConfig

    return [("mapo-data generate", GenerateConfig), ("mapo-data label", LabelConfig),
            ("mapo-data inspect", InspectConfig), ("mapo-data precompute", PrecomputeConfig),
            ("mapo-train", TrainConfig), ("mapo-eval", EvalConfig)]


def _default(d) -> str:
    if d.default is MISSING or d.spec.required:
        return "required"
    if d.default is None or d.default == []:
        return ""
    if isinstance(d.default, list):
        return "`" + (d.spec.separator or ",").join(map(str, d.default)) + "`"
    if isinstance(d.default, bool):
        return "on" if d.default else "off"
    return f"`{d.default}`"


def render() -> str:
    out = ["# Command-line reference", "",
           "Generated from the option declarations by `python scripts/cli_reference.py`; do not edit by hand.",
           "Every command also takes `--config file.yaml` (keys: the option names, dashes or underscores; the",
           "command line wins) and the diffusers underscore spellings (`--num_inference_steps`).", ""]
    for name, cls in commands():
        out += [f"## `{name}`", "", "| option | default | help |", "|---|---|---|"]
        for d in declared_options(cls):
            flag = d.name if d.spec.argument else (d.spec.flags[0] if d.spec.flags else d.flag)
            if d.spec.hidden:
                continue
            help_text = d.spec.help.replace("|", "\\|")
            if d.spec.choices is not None and not all(str(c) in help_text for c in d.spec.choices):
                help_text += f" One of: {', '.join(map(str, d.spec.choices))}."
            out.append(f"| `{flag}` | {_default(d)} | {help_text} |")
        out.append("")
    return "\n".join(out)


def main() -> int:
    path = ROOT / "docs" / "cli-reference.md"
    text = render()
    if "--check" in sys.argv:
        if not path.is_file() or path.read_text() != text:
            print(f"{path} is out of date: run python scripts/cli_reference.py", file=sys.stderr)
            return 1
        return 0
    path.write_text(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
