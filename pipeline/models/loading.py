"""Model loading: a hub id, a local diffusers folder, or a built-in name -> components.

Every path goes through ``from_pretrained`` (the built-in tiny models are materialised on
disk first), so tests exercise the code path that real SDXL takes. Lookup failures become
one ``ModelNotFoundError`` line that says what was looked for and how to provide it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: torch is imported lazily to keep CLI start-up fast
    import torch

import hashlib
import json
import os
from pathlib import Path

from pipeline.errors import ModelNotFoundError, UserError
from pipeline.models.builtin import builtin_names, get_builtin
from pipeline.models.tokenizer import check_tokenizer
from pipeline.models.weights_files import reading_weights

DEFAULT_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
DTYPES = ("auto", "fp32", "fp16", "bf16")


def resolve_device(device: str = "auto"):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"Device '{device}' was requested but CUDA is not available; use --device cpu.")
    return dev


def resolve_dtype(dtype: str, device) -> "torch.dtype":
    """auto = fp16 on CUDA, fp32 elsewhere. fp16 on the CPU is refused (slow and lossy there)."""
    import torch

    if dtype not in DTYPES:
        raise UserError(f"Unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}.")
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype == "fp16" and device.type == "cpu":
        raise UserError("fp16 is not supported on the CPU; use --dtype fp32 or bf16.")
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


def dtype_name(dtype) -> str:
    import torch

    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


def _close_builtin(name: str) -> str | None:
    """The built-in model ``name`` is most likely a typo of (difflib, as click suggests options), or None."""
    import difflib

    close = difflib.get_close_matches(name, builtin_names(), n=1, cutoff=0.8)
    return close[0] if close else None


def _not_found(what: str, name: str, detail: str = "") -> ModelNotFoundError:
    """One line: a near miss of a built-in names the built-in (and never suggests downloading the typo);
    any other name says where it was looked for and how to get it."""
    builtins = ", ".join(builtin_names())
    close = _close_builtin(name)
    if close:
        msg = f"{what} '{name}' was not found (did you mean '{close}'?); the built-ins are {builtins}."
    else:
        msg = (
            f"{what} '{name}' was not found: it is not a built-in ({builtins}), not a local folder, and not in the "
            f"local Hugging Face cache. Download it first (e.g. `hf download {name}`) or pass the path of a local "
            "diffusers folder."
        )
    if detail:
        msg += f" ({detail})"
    return ModelNotFoundError(msg)


def resolve_model_source(model: str) -> str:
    """Return what ``from_pretrained`` should load for ``model`` (a path or a hub id).

    Raises:
        UserError: a built-in with no folder (``sdxl-arch``: built in memory), or a path that is no pipeline
            folder. ModelNotFoundError: a path that does not exist, or a near miss of a built-in name.
    """
    builtin = get_builtin(model)
    if builtin is not None:
        if not builtin.has_folder:
            raise UserError(f"'{model}' has no folder to load: its random weights are built in memory")
        return str(builtin.folder())
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "model_index.json").exists():
            raise UserError(f"'{model}' exists but is not a diffusers pipeline folder (no model_index.json).")
        return str(path)
    if model.startswith((".", "/", "~")) or os.sep in model.strip("/").replace("/", "", 1):
        raise _not_found("Model", model)
    if "/" not in model and _close_builtin(model):
        # A near miss of a built-in name, not a hub id (those are owner/name): say so now, not after the hub's
        # lookups and retries (half a minute without a network).
        raise _not_found("Model", model)
    return model


def _loaded_folder(args: tuple, kwargs: dict):
    """The folder (or hub id) a ``from_pretrained`` / ``load_config`` call reads: its first argument,
    narrowed to ``subfolder`` when that is a local folder."""
    source = args[0] if args else None
    sub = kwargs.get("subfolder")
    if source is not None and sub and (Path(str(source)) / sub).is_dir():
        return str(Path(str(source)) / sub)
    return source


def _call_loader(what: str, name: str, loader, *args, **kwargs):
    """Run a ``from_pretrained`` call, turning lookup failures into one clear line.

    Raises :class:`ModelNotFoundError` when nothing is found, :class:`~pipeline.models.weights_files.WeightsFileError`
    naming the file when a file is there but unreadable (truncated, HTML, not JSON ...).
    """
    import warnings

    from diffusers.utils import logging as dlog

    verbosity = dlog.get_verbosity()
    # Offline, diffusers logs "Couldn't connect to the Hub" before failing; the user gets our
    # one line instead (it says what was looked for and how to provide it).
    dlog.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            # diffusers renamed torch_dtype to dtype; torch_dtype still works on every supported version.
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            # diffusers' load_config passes an argument huggingface_hub no longer uses: noise before our line.
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*", category=UserWarning)
            # Inside the lookup-failure handler: a corrupt file also surfaces as OSError or ValueError.
            with reading_weights(_loaded_folder(args, kwargs), f"{what} '{name}'"):
                return loader(*args, **kwargs)
    except (OSError, ValueError) as exc:  # OSError: uncached hub id; ValueError: bad path / repo id
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _not_found(what, name, first[:200]) from None
    finally:
        dlog.set_verbosity(verbosity)


def model_family(components: dict) -> str:
    """The family name ("sd15", "sdxl", "sd3") of a pipeline's components (:mod:`pipeline.families`)."""
    from types import SimpleNamespace

    from pipeline.families import family_of_pipe

    return family_of_pipe(SimpleNamespace(**components)).name


def _vae_source(vae: str) -> tuple[str, dict]:
    path = Path(vae).expanduser()
    source = str(path) if path.exists() else vae
    return source, ({"subfolder": "vae"} if path.is_dir() and (path / "vae").is_dir() else {})


def load_vae(vae: str, dtype, device):
    from diffusers import AutoencoderKL

    source, sub = _vae_source(vae)
    return _call_loader("VAE", vae, AutoencoderKL.from_pretrained, source, torch_dtype=dtype, **sub).to(device)


def _model_index(model: str) -> tuple[str, dict]:
    """(what from_pretrained loads, the pipeline's model_index.json) or one clear error line."""
    from diffusers import DiffusionPipeline

    source = resolve_model_source(model)
    return source, _call_loader("Model", model, DiffusionPipeline.load_config, source)


def components_saved_as_none(model: str) -> tuple[str, ...]:
    """The pipeline components ``model``'s folder was saved without (``[null, null]`` in its model_index.json, e.g.
    ``shapes-sd3``'s T5): a plain ``from_pretrained`` must be given them as None (:func:`load_pipeline` does so).
    () for a built-in made in memory.

    Raises:
        ModelNotFoundError: the model cannot be found.
    """
    builtin = get_builtin(model)
    if builtin is not None and not builtin.has_folder:
        return ()
    return tuple(k for k, v in _model_index(model)[1].items() if v == [None, None])


# The UNet settings a trained UNet or LoRA must share with the pipeline it is put into (each family's fit_keys).
UNET_FIT_KEYS = ("in_channels", "cross_attention_dim", "addition_embed_type", "addition_time_embed_dim",
                 "projection_class_embeddings_input_dim")


def model_family_of(model: str):
    """The :class:`pipeline.families.ModelFamily` of ``model``, read from its model_index.json (no weights).

    Raises:
        ModelNotFoundError: the model cannot be found. UserError: a pipeline class mapo-tools does not support.
    """
    from pipeline.families import family_from_index, get_family

    builtin = get_builtin(model)
    if builtin is not None and not builtin.has_folder:
        return get_family(builtin.family)
    return family_from_index(_model_index(model)[1], f"'{model}'")


def check_resolution(model: str, resolution: int | None, flag: str = "--resolution") -> None:
    """Refuse, in one line, an image side the model's family cannot take (SD3: multiples of 16, its VAE's /8
    times the transformer's 2x2 patches; SD1.5/SDXL: multiples of 8).

    Raises:
        UserError: ``resolution`` is not a multiple of the family's ``size_multiple``.
    """
    if resolution is None:
        return
    from pipeline.families import a_family

    fam = model_family_of(model)
    if resolution % fam.size_multiple:
        raise UserError(f"{flag} {resolution}: '{model}' is {a_family(fam.name)} model, whose image sides must be "
                        f"multiples of {fam.size_multiple}")


def t5_length_to_record(model: str, max_sequence_length: int | None) -> int | None:
    """``max_sequence_length`` (T5 tokens per prompt) as an output's identity records it: None when not given or
    when it is ``model``'s family default (``ModelFamily.max_sequence_length``, SD3's 256, the pipeline's own), since
    the images and latents are the same either way and a run that leaves the flag out must match; else the count.

    Raises:
        ModelNotFoundError: ``model`` cannot be found (only looked up when a count is given).
    """
    if max_sequence_length is None or max_sequence_length == model_family_of(model).max_sequence_length:
        return None
    return max_sequence_length


def check_t5_options(model: str, given: list[str]) -> None:
    """Refuse the T5 options in ``given`` (``--max-sequence-length``, ``--no-t5``) that ``model``'s family cannot
    honour: ``--max-sequence-length`` (mapo-eval: ``--base-max-sequence-length``) without a T5 encoder (SD1.5,
    SDXL; ``ModelFamily.max_sequence_length`` None), ``--no-t5`` where T5 cannot be left out
    (``ModelFamily.optional_t5`` None). Either would be recorded in an output's identity while changing nothing,
    so it is refused.

    Raises:
        UserError: a flag in ``given`` the family of ``model`` does not take.
    """
    if not given:
        return
    from pipeline.families import FAMILIES

    fam = model_family_of(model)
    takes = {"--max-sequence-length": lambda f: f.max_sequence_length is not None,
             "--no-t5": lambda f: f.optional_t5 is not None}
    takes["--base-max-sequence-length"] = takes["--max-sequence-length"]  # mapo-eval's, for its base model
    refused = [flag for flag in given if not takes[flag](fam)]
    if refused:
        flags = " and ".join(refused)
        verb = "applies" if len(refused) == 1 else "apply"
        able = ", ".join(f.name for f in FAMILIES if all(takes[flag](f) for flag in refused))
        why = "which has none" if fam.max_sequence_length is None else "whose T5 cannot be left out"
        raise UserError(f"{flags} {verb} only to models with a T5 text encoder ({able}); '{model}' is {fam.name}, "
                        f"{why}: leave {flags} out.")


def check_negative_prompt(model: str, given: list[str]) -> None:
    """Refuse negative-prompt options (``given``: the flags set, e.g. ``--negative-prompt``) for a model whose
    family takes no negative prompt (``ModelFamily.cfg_negative_prompt`` False: Flux.1-dev, guidance-distilled,
    whose ``guidance_scale`` is the transformer's guidance input): it would be recorded while changing nothing.

    Raises:
        UserError: a flag in ``given`` and a family without negative prompts.
    """
    if not given:
        return
    fam = model_family_of(model)
    if not fam.cfg_negative_prompt:
        flags = " and ".join(given)
        raise UserError(f"{flags}: '{model}' is a {fam.name} model, guidance-distilled (guidance_scale is an input of "
                        f"its transformer, no classifier-free guidance pass), which takes no negative prompt: "
                        f"leave {flags} out.")


def unet_config(model: str) -> dict | None:
    """The denoiser config (``unet/config.json``, or ``transformer/config.json`` for a transformer family)
    of ``model``, read without loading weights; None for the in-memory architecture models (``sdxl-arch``).

    Raises:
        ModelNotFoundError: the model cannot be found.
    """
    builtin = get_builtin(model)
    if builtin is not None and not builtin.has_folder:
        return None
    fam = model_family_of(model)
    return dict(_call_loader("Model", model, fam.denoiser_cls().load_config, resolve_model_source(model),
                             subfolder=fam.denoiser_dir))


def default_resolution(model: str) -> int:
    """The image side a model was made for, as the diffusers pipelines default it: the denoiser's
    ``sample_size`` (its family's :meth:`~pipeline.families.base.ModelFamily.default_sample_size`) times the
    VAE's scale factor ``2 ** (len(block_out_channels) - 1)`` (1024 for SDXL,
    512 for SD1.5, 64 for the built-in tiny and world models).

    Raises:
        ModelNotFoundError: the model cannot be found.
    """
    from diffusers import AutoencoderKL

    builtin = get_builtin(model)
    if builtin is not None and builtin.resolution is not None:
        return builtin.resolution  # an in-memory architecture: SDXL base 1.0's, SD3.5's
    unet = unet_config(model)
    vae = _call_loader("VAE", model, AutoencoderKL.load_config, resolve_model_source(model), subfolder="vae")
    return model_family_of(model).default_sample_size(unet) * 2 ** (len(vae["block_out_channels"]) - 1)


def check_model_available(model: str, vae: str | None = None, *, whole_pipeline: bool = False) -> str:
    """Fail in one line now if the model (or VAE) cannot be loaded later: stages call this before
    they create their output folder, so a typo in --model leaves nothing behind. ``whole_pipeline``: the caller
    will :func:`load_pipeline` it (generate, precompute, eval), so a built-in that is a denoiser alone
    (``sd35-medium-arch``) is refused now too, not after the output folder exists.

    Returns:
        The pipeline's family name, "sd15", "sdxl" or "sd3" (as :func:`model_family`), read from its
        model_index.json.

    Raises:
        ModelNotFoundError: the model or VAE cannot be found. UserError: ``whole_pipeline`` and the model is a
            denoiser alone.
    """
    from diffusers import AutoencoderKL

    family = model_family_of(model).name
    if whole_pipeline:
        _check_whole_pipeline(model)
    if vae is not None:
        source, sub = _vae_source(vae)
        _call_loader("VAE", vae, AutoencoderKL.load_config, source, **sub)
    return family


def _check_whole_pipeline(model: str) -> None:
    """Refuse a built-in that is a denoiser alone (``BuiltinModel.whole_pipeline`` False) where a whole pipeline is
    needed.

    Raises:
        UserError: ``model`` is such a built-in.
    """
    from pipeline.families import get_family

    builtin = get_builtin(model)
    if builtin is not None and not builtin.has_folder and not builtin.whole_pipeline:
        raise UserError(f"'{model}' is a {get_family(builtin.family).denoiser_dir} alone (random weights, no text "
                        "encoders or VAE): it serves python -m bench train (with its own random latents) and "
                        "--estimate, not this command")


TOKENIZERS = ("tokenizer", "tokenizer_2", "tokenizer_3")
# Tokenizers already read in this process, by (folder, its files' names, sizes and mtimes): see _tokenizer_key.
_TOKENIZERS: dict[tuple, object] = {}


def _tokenizer_key(source: str, name: str) -> tuple | None:
    """What identifies the tokenizer ``name`` of the local pipeline folder ``source``: its resolved folder and
    every file in it with size and mtime (a file rewritten in place gives another key); None for a hub id or a
    folder without that tokenizer (never reused)."""
    folder = Path(source) / name
    try:
        if not folder.is_dir():
            return None
        files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file())
    except OSError:  # unreadable, or a file gone between listing and stat: load it as usual, never reuse
        return None
    return (str(folder.resolve()), tuple(files))


def load_pipeline(model: str, *, vae: str | None = None, dtype="auto", device="auto", skip: tuple[str, ...] = ()):
    """Load a text-to-image pipeline on ``device`` in ``dtype``.

    ``skip`` names components not to load (e.g. ``("unet",)`` for text/VAE-only work), which
    saves memory and time on real SDXL. Returns the diffusers pipeline.

    The tokenizers of a local folder are read once per process: a later load of the same unchanged folder
    reuses them (the same objects; a pipeline only calls them, and each call sets its own padding and
    truncation), which spares a CLIP vocabulary's JSON parse (~0.3 s each) per load. Everything else is
    loaded anew each time.
    """
    from diffusers import DiffusionPipeline

    from pipeline.families import get_family

    quiet_hub_progress()
    dev = resolve_device(device) if isinstance(device, str) else device
    dt = resolve_dtype(dtype, dev) if isinstance(dtype, str) else dtype
    overrides: dict = {name: None for name in skip}
    if vae is not None:
        overrides["vae"] = load_vae(vae, dt, dev)
    builtin = get_builtin(model)
    if builtin is not None and not builtin.has_folder:
        fam = get_family(builtin.family)
        _check_whole_pipeline(model)
        comps = builtin.components(dt, dev, skip=tuple(overrides))
        comps.update(overrides)
        pipe = fam.pipeline_cls()(**comps)
    else:
        source, index = _model_index(model)
        overrides.update({k: None for k, v in index.items() if v == [None, None] and k not in overrides})  # saved None
        if index.get("safety_checker", [None])[0] is not None:
            # SD1.5-style folders ship a safety checker that silently blacks out flagged images:
            # the safety recipe would lose its unsafe images, and labeling is our classifiers' job.
            overrides.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        keys = {name: _tokenizer_key(source, name) for name in TOKENIZERS if name in index and name not in overrides}
        # and the class model_index.json names for it (a folder whose index now names another tokenizer class)
        keys = {name: key and (*key, str(index[name])) for name, key in keys.items()}
        overrides.update({name: _TOKENIZERS[key] for name, key in keys.items() if key in _TOKENIZERS})
        pipe = _call_loader("Model", model, DiffusionPipeline.from_pretrained, source, torch_dtype=dt, **overrides)
        for name, key in keys.items():
            if key is not None and getattr(pipe, name, None) is not None:
                _TOKENIZERS.setdefault(key, getattr(pipe, name))
    for name in TOKENIZERS:
        tok = getattr(pipe, name, None)
        if tok is not None:
            check_tokenizer(tok, f"'{model}' ({name})")
    pipe = pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def compile_unet(unet) -> None:
    """Regional compilation (``--compile`` of mapo-train and mapo-data generate): ``torch.compile`` each
    transformer block in place.

    diffusers' ``ModelMixin.compile_repeated_blocks`` compiles every module named in the class's
    ``_repeated_blocks`` (``BasicTransformerBlock`` for ``UNet2DConditionModel``) with
    ``nn.Module.compile``: the module's own forward is replaced, its parameters, state-dict keys and
    LoRA adapters stay where they are, so checkpoints, ``save_pretrained`` and accelerate's DDP wrapper
    see the same model; a pipeline keeps its UNet object. Only the blocks are compiled (PyTorch's regional
    compilation recipe; diffusers reports the same run-time gain as a whole-model compile): the compile time
    is one block's, not the whole UNet's, and the ResNet / up / down parts stay eager. Works on the CPU too
    (inductor's C++ backend needs a C++ compiler).
    A model without transformer blocks raises :class:`pipeline.errors.UserError`.
    """
    try:
        unet.compile_repeated_blocks()
    except ValueError as exc:  # diffusers: no `_repeated_blocks`, or none of them in this model
        raise UserError(f"--compile: {str(exc).splitlines()[0]}") from None


def quiet_hub_progress() -> None:
    """Hide diffusers/transformers per-file loading bars; our own bars report the work."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()


def weights_fingerprint(*modules) -> str:
    """A cheap, stable fingerprint of module weights (config + shapes + value samples).

    Hashing every byte of SDXL (~7 GB) would take minutes; sampling each tensor's first
    values and its sum in fp64 tells apart any two models that differ in practice.
    """
    import torch

    h = hashlib.sha256()
    for module in modules:
        if module is None:
            continue
        config = getattr(module, "config", None)
        if config is not None:
            as_dict = dict(config) if not hasattr(config, "to_dict") else config.to_dict()
            as_dict = {k: v for k, v in as_dict.items() if not k.startswith("_") and k not in ("transformers_version",)}
            h.update(json.dumps(as_dict, sort_keys=True, default=str).encode())
        for name, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().flatten()
            h.update(f"{name}:{tuple(tensor.shape)}".encode())
            with torch.no_grad():
                sample = t[:16].double().cpu().tolist() + [t.double().sum().item()]
            h.update(json.dumps([round(v, 4) for v in sample]).encode())
    return h.hexdigest()[:16]
