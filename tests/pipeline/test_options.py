"""Options declared once (pipeline.cli.options): every CLI option comes from a config field with help,
``--config`` YAML works for every command with the command line winning, underscore aliases."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import typer

from evaluation.cli import app as eval_app
from evaluation.config import EvalConfig
from pipeline.cli.options import (
    at_least,
    build_config,
    command,
    declared_options,
    iter_commands,
    nested,
    option,
    option_values,
    read_config_file,
)
from pipeline.errors import UserError
from stages.cli import app as data_app
from stages.generate import GenerateConfig
from stages.inspect import InspectConfig
from stages.label import LabelConfig
from stages.precompute import PrecomputeConfig
from tests.helpers import run_cli
from train.cli import app as train_app
from train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {"generate": GenerateConfig, "label": LabelConfig, "inspect": InspectConfig, "precompute": PrecomputeConfig,
           "mapo-eval": EvalConfig, "mapo-train": TrainConfig}
APPS = {"generate": data_app, "label": data_app, "inspect": data_app, "precompute": data_app,
        "mapo-eval": eval_app, "mapo-train": train_app}


def _commands():
    out = {}
    for app, prefix in ((data_app, None), (eval_app, "mapo-eval"), (train_app, "mapo-train")):
        for name, cmd in iter_commands(app):
            out[prefix or name] = cmd
    return out


def test_every_option_of_every_command_is_a_declared_field_with_help():
    commands = _commands()
    assert set(commands) == set(CONFIGS)
    for name, cmd in commands.items():
        declared = {d.name: d for d in declared_options(CONFIGS[name])}
        params = {p.name: p for p in cmd.params if p.name != "help"}
        assert set(params) == set(declared) | {"config"}, name
        for pname, param in params.items():
            assert (getattr(param, "help", None) or pname == "directory"), f"{name} --{pname} has no help"
        for d in declared.values():
            assert d.spec.help.strip(), f"{name}: {d.name} has no help"


def test_options_are_written_once_in_the_source():
    """No command declares a typer option by hand: pipeline/cli/options.py is the one place that makes them."""
    offenders = []
    for folder in ("pipeline", "stages", "evaluation", "train"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.relative_to(ROOT).as_posix() == "pipeline/cli/options.py":
                continue
            if re.search(r"typer\.(Option|Argument)\(", path.read_text()):
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, offenders


def test_every_default_is_documented_once():
    """A default lives in the field only: --help shows the field's default (no second copy in the CLI)."""
    for name, cmd in _commands().items():
        by_name = {p.name: p for p in cmd.params}
        for d in declared_options(CONFIGS[name]):
            if d.default in (None, dataclass_missing()) or d.spec.required or d.is_list:
                continue
            default = by_name[d.name].default
            assert default == d.default, (name, d.name, default, d.default)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_yaml_config_and_command_line_precedence(tmp_path, name):
    """defaults < --config YAML < the command line, through the same command() the real CLIs use."""
    cls = CONFIGS[name]
    declared = declared_options(cls)
    required = [d for d in declared if d.default is dataclass_missing() or d.spec.required
                or d.name in NEEDED_WITH_DEFAULTS.get(name, ())]
    base = {d.name: _value(d, tmp_path) for d in required}
    # An int option whose default + 8 and + 16 pass its own check and the config's cross-option rules
    # (--images-per-prompt 10 needs --recipe seeds: not a candidate here).
    ints = [d for d in declared if d.base is int and not d.is_list and d.default not in (None, dataclass_missing())
            and d.spec.check is not None and not d.spec.check(d.default + 8) and not d.spec.check(d.default + 16)
            and _builds(cls, {**base, d.name: d.default + 8})]
    d_int = ints[0]
    app = typer.Typer(add_completion=False)
    seen = {}

    @command(app, cls)
    def capture(cfg):
        seen["cfg"] = cfg

    @app.command()
    def _other():  # two commands: typer keeps the command name on the command line
        pass

    yaml_file = tmp_path / "c.yaml"
    lines = [f"{d.name.replace('_', '-')}: {_value(d, tmp_path)}" for d in required]
    yaml_file.write_text("\n".join(lines + [f"{d_int.name}: {d_int.default + 8}"]) + "\n")
    result = run_cli(app, ["capture", "--config", yaml_file])
    assert result.exit_code == 0, result.output
    assert option_values(seen["cfg"])[d_int.name] == d_int.default + 8  # YAML over the default
    flag = "--" + d_int.name.replace("_", "-")
    result = run_cli(app, ["capture", "--config", yaml_file, flag, d_int.default + 16])
    assert result.exit_code == 0, result.output
    assert option_values(seen["cfg"])[d_int.name] == d_int.default + 16  # the command line over YAML


# Options that are optional in the declaration but needed with the other defaults: mapo-train's --data
# (required by every objective but spo, which reads --prompts: TrainConfig.validate says so).
NEEDED_WITH_DEFAULTS = {"mapo-train": ("data",)}


def _builds(cls, values) -> bool:
    try:
        build_config(cls, values)
    except UserError:
        return False
    return True


def _value(d, tmp_path):
    """A valid value for a required option: its first choice, else a path under tmp_path."""
    return d.spec.choices[0] if d.spec.choices else tmp_path / d.name


def dataclass_missing():
    from dataclasses import MISSING

    return MISSING


@pytest.mark.parametrize("name,args,bad_key", [
    ("generate", ["generate"], "num_inference_steps: 0"),
    ("label", ["label"], "batch_size: 0"),
    ("inspect", ["inspect"], "samples: 0"),
    ("precompute", ["precompute"], "resolution: 60"),
    ("mapo-eval", [], "seeds: 0"),
    ("mapo-train", [], "batch_size: 0"),
])
def test_every_real_command_reads_config_files(tmp_path, name, args, bad_key):
    """The shipped commands take --config: a bad value in the file is one error line naming the option,
    and nothing is written."""
    declared = declared_options(CONFIGS[name])
    required = [d for d in declared if d.default is dataclass_missing() or d.spec.required]
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("\n".join([f"{d.name}: {_value(d, tmp_path)}" for d in required] + [bad_key]) + "\n")
    result = run_cli(APPS[name], [*args, "--config", yaml_file])
    lines = [line for line in result.output.splitlines() if line.strip()]
    key = bad_key.split(":")[0].replace("_", "-")
    assert result.exit_code == 2 and len(lines) == 1 and f"--{key}" in lines[0], result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_unknown_and_mistyped_yaml_values_are_one_line(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("prompts: p.txt\noutput: out\nnum-inference-steps: many\n")
    with pytest.raises(UserError, match="--num-inference-steps must be an integer, got 'many'"):
        build_config(GenerateConfig, read_config_file(yaml_file, GenerateConfig))
    yaml_file.write_text("prompts: p.txt\nnum_inference_step: 3\n")
    with pytest.raises(UserError, match="unknown keys: num_inference_step"):
        read_config_file(yaml_file, GenerateConfig)


def test_a_misspelled_yaml_key_gets_the_suggestion_the_command_line_gives(tmp_path):
    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text("learning_rat: 1e-5\nzzz: 1\n")
    result = run_cli(train_app, ["--config", yaml_file, "--data", tmp_path, "--model", "tiny-sdxl",
                                 "--output-dir", tmp_path / "run"])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].endswith("has unknown keys: learning_rat (did you mean learning_rate?), zzz."), lines
    assert not (tmp_path / "run").exists()


def test_underscore_spellings_are_hidden_aliases(tmp_path):
    """--num_inference_steps (the diffusers scripts' spelling) means --num-inference-steps."""
    result = run_cli(data_app, ["generate", "--prompts", tmp_path / "p.txt", "--output", tmp_path / "o",
                                "--num_inference_steps", "0"])
    assert result.exit_code == 2 and "--num-inference-steps must be at least 1, got 0" in result.output
    help_text = run_cli(data_app, ["generate", "--help"]).output
    assert "--num-inference" in help_text and "--num_inference" not in help_text


@dataclass
class _Inner:
    batch_size: int = option(1, help="inner")


@dataclass
class _Outer:
    inner: _Inner = field(default_factory=_Inner)
    batch_size: int = option(2, help="outer", check=at_least(1))


def test_nested_configs_are_flattened_and_clashes_refused():
    names = [d.name for d in declared_options(GenerateConfig)]
    assert "recipe" in names and "safety_caption" in names  # RecipeConfig's fields are generate's options
    assert [d.path for d in declared_options(GenerateConfig) if d.name == "recipe"] == [("recipe", "name")]

    with pytest.raises(TypeError, match="declared twice: batch_size"):
        declared_options(_Outer)


@dataclass(frozen=True)
class _Judges:
    batch_size: int = option(3, help="judges", check=at_least(1))
    tiny: bool = option(False, flags=("--tiny",), help="tiny")
    same: bool = option(True, flags=("--same/--different",), help="same")


@dataclass
class _Prefixed:
    judges: _Judges = nested(_Judges, "reward_")
    batch_size: int = option(2, help="outer")


def test_nested_config_with_a_prefix_names_its_options_apart():
    declared = {d.name: d for d in declared_options(_Prefixed)}
    assert list(declared) == ["reward_batch_size", "reward_tiny", "reward_same", "batch_size"]
    assert (
        declared["reward_tiny"].spec.flags == ("--reward-tiny",) and declared["reward_tiny"].path == ("judges", "tiny")
    )
    assert declared["reward_same"].spec.flags == ("--reward-same/--reward-different",)
    cfg = build_config(_Prefixed, {"reward_batch_size": "5", "batch_size": 7, "reward_tiny": True})
    assert (cfg.judges.batch_size, cfg.judges.tiny, cfg.batch_size) == (5, True, 7)
    assert option_values(cfg)["reward_batch_size"] == 5
    with pytest.raises(UserError, match="--reward-batch-size must be at least 1, got 0"):
        build_config(_Prefixed, {"reward_batch_size": 0})

    app = typer.Typer()
    seen = {}
    command(app, _Prefixed)(lambda cfg: seen.setdefault("cfg", cfg))
    result = run_cli(app, ["--reward-batch-size", "4", "--reward-tiny", "--reward-different", "--batch-size", "9"])
    assert result.exit_code == 0, result.output
    assert seen["cfg"].judges == _Judges(4, True, False) and seen["cfg"].batch_size == 9


def test_required_option_missing_is_one_line(tmp_path):
    result = run_cli(data_app, ["precompute", "--output", tmp_path / "o"])
    assert result.exit_code == 2 and "--input is required" in result.output
    assert not (tmp_path / "o").exists()


def test_cli_reference_is_generated_from_the_declarations():
    """docs/cli-reference.md is what scripts/cli_reference.py writes from the declarations today."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "cli_reference.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


SECTIONS = {"## `mapo-data generate`": "generate", "## `mapo-data label`": "label", "## `mapo-data inspect`": "inspect",
            "## `mapo-data precompute`": "precompute", "## `mapo-train`": "mapo-train", "## `mapo-eval`": "mapo-eval"}


def _flags(cmd) -> set[str]:
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}


def test_readme_stage_sections_name_only_real_options():
    """Every --option a README stage section names is an option of that command (or of a command the
    section names with it, e.g. `label --verify` inside precompute's section): README and --help agree."""
    commands = _commands()
    every = set().union(*(_flags(c) for c in commands.values()))
    section, stale = None, []
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("## "):
            section = SECTIONS.get(line.strip())
            continue
        if section is None:
            continue
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*(?![\w])", line):
            if flag in ("--help", "--config", "--cpu") or "_" in flag:  # --cpu, *_*: accelerate launch's
                continue
            if flag not in _flags(commands[section]) and flag not in every:
                stale.append(f"{section}: {flag}")
    assert not stale, stale


def test_an_output_folder_repeats_its_options(tmp_path):
    """--config <output folder>: the options the output was made with (its record), command line winning."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\na dog\n")
    fast = ["--model", "tiny-sdxl", "--num-inference-steps", "1", "--resolution", "64", "--seed", "7"]
    first = run_cli(data_app, ["generate", "--prompts", prompts, "--output", tmp_path / "out", *fast])
    assert first.exit_code == 0, first.output
    again = run_cli(data_app, ["generate", "--config", tmp_path / "out"])
    assert again.exit_code == 0 and "nothing to do" in again.output, again.output  # same options: resumed
    other = run_cli(data_app, ["generate", "--config", tmp_path / "out" / "manifest.json", "--seed", "8"])
    assert other.exit_code == 2 and "differs in: seed" in other.output  # the command line wins
    wrong = run_cli(data_app, ["precompute", "--config", tmp_path / "out"])
    assert (
        wrong.exit_code == 2
        and "records the options of GenerateConfig, not of this command (PrecomputeConfig)" in wrong.output
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli(data_app, ["generate", "--config", empty])
    assert result.exit_code == 2 and "without a record of its options" in result.output


def _entry_point_apps() -> dict:
    """Every typer app a user runs: the console scripts of pyproject.toml, and the ``python -m`` ones."""
    import importlib

    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    targets = dict(scripts)
    targets.update({"python -m bench": "bench.__main__:app", "python -m world": "world.__main__:app"})
    return {name: getattr(importlib.import_module(t.split(":")[0]), t.split(":")[1]) for name, t in targets.items()}


@pytest.mark.parametrize("name", list(_entry_point_apps()))
def test_a_misspelled_command_or_unknown_option_is_one_line_for_every_entry_point(name):
    """click's own message (and its suggestion), as one ``error:`` line with exit status 2 like every other error,
    not click's boxed usage text: for an unknown option, and for a misspelled subcommand (a group: `mapo-data
    genrate`) or a stray word (a single command: `mapo-train genrate`)."""
    import typer.main

    app = _entry_point_apps()[name]
    group = isinstance(typer.main.get_command(app), typer.core.TyperGroup)
    first = next(name for name, _ in iter_commands(app)) if group else "generate"
    typo = first[0] + first[2:]  # a letter left out
    cases = [(["--bogus"], "No such option: --bogus"),
             ([typo], f"No such command '{typo}'. Did you mean '{first}'?" if group
              else f"unexpected extra argument(s) ({typo})")]
    if group:
        cases.append(([first, "--bogus"], "No such option: --bogus"))
    for args, message in cases:
        result = run_cli(app, args)
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert lines[0].startswith("error: ") and message in lines[0] and lines[0].endswith("--help)"), lines
