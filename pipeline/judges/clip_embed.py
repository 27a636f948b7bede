"""CLIP embeddings through open_clip: the one embedding path for labeling and evaluation.

``mapo-data label --verify clip`` (style verification) and ``mapo-eval`` (CLIP score, style
adoption) both go through :class:`ClipEmbedder`, so a label and the metric that later checks it
are computed the same way.

Loading never touches the network on its own: a pretrained tag is resolved to a file in the
local Hugging Face cache first, and only when the hub is allowed (``HF_HUB_OFFLINE`` unset) is a
download attempted. Every failure to find weights becomes one :class:`ModelNotFoundError` line.
"""
from __future__ import annotations

import difflib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from pipeline.data.atomic import atomic_write
from pipeline.errors import ModelNotFoundError, UserError, one_line
from pipeline.models.loading import resolve_device
from pipeline.models.weights_files import reading_weights

# A tiny open_clip architecture (about 1.7M parameters, most of them the 49,408-token embedding)
# so tests and the demo can build random weights offline and load them back through the same
# local-weights-file path real checkpoints take. head_width is needed: open_clip derives the
# vision heads as width // head_width (default 64, which would give 0 heads at width 32).
TINY_CLIP_NAME = "tiny-clip"
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}

_LIST_HINT = "python -c 'import open_clip; print(open_clip.list_models())'"
_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors", ".npz", ".ckpt")


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (env var or huggingface_hub's flag)."""
    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    if flag.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        return False


def register_tiny_clip_config(name: str = TINY_CLIP_NAME, config: dict | None = None) -> str:
    """Add a tiny model config to open_clip's registry under ``name`` and return the name.

    open_clip only registers configs from JSON files (``add_model_config``), so the dict is
    written to a temporary file, registered, and the file removed; the registry keeps the
    parsed config. Idempotent.
    """
    import open_clip

    if name in open_clip.list_models():
        return name
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / f"{name}.json"
        cfg_path.write_text(json.dumps(config or TINY_CLIP_CONFIG))
        open_clip.add_model_config(cfg_path)
    return name


def build_tiny_clip_weights(path: str | os.PathLike, seed: int = 0, name: str = TINY_CLIP_NAME) -> tuple[str, Path]:
    """Build a random tiny CLIP offline and save its state_dict to ``path``.

    Returns ``(model_name, path)``, ready for ``load_open_clip(model_name, str(path))``.
    The global RNG is left untouched; the same seed gives the same weights.
    """
    import open_clip

    register_tiny_clip_config(name)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(name, pretrained=None, pretrained_text=False)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # Never a truncated weights file after a kill.
    with atomic_write(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(tmp))
        else:
            torch.save(state, tmp)
    return name, path


def _check_model_name(model_name: str) -> None:
    import open_clip

    if model_name.startswith(("hf-hub:", "local-dir:")):
        raise ModelNotFoundError(
            f"open_clip model '{model_name}': schema names are not supported here; "
            f"give a built-in model name and pass the weights as a tag or a local file (see {_LIST_HINT})"
        )
    if model_name not in open_clip.list_models():
        close = difflib.get_close_matches(model_name, open_clip.list_models(), n=3)
        maybe = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ModelNotFoundError(f"unknown open_clip model '{model_name}'{maybe}; list valid names with: {_LIST_HINT}")


def _resolve_tag(model_name: str, tag: str, cache_dir: str | None) -> tuple[str, dict]:
    """Map a pretrained tag to a local weights file: caches first, download only when allowed.

    Mirrors open_clip's own lookup (``download_pretrained``: hub file, safetensors preferred, else
    the legacy URL cache) but with ``local_files_only`` first, so an offline machine gets an
    answer at once instead of waiting on connection timeouts.
    """
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
    from open_clip.pretrained import download_pretrained_from_url, get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name, tag)
    if "file" in cfg:
        return cfg["file"], cfg
    # open_clip's convention: "org/repo/" means the default file name, "org/repo/file.bin" a given one.
    repo, filename = os.path.split(cfg.get("hf_hub", ""))
    candidates = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
    if filename.endswith((".bin", ".pth")):
        candidates.insert(0, filename[:-4] + ".safetensors")
    url = cfg.get("url", "")
    legacy = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url)) if url else ""

    if repo:
        from huggingface_hub import try_to_load_from_cache

        for fname in candidates:
            cached = try_to_load_from_cache(repo, fname, cache_dir=cache_dir)
            if isinstance(cached, str) and os.path.isfile(cached):
                return cached, cfg
    if legacy and os.path.isfile(legacy):
        return legacy, cfg

    where = f"{repo}/{' or '.join(candidates)} in the Hugging Face cache" if repo else legacy
    how = (
        f"download it where there is network (python -c \"import open_clip; "
        f"open_clip.create_model('{model_name}', pretrained='{tag}')\") or pass a local weights file"
    )
    if hub_offline():
        raise ModelNotFoundError(f"open_clip weights {model_name}/{tag} not found: looked for {where} (offline); {how}")
    last = ""
    try:
        if repo:
            from huggingface_hub import hf_hub_download

            for fname in candidates:
                try:
                    return hf_hub_download(repo, fname, cache_dir=cache_dir), cfg
                except Exception as exc:  # noqa: BLE001 - try the next name, report the last failure
                    last = one_line(exc)
        else:
            return download_pretrained_from_url(url, cache_dir=cache_dir), cfg
    except Exception as exc:  # noqa: BLE001 - any download failure becomes one line
        last = one_line(exc)
    raise ModelNotFoundError(f"open_clip weights {model_name}/{tag} not found: looked for {where} ({last}); {how}")


def _resolve_pretrained(model_name: str, pretrained: str | None, cache_dir: str | None) -> tuple[str | None, dict]:
    """Return ``(weights_file_or_None, tag_cfg)`` for a tag, a local file, or None (random init)."""
    from open_clip.pretrained import is_pretrained_cfg, list_pretrained_tags_by_model

    if pretrained is None:
        return None, {}
    if os.path.isfile(pretrained):
        return pretrained, {}
    if is_pretrained_cfg(model_name, pretrained):
        return _resolve_tag(model_name, pretrained, cache_dir)
    tags = list_pretrained_tags_by_model(model_name)
    shown = ", ".join(tags[:6]) + (
        f", ... ({len(tags)} in all: open_clip.list_pretrained_tags_by_model)" if len(tags) > 6 else ""
    )
    tag_hint = f"known tags for {model_name}: {shown}" if tags else f"{model_name} has no pretrained tags"
    if os.sep in pretrained or pretrained.endswith(_WEIGHT_SUFFIXES):
        raise ModelNotFoundError(
            f"open_clip weights file not found: {pretrained}; pass an existing local weights file or a tag ({tag_hint})"
        )
    raise ModelNotFoundError(
        f"'{pretrained}' is neither a pretrained tag nor a file for open_clip model {model_name} ({tag_hint}); "
        "download the weights or pass a local weights file"
    )


@dataclass
class ClipEmbedder:
    """An open_clip model with its eval preprocessing and tokenizer, on one device."""

    model: torch.nn.Module
    preprocess: Callable
    tokenizer: Callable
    device: torch.device
    model_name: str = ""
    pretrained: str | None = None

    @property
    def logit_scale(self) -> float:
        """exp(learned log-temperature): 100 for OpenAI CLIP; what PickScore-style scores multiply by."""
        return float(self.model.logit_scale.detach().exp().item())

    @property
    def embed_dim(self) -> int:
        """Embedding width (used for empty outputs); 0 if the vision tower does not say."""
        return int(getattr(self.model.visual, "output_dim", 0))

    def embed_images(self, images: Sequence, batch_size: int = 32) -> torch.Tensor:
        """L2-normalised fp32 image embeddings ``[N, D]`` on the CPU."""
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = torch.stack([self.preprocess(im.convert("RGB")) for im in images[start : start + batch_size]])
                feats = self.model.encode_image(batch.to(self.device))
                out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)

    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """L2-normalised fp32 text embeddings ``[N, D]`` on the CPU (texts longer than the context are truncated)."""
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                tokens = self.tokenizer(list(texts[start : start + batch_size])).to(self.device)
                feats = self.model.encode_text(tokens)
                out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)


def load_open_clip(
    model_name: str,
    pretrained: str | None,
    device: str | torch.device = "cpu",  # "auto" = CUDA when available
    cache_dir: str | None = None,
) -> ClipEmbedder:
    """Load an open_clip model for embedding.

    ``pretrained`` is an open_clip tag ("openai", "laion2b_s32b_b79k"), a local weights file
    (state_dict, .bin/.pt/.safetensors), or None for random weights (tests only). With a tag, the
    tag's preprocessing (mean/std/interpolation) and QuickGELU setting are applied, as the
    checkpoint was trained with them.

    Raises :class:`ModelNotFoundError` when the model name or its weights are not found,
    :class:`~pipeline.models.weights_files.WeightsFileError` when the weights file is unreadable
    (truncated, an HTML page, another format), :class:`UserError` when it is for another architecture.
    """
    import open_clip

    dev = resolve_device(str(device))
    if model_name == TINY_CLIP_NAME:  # the built-in tiny config lives in no JSON file open_clip knows
        register_tiny_clip_config()
    _check_model_name(model_name)
    weights, tag_cfg = _resolve_pretrained(model_name, pretrained, cache_dir)
    try:
        with reading_weights(weights, f"open_clip {model_name} weights"):  # a corrupt file: one line naming it
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name,
                pretrained=weights,
                device=dev,
                force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
                image_mean=tag_cfg.get("mean"),
                image_std=tag_cfg.get("std"),
                image_interpolation=tag_cfg.get("interpolation"),
                image_resize_mode=tag_cfg.get("resize_mode"),
                pretrained_text=False,  # never fetch base text-tower weights from the hub
            )
        tokenizer = open_clip.get_tokenizer(model_name)
    except OSError as exc:  # hub look-ups for HF text towers / tokenizers that are not cached
        raise ModelNotFoundError(
            f"open_clip model {model_name} needs files that are not available locally: {one_line(exc)}"
        ) from None
    except RuntimeError as exc:
        if "state_dict" not in str(exc):  # e.g. CUDA out of memory: not a weights problem
            raise
        # strict state_dict load failed: the file is for another architecture
        raise UserError(f"weights {weights} do not fit open_clip model {model_name}: {one_line(exc)}") from None
    model.eval()
    return ClipEmbedder(model, preprocess, tokenizer, dev, model_name, pretrained)


def pair_cosine(embedder: ClipEmbedder, images: Sequence, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """cos(image_i, text_i) for each pair: ``[N]``."""
    if len(images) != len(texts):
        raise UserError(f"{len(images)} images but {len(texts)} texts: need one text per image")
    img = embedder.embed_images(images, batch_size)
    txt = embedder.embed_texts(texts)
    return (img * txt).sum(-1)


def clip_score(embedder: ClipEmbedder, images: Sequence, prompts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """CLIPScore per (image, prompt) pair: ``100 * max(cos, 0)``, shape ``[N]``.

    This is the common definition (torchmetrics ``CLIPScore``; Hessel et al. 2021 with w=100
    instead of 2.5), so numbers are comparable to published CLIP scores. Use
    :func:`pair_cosine` for the raw cosine.
    """
    return 100.0 * pair_cosine(embedder, images, prompts, batch_size).clamp(min=0.0)


def style_margin(
    embedder: ClipEmbedder, images: Sequence, style_text: str, opposite_text: str, batch_size: int = 32
) -> torch.Tensor:
    """Zero-shot style margin ``cos(image, style_text) - cos(image, opposite_text)``, shape ``[N]``.

    Positive means the image is closer to the style than to its opposite (e.g. "pixel art" vs
    "a realistic photo"); the label stage keeps pairs whose chosen image has a positive margin,
    and the eval "style" metric reports the fraction / mean of the same number.
    """
    img = embedder.embed_images(images, batch_size)
    txt = embedder.embed_texts([style_text, opposite_text])
    return img @ txt[0] - img @ txt[1]
