"""Options declared once: a config dataclass field carries its help, choices and check.

Every command of ``mapo-data``, ``mapo-train`` and ``mapo-eval`` is a config dataclass plus a
function of it. A field declared with :func:`option` carries what a user sees (help text, the
``--help`` panel, choices, the check on its value); :func:`command` turns the class into typer
options, adds ``--config file.yaml`` (keys are the option names; the command line wins), merges,
coerces and checks the values and calls the function with the finished config. A nested dataclass
field (``GenerateConfig.recipe``) contributes its own declared fields as options of the same command.

The pattern follows transformers' ``HfArgumentParser`` / trl's config dataclasses (a field's
metadata holds its help) and torchtune's YAML configs (one file gives every option).

About 530 lines, over the ~500 the project aims for: the declaration machinery and the ~15 options every command
shares (model, dtype, sampling, seeds, prompt columns) are read together when a command is declared, and 40 modules
import from here.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from pipeline.errors import UserError
from pipeline.models.loading import DTYPES

_META = "option"
_PREFIX = "option_prefix"  # metadata of a nested config field: a prefix for every option it contributes
Check = Callable[[Any], Optional[str]]  # value -> None when fine, else what is wrong ("must be > 0")


@dataclass(frozen=True)
class OptionSpec:
    """How a config field appears on the command line (stored in the field's metadata)."""

    help: str
    choices: tuple | None = None  # allowed values (each element, for a list)
    check: Check | None = None  # further rule on a non-None value
    flags: tuple[str, ...] = ()  # explicit spellings, e.g. ("--same-seed/--distinct-seeds",); default --field-name
    name: str | None = None  # the option's name when the field's own would clash once nested (score_batch_size)
    panel: str | None = None  # the --help panel (rich_help_panel)
    hidden: bool = False
    required: bool = False  # must come from the command line or --config
    argument: bool = False  # positional
    separator: str | None = ","  # list fields: comma-separated text on the command line; None: repeat the option


def option(default: Any = MISSING, *, help: str, default_factory: Any = MISSING, **spec: Any) -> Any:
    """A dataclass field declared as a command-line option (see :class:`OptionSpec` for ``spec``)."""
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={_META: OptionSpec(help=help, **spec)})


def nested(cls: type, prefix: str) -> Any:
    """A nested config field whose options all get ``prefix`` (``reward_``: ``--pickscore-model`` becomes
    ``--reward-pickscore-model``, explicit flags included). For an option group declared once that a
    command needs beside options of the same names (label's ``--clip-model`` for ``--verify`` and the
    reward judges' ``--reward-clip-model``)."""
    return dataclasses.field(default_factory=cls, metadata={_PREFIX: prefix})


def _prefixed_flags(flags: tuple[str, ...], prefix: str) -> tuple[str, ...]:
    """``("--tiny-scorers",)`` -> ``("--reward-tiny-scorers",)``; both halves of ``--a/--no-a`` are prefixed."""
    dashed = prefix.replace("_", "-")
    return tuple("/".join("--" + dashed + part[2:] if part.startswith("--") else part for part in flag.split("/"))
                 for flag in flags)


# -- checks ---------------------------------------------------------------------------------------
def positive(value) -> str | None:
    return None if value > 0 else "must be > 0"


def at_least(minimum) -> Check:
    def check(value):
        return None if value >= minimum else f"must be at least {minimum}"
    return check


def between(low, high) -> Check:
    def check(value):
        return None if low <= value <= high else f"must be between {low} and {high}"
    return check


def multiple_of_8(value) -> str | None:
    """Image sides: latent space is 8x smaller (every VAE here downsamples by 8)."""
    return None if value >= 8 and value % 8 == 0 else "must be a positive multiple of 8"


def not_blank(value) -> str | None:
    return None if str(value).strip() else "must not be empty"


# -- the declared options of a config class -------------------------------------------------------
@dataclass(frozen=True)
class Declared:
    """One option: its name, where it lives in the (possibly nested) config, and how it parses."""

    name: str  # option name with underscores (``num_inference_steps``)
    path: tuple[str, ...]  # attribute path from the top config (("recipe", "style"))
    spec: OptionSpec
    base: type  # str, int, float or bool (a list's element type for lists)
    optional: bool
    is_list: bool
    default: Any  # MISSING when required

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _unwrap(hint) -> tuple[type, bool, bool]:
    """A field's type hint -> (base type, optional, is_list)."""
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0]
    if typing.get_origin(hint) in (list, tuple):
        return typing.get_args(hint)[0], optional, True
    return hint, optional, False


def declared_options(cls: type, _path: tuple[str, ...] = (), _prefix: str = "") -> list[Declared]:
    """The options of a config class, nested dataclasses flattened, in declaration order.

    A nested field made with :func:`nested` prefixes the names (and explicit flags) of its options.

    Raises:
        TypeError: two fields would give the same option name (a programming error).
    """
    hints = typing.get_type_hints(cls)
    out: list[Declared] = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            out.extend(declared_options(hint, _path + (f.name,), _prefix + f.metadata.get(_PREFIX, "")))
            continue
        spec = f.metadata.get(_META)
        if spec is None:
            continue
        if _prefix and spec.flags:
            spec = dataclasses.replace(spec, flags=_prefixed_flags(spec.flags, _prefix))
        base, optional, is_list = _unwrap(hint)
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = MISSING
        out.append(Declared(_prefix + (spec.name or f.name), _path + (f.name,), spec, base, optional, is_list, default))
    if not _path:
        names = [d.name for d in out]
        clashes = sorted({n for n in names if names.count(n) > 1})
        if clashes:
            raise TypeError(f"{cls.__name__}: options declared twice: {', '.join(clashes)}")
    return out


# -- values: parse, coerce, check, build ----------------------------------------------------------
def _coerce_one(d: Declared, value):
    if d.base is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "yes", "1", "on"):
            return True
        if text in ("false", "no", "0", "off"):
            return False
        raise UserError(f"{d.flag} must be true or false, got {value!r}.")
    if d.base in (int, float):
        if isinstance(value, bool) or (d.base is int and isinstance(value, float) and not value.is_integer()):
            raise UserError(f"{d.flag} must be {'an integer' if d.base is int else 'a number'}, got {value!r}.")
        try:
            return d.base(value) if d.base is float or not isinstance(value, str) else int(value.strip())
        except (TypeError, ValueError):
            raise UserError(
                f"{d.flag} must be {'an integer' if d.base is int else 'a number'}, got {value!r}."
            ) from None
    if isinstance(value, (dict, list)):
        raise UserError(f"{d.flag} must be text, got {value!r}.")
    return str(value)


def coerce(d: Declared, value):
    """A value from the command line or YAML -> the field's type (comma-separated text -> list).

    Raises:
        UserError: the value cannot be read as the option's type.
    """
    if value is None:
        if d.is_list:
            return []
        if d.optional or d.default is None:
            return None
        raise UserError(f"{d.flag} needs a value (got null/None).")
    if d.is_list:
        if isinstance(value, str) and d.spec.separator:
            value = [part.strip() for part in value.split(d.spec.separator) if part.strip()]
        elif not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce_one(d, v) for v in value]
    return _coerce_one(d, value)


def check_options(cfg) -> None:
    """Apply every declared choice and check to ``cfg``'s values (nested configs included); every config's
    ``validate()`` starts with it.

    Raises:
        UserError: ``--name 'value'`` is not one of the choices, or breaks the option's check.
    """
    for d in declared_options(type(cfg)):
        value = cfg
        for attr in d.path:
            value = getattr(value, attr)
        if value is None:
            if d.spec.required:
                raise UserError(f"{d.flag} is required (on the command line or in --config): {d.spec.help}")
            continue
        for item in (value if d.is_list else [value]):
            if d.spec.choices is not None and item not in d.spec.choices:
                raise UserError(f"Unknown {d.flag} '{item}'; choose one of {', '.join(map(str, d.spec.choices))}.")
            problem = d.spec.check(item) if d.spec.check else None
            if problem:
                raise UserError(f"{d.flag} {problem}, got {item!r}.")


def build_config(cls: type, values: dict[str, Any]):
    """``cls`` from ``{option name: value}`` (missing ones take their defaults), coerced and checked.

    Calls the config's own ``validate()`` after the declared checks when it has one (cross-option rules).

    Raises:
        UserError: an unknown name, a value of the wrong type, a missing required option, a failed check.
    """
    declared = {d.name: d for d in declared_options(cls)}
    unknown = sorted(set(values) - set(declared))
    if unknown:
        raise UserError(f"unknown options: {', '.join(unknown)}")
    for d in declared.values():
        if (d.default is MISSING or d.spec.required) and d.name not in values:
            raise UserError(f"{d.flag} is required (on the command line or in --config): {d.spec.help}")
    coerced = {k: coerce(declared[k], v) for k, v in values.items()}
    return _build(cls, (), {declared[k].path: v for k, v in coerced.items()}, coerced)


_GIVEN = "_options_given"  # on a built config: the options the user gave (command line and --config)


def _build(cls: type, path: tuple[str, ...], by_path: dict, given: dict | None = None):
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        here = path + (f.name,)
        if dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = _build(hints[f.name], here, by_path)
        elif here in by_path:
            kwargs[f.name] = by_path[here]
    cfg = cls(**kwargs)
    if not path:
        object.__setattr__(cfg, _GIVEN, dict(given or {}))  # before validate() resolves anything
        if hasattr(cfg, "validate"):  # every validate() starts with check_options
            cfg = cfg.validate() or cfg
        else:
            check_options(cfg)
    return cfg


# What every output records its options in (mapo-data manifests, mapo-eval's state, mapo-train's config).
RECORDS = ("manifest.json", "eval_config.json", "training_config.json")


def read_config_file(path: str | Path, cls: type) -> dict[str, Any]:
    """A ``--config`` source -> ``{option name: value}``; keys may use dashes or underscores.

    ``path`` is a YAML file, or an output folder / its record (``manifest.json``, ``eval_config.json``,
    ``training_config.json``): the options that output was made with, so a run can be repeated from
    its folder (``--overwrite`` is never taken from a record).

    Raises:
        UserError: the file is missing, not YAML, not a mapping, or has keys no option of ``cls`` has.
    """
    import yaml

    from pipeline.data.textfiles import read_text

    path = Path(path).expanduser()
    if path.is_dir():
        found = [path / name for name in RECORDS if (path / name).is_file()]
        if not found:
            raise UserError(f"--config {path} is a folder without a record of its options ({', '.join(RECORDS)}).")
        path = found[0]
    if not path.is_file():
        raise UserError(f"--config file {path} does not exist.")
    try:
        raw = yaml.safe_load(read_text(path, "--config file")) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"--config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UserError(f"--config file {path} must hold a mapping of option: value.")
    known = {d.name for d in declared_options(cls)}
    if path.name in RECORDS:
        raw = _recorded_options(raw, path, cls, known)
    values = {str(k).strip().lstrip("-").replace("-", "_"): v for k, v in raw.items()}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"--config file {path} has unknown keys: {', '.join(_suggest(k, known) for k in unknown)}.")
    return values


def _suggest(key: str, known: set[str]) -> str:
    """``key`` with the closest option names, as click suggests them for a misspelled ``--option``
    (``difflib.get_close_matches``, its default cutoff 0.6; click.parser's ``_unknown_option``)."""
    import difflib

    close = difflib.get_close_matches(key, sorted(known), n=3)
    return f"{key} (did you mean {' or '.join(close)}?)" if close else key


def options_record(cfg) -> dict:
    """What an output records about how it was made, for ``--config <output>`` to repeat it:
    ``{"options": the options the user gave (command line and --config; for a config built in Python,
    every option), "options_of": the config class}``. Given, not resolved: a default the stage filled
    in (a style text, beta, the latents' model) is filled in again for the new inputs."""
    given = getattr(cfg, _GIVEN, None)
    return {"options": dict(given) if given is not None else option_values(cfg), "options_of": type(cfg).__name__}


def _recorded_options(record: dict, path: Path, cls: type, known: set[str]) -> dict:
    """The options an output recorded (:func:`options_record`), refused when another command made it."""
    holder = record["config"] if isinstance(record.get("config"), dict) and "options" in record["config"] else record
    options, of = holder.get("options"), holder.get("options_of")
    if of is not None and of != cls.__name__:
        raise UserError(f"--config {path} records the options of {of}, not of this command ({cls.__name__}).")
    if options is None and path.name == "training_config.json" and cls.__name__ == "TrainConfig":
        options = {k: v for k, v in record.items() if k in known}  # a run made before options were recorded
    if not isinstance(options, dict):
        raise UserError(f"--config {path} records no options (an output made before options were recorded); "
                        "pass the options on the command line.")
    return {k: v for k, v in options.items() if k != "overwrite"}


def option_values(cfg) -> dict[str, Any]:
    """``{option name: value}`` of a finished config: what ``--config`` needs to repeat it."""
    out = {}
    for d in declared_options(type(cfg)):
        value = cfg
        for attr in d.path:
            value = getattr(value, attr)
        out[d.name] = list(value) if isinstance(value, tuple) else value
    return out


# -- typer commands -------------------------------------------------------------------------------
def _cli_parameter(d: Declared) -> inspect.Parameter:
    import typer

    default = None if d.default is MISSING else d.default
    if d.is_list and d.spec.separator:
        annotation: Any = Optional[str]
        default = d.spec.separator.join(map(str, default)) if default else None
    elif d.is_list:
        annotation = Optional[list[d.base]]
        default = list(default) if default else None
    else:
        annotation = Optional[d.base] if (d.optional or default is None) else d.base
    help_text = d.spec.help + (" (required)" if d.spec.required or d.default is MISSING else "")
    if d.spec.choices is not None and not all(str(c) in help_text for c in d.spec.choices):
        help_text += f" One of: {', '.join(map(str, d.spec.choices))}."
    flags = d.spec.flags
    if not flags and d.base is bool and default is False:
        flags = (d.flag,)  # an off-by-default switch: --x alone (as argparse's store_true), no --no-x
    if d.spec.argument:
        info = typer.Argument(default, help=help_text, show_default=default is not None)
    else:
        info = typer.Option(default, *flags, help=help_text, rich_help_panel=d.spec.panel, hidden=d.spec.hidden,
                            show_default=default is not None and default != "" and not d.spec.required)
    return inspect.Parameter(d.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)


def _underscore_aliases_command():
    """A typer command class that also accepts ``--num_inference_steps`` for ``--num-inference-steps``
    (the diffusers training scripts' spellings), without listing the aliases in ``--help``, and says a
    parse error (unknown option, a value of the wrong type) in one ``error:`` line, as every other error."""
    from typer.core import TyperCommand

    from pipeline.cli.support import usage_errors_in_one_line

    class UnderscoreAliases(TyperCommand):
        def parse_args(self, ctx, args):
            return usage_errors_in_one_line(lambda: self._parse_args(ctx, args), ctx)

        def _parse_args(self, ctx, args):
            known = {o for p in self.params for o in (*p.opts, *p.secondary_opts)}
            fixed = []
            for i, arg in enumerate(args):
                if arg == "--":
                    fixed.extend(args[i:])
                    break
                name, sep, rest = arg.partition("=")
                if name.startswith("--") and "_" in name and name not in known:
                    dashed = "--" + name[2:].replace("_", "-")
                    if dashed in known:
                        arg = dashed + sep + rest
                fixed.append(arg)
            return super().parse_args(ctx, fixed)

    return UnderscoreAliases


CONFIG_HELP = ("YAML file of options (keys: the option names, dashes or underscores), or an output folder to repeat "
               "the options it was made with; options given here win.")


def command(app, cls: type, *, name: str | None = None) -> Callable:
    """Register ``fn(cfg: cls)`` as a typer command whose options are ``cls``'s declarations.

    Precedence: the declared defaults < the ``--config`` YAML file < options typed on the command line.
    The config is built and checked (:func:`build_config`) before ``fn`` runs, so a bad value costs no
    model loading and writes nothing. ``UserError`` becomes one ``error:`` line and exit status 2.
    """
    import typer

    from pipeline.cli.support import user_errors_exit

    declared = declared_options(cls)

    def decorate(fn: Callable) -> Callable:
        def run(ctx: typer.Context, **kwargs):
            config_file = kwargs.pop("config", None)
            values = read_config_file(config_file, cls) if config_file else {}
            for d in declared:
                source = ctx.get_parameter_source(d.name)
                # By name: typer may ship its own copy of click's ParameterSource enum.
                if getattr(source, "name", None) in ("COMMANDLINE", "ENVIRONMENT"):
                    values[d.name] = kwargs[d.name]
            return fn(build_config(cls, values))

        params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
        params += [_cli_parameter(d) for d in declared]
        params.append(inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
                                        default=typer.Option(
                                            None, "--config", help=CONFIG_HELP, rich_help_panel="Config"
                                        )))
        functools.update_wrapper(run, fn, assigned=("__module__", "__name__", "__qualname__", "__doc__"), updated=())
        run.__signature__ = inspect.Signature(params)  # typer reads these, not fn's (cfg: cls)
        run.__annotations__ = {p.name: p.annotation for p in params}
        app.command(name=name, cls=_underscore_aliases_command())(user_errors_exit(run))
        return fn

    return decorate


def iter_commands(app) -> Iterator[tuple[str, Any]]:
    """(name, click command) for every command of a typer app (for tests and docs)."""
    import typer.main

    group = typer.main.get_command(app)
    if hasattr(group, "commands"):
        yield from group.commands.items()
    else:
        yield group.name, group


# -- option groups shared by several commands (declared once, used by generate, label, precompute,
# eval and the trainer's validation) ------------------------------------------------------------
PANEL_IO, PANEL_MODEL, PANEL_SAMPLING, PANEL_RUN = "Input and output", "Model", "Sampling", "Run"


def builtin_models_help() -> str:
    """The built-ins ``--model`` loads as a whole pipeline, from the registry (plugins' included), comma-separated:
    a --help that names them cannot fall behind a new built-in."""
    from pipeline.models.builtin import builtin_names

    return ", ".join(builtin_names(whole_pipeline=True))


def model_option(default: str | None, help: str | None = None) -> Any:
    help = help or f"Hub id, local diffusers folder, or built-in: {builtin_models_help()}."
    return option(default, help=help, panel=PANEL_MODEL)


def vae_option() -> Any:
    return option(None, help="Override VAE (hub id or folder), e.g. madebyollin/sdxl-vae-fp16-fix.", panel=PANEL_MODEL)


def dtype_option(help: str = "auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16.") -> Any:
    return option("auto", help=help, choices=DTYPES, panel=PANEL_MODEL)


def device_option() -> Any:
    return option("auto", help="auto, cpu, cuda, cuda:N.", panel=PANEL_RUN)


def overwrite_option() -> Any:
    return option(False, help="Replace an output folder made with another configuration.", panel=PANEL_IO)


def num_inference_steps_option(default: int, panel: str = PANEL_SAMPLING, prefix: str = "") -> Any:
    """``prefix`` (e.g. "spo: ") and ``panel``: for a command where sampling serves one mode only."""
    return option(default, help=f"{prefix}Denoising steps per image.", check=at_least(1), panel=panel)


def guidance_scale_option(default: float, panel: str = PANEL_SAMPLING, prefix: str = "") -> Any:
    return option(default, help=f"{prefix}Classifier-free guidance scale.", panel=panel)


RESOLUTION_HELP = ("Image side in pixels (multiple of 8; 16 for SD3 and Flux); default: the model's own, as diffusers "
                   "defaults it (1024 for SDXL, 512 for SD1.5, 64 for the built-in models).")


def resolution_option(default: int | None = None, help: str = RESOLUTION_HELP, panel: str = PANEL_SAMPLING) -> Any:
    return option(default, help=help, check=multiple_of_8, panel=panel)


def seed_option(help: str) -> Any:
    return option(0, help=help, panel=PANEL_SAMPLING)


def batch_invariant_option() -> Any:
    return option(True, help="Bit-identical images whatever --batch-size (runs the UNet per sample); "
                             "--no-batch-invariant batches for speed.", panel=PANEL_SAMPLING)


def prompt_column_option(panel: str = PANEL_IO, prefix: str = "") -> Any:
    return option(None, help=f"{prefix}Column holding prompts (default: caption, else prompt).", panel=panel)


def split_option() -> Any:
    return option("train", panel=PANEL_IO, help=(
        "Split to read when the input folder holds several (hub naming: train, validation_unique, test); "
        "a folder of one split is read whole."))


def prompt_split_option(panel: str = PANEL_IO, prefix: str = "") -> Any:
    return option("train", help=f"{prefix}Split, when --prompts is a datasets name.", panel=panel)
