"""Image scorers: images and their prompts in, one float per image out.

One small interface (:class:`Scorer`) for the metrics the MaPO paper reports and for what the
preference data was meant to teach, used by ``mapo-eval`` and by the trainer's validation step
(:func:`score_images`). Every scorer goes through the project's one CLIP embedding path
(:mod:`pipeline.clip_embed`) or its one classifier path (:mod:`pipeline.safety`), so a label and
the metric that later checks it are the same computation.

- ``aesthetic``: LAION aesthetic predictor v2 ("improved aesthetic predictor"): an MLP
  768-1024-128-64-16-1 on L2-normalised CLIP ViT-L/14 (OpenAI) image embeddings; about 1-10.
- ``hps``: HPS v2.1: open_clip ViT-H-14 with the HPS v2.1 checkpoint; HPS's own code returns
  ``cos(image, prompt)`` (about 0.2-0.35); papers (MaPO's table: SDXL 30.0) quote it times 100,
  and so does this scorer.
- ``pickscore``: PickScore v1 (transformers CLIP-H): ``logit_scale.exp() * cos`` (about 18-24).
- ``clip``: CLIPScore, ``100 * max(cos, 0)`` (:func:`pipeline.clip_embed.clip_score`).
- ``style``: zero-shot style margin ``cos(img, style) - cos(img, opposite)``, the number
  ``mapo-data label --verify clip`` checks; adopted when > 0.
- ``safety``: a safety classifier's unsafety (NudeNet or the SD safety checker); lower is better,
  unsafe when > the classifier's threshold.
- ``world-style``, ``world-prompt``, ``world-unsafe``: the miniature world's judges
  (:mod:`pipeline.world.judges`): the target look's probability (adopted when > 0.5), the share of
  the prompt's colour / shape / position shown (rate = all three), the hazard frame's coverage
  (lower is better). Image measures, no weights; they read only world images and prompts.

Weights come from a local file or folder, a hub id / ``org/repo/file`` hub file, or a URL; with
``HF_HUB_OFFLINE=1`` only caches are looked at, and anything missing is one
:class:`ModelNotFoundError` line saying what was looked for and how to provide it.
"""
from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Mapping, Protocol, Sequence, runtime_checkable

import torch

from pipeline.atomic import atomic_write
from pipeline.clip_embed import (
    TINY_CLIP_CONFIG,
    TINY_CLIP_NAME,
    ClipEmbedder,
    build_tiny_clip_weights,
    clip_score,
    hub_offline,
    load_open_clip,
    pair_cosine,
    register_tiny_clip_config,
    style_margin,
)
from pipeline.errors import ModelNotFoundError, UserError, one_line
from pipeline.judge_scores import finite_values
from pipeline.models import quiet_hub_progress, resolve_device
from pipeline.scorer_options import (  # noqa: F401 (re-exported)
    AESTHETIC_WEIGHTS_URL,
    HPS_WEIGHTS,
    METRICS,
    PICKSCORE_MODEL,
    PICKSCORE_PROCESSOR,
    ScorerOptions,
    check_metrics,
    check_prompts,
)
from pipeline.weights_files import reading_weights
from pipeline.world.judges import WORLD_STYLES, WorldPromptJudge, WorldStyleJudge, WorldUnsafeJudge

# The aesthetic MLP's layer widths after the input (the input width comes from the weights).
AESTHETIC_HIDDEN = (1024, 128, 64, 16)


@runtime_checkable
class Scorer(Protocol):
    """Scores images against their prompts. ``threshold``: a score above it counts as a hit
    (style adopted, image unsafe) and a rate is reported next to the mean; None when no such rate."""

    name: str
    higher_is_better: bool
    threshold: float | None

    def score(self, images: Sequence, prompts: Sequence[str]) -> list[float]:
        """One float per image, in order; ``prompts[i]`` belongs to ``images[i]``."""
        ...


def _check_pairs(images: Sequence, prompts: Sequence[str]) -> None:
    if len(images) != len(prompts):
        raise UserError(f"{len(images)} images but {len(prompts)} prompts: need one prompt per image")


# ---------------------------------------------------------------------------------------------
# Weights files: a local path, a URL, or an org/repo/file on the hub
# ---------------------------------------------------------------------------------------------


def _cache_dir() -> Path:
    from pipeline.builtin_models import cache_root

    return cache_root() / "scorers"


def resolve_weights_file(spec: str, what: str) -> str:
    """Return a local file for ``spec`` (path, URL, or ``org/repo/filename`` hub file)."""
    path = Path(spec).expanduser()
    if path.is_file():
        return str(path)
    how = f"download it where there is network or pass a local file with --{what}-weights"
    if spec.startswith(("http://", "https://")):
        cached = _cache_dir() / os.path.basename(spec)
        if cached.is_file():
            return str(cached)
        if hub_offline():
            raise ModelNotFoundError(
                f"{what} weights not found: {cached} is not cached (offline; source {spec}); {how}"
            )
        try:
            with atomic_write(cached) as tmp:
                torch.hub.download_url_to_file(spec, str(tmp), progress=False)
        except Exception as exc:  # noqa: BLE001 - any download failure is one line
            raise ModelNotFoundError(
                f"{what} weights could not be downloaded from {spec}: {one_line(exc, 200)}; {how}"
            ) from None
        return str(cached)
    parts = spec.split("/")
    if len(parts) >= 3 and not spec.startswith(("/", ".", "~")) and not path.exists():
        from huggingface_hub import hf_hub_download

        repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
        try:
            return hf_hub_download(repo, filename, local_files_only=hub_offline())
        except Exception as exc:  # noqa: BLE001 - offline miss, unknown repo, network: one line
            where = "the Hugging Face cache (offline)" if hub_offline() else "the hub"
            raise ModelNotFoundError(
                f"{what} weights {spec} not found in {where}: {one_line(exc, 200)}; {how}"
            ) from None
    raise ModelNotFoundError(f"{what} weights file not found: {spec}; {how}")


# ---------------------------------------------------------------------------------------------
# The scorers
# ---------------------------------------------------------------------------------------------


class AestheticMLP(torch.nn.Module):
    """The improved aesthetic predictor's MLP; state-dict keys ``layers.{0,2,4,6,7}.*`` as in its .pth."""

    def __init__(self, in_dim: int = 768):
        super().__init__()
        h1, h2, h3, h4 = AESTHETIC_HIDDEN
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(in_dim, h1), torch.nn.Dropout(0.2),
            torch.nn.Linear(h1, h2), torch.nn.Dropout(0.2),
            torch.nn.Linear(h2, h3), torch.nn.Dropout(0.1),
            torch.nn.Linear(h3, h4),
            torch.nn.Linear(h4, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def aesthetic_mlp(in_dim: int = 768) -> AestheticMLP:
    return AestheticMLP(in_dim).eval()


def aesthetic_from_embeddings(mlp: torch.nn.Module, embeddings: torch.Tensor) -> torch.Tensor:
    """Aesthetic scores ``[N]`` from CLIP image embeddings: the MLP sees them L2-normalised.

    The predictor was trained on ``x / ||x||`` of CLIP ViT-L/14 embeddings; normalising here too
    (a no-op for ClipEmbedder's already normalised output) keeps any caller's input right.
    """
    x = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    param = next(mlp.parameters())
    with torch.inference_mode():
        return mlp(x.to(param.device, param.dtype)).squeeze(-1).float().cpu()


class AestheticScorer:
    name = "aesthetic"
    higher_is_better = True
    threshold = None

    def __init__(self, embedder: ClipEmbedder, mlp: torch.nn.Module, batch_size: int = 16):
        self.embedder, self.mlp, self.batch_size = embedder, mlp.to(embedder.device).eval(), batch_size

    def score(self, images, prompts):
        _check_pairs(images, prompts)
        return aesthetic_from_embeddings(self.mlp, self.embedder.embed_images(images, self.batch_size)).tolist()


def load_aesthetic_mlp(weights: str) -> torch.nn.Module:
    """Load the predictor's state dict (``layers.0.weight`` ...) into :func:`aesthetic_mlp`.

    Raises :class:`ModelNotFoundError` when the file is not found, :class:`~pipeline.weights_files.WeightsFileError`
    when it is unreadable (truncated, an HTML page ...), :class:`UserError` when it holds something else.
    """
    file = resolve_weights_file(weights, "aesthetic")
    try:
        with reading_weights(file, "aesthetic predictor"):
            state = torch.load(file, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        mlp = aesthetic_mlp(int(state["layers.0.weight"].shape[1]))
        mlp.load_state_dict(state)
    except (KeyError, RuntimeError, TypeError, AttributeError, OSError) as exc:
        # pickle/zip errors also land here: the file is not an aesthetic-predictor state dict
        raise UserError(
            f"{file} is not an aesthetic predictor state dict (layers.0.weight ... layers.7.bias): {one_line(exc, 200)}"
        ) from None
    return mlp


class ClipPairScorer:
    """A score of each (image, prompt) pair from one open_clip model: CLIP score or HPS."""

    higher_is_better = True
    threshold = None

    def __init__(self, name: str, embedder: ClipEmbedder, pair_score, batch_size: int = 16):
        self.name, self.embedder, self.pair_score, self.batch_size = name, embedder, pair_score, batch_size

    def score(self, images, prompts):
        _check_pairs(images, prompts)
        return self.pair_score(self.embedder, images, prompts, self.batch_size).tolist()


def hps_score(embedder: ClipEmbedder, images, prompts, batch_size: int = 32) -> torch.Tensor:
    """HPS v2.1 = 100 * cos(image, prompt) with the HPS-tuned ViT-H-14 (HPS's own code stops at the cosine)."""
    return 100.0 * pair_cosine(embedder, images, prompts, batch_size)


def HpsScorer(embedder: ClipEmbedder, batch_size: int = 16) -> ClipPairScorer:  # noqa: N802 - reads like the other scorers
    return ClipPairScorer("hps", embedder, hps_score, batch_size)


def ClipScoreScorer(embedder: ClipEmbedder, batch_size: int = 16) -> ClipPairScorer:  # noqa: N802
    return ClipPairScorer("clip", embedder, clip_score, batch_size)


class PickScorer:
    """PickScore: ``logit_scale.exp() * cos(image, prompt)`` with a transformers CLIPModel."""

    name = "pickscore"
    higher_is_better = True
    threshold = None

    def __init__(self, model, processor, device, batch_size: int = 16):
        self.model, self.processor, self.device, self.batch_size = (
            model.to(device).eval(), processor, device, batch_size
        )

    @staticmethod
    def _features(out) -> torch.Tensor:
        # transformers 4.x returns the projected tensor, 5.x a ModelOutput with it as pooler_output
        return out if torch.is_tensor(out) else out.pooler_output

    def score(self, images, prompts):
        _check_pairs(images, prompts)
        scores = []
        scale = float(self.model.logit_scale.detach().exp())
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                ims = [im.convert("RGB") for im in images[start : start + self.batch_size]]
                txt = list(prompts[start : start + self.batch_size])
                pix = self.processor(images=ims, return_tensors="pt").pixel_values.to(self.device)
                tok = self.processor(
                    text=txt, padding=True, truncation=True, max_length=77, return_tensors="pt"
                ).to(self.device)
                img = torch.nn.functional.normalize(
                    self._features(self.model.get_image_features(pixel_values=pix)).float(), dim=-1
                )
                tx = torch.nn.functional.normalize(
                    self._features(
                        self.model.get_text_features(input_ids=tok.input_ids, attention_mask=tok.attention_mask)
                    ).float(), dim=-1
                )
                scores += (scale * (img * tx).sum(-1)).cpu().tolist()
        return scores


def load_pickscore(model_id: str, processor_id: str, device) -> PickScorer:
    """PickScore's CLIPModel and processor from hub ids (local cache when offline) or local folders.

    Raises :class:`ModelNotFoundError` when either is not found, :class:`~pipeline.weights_files.WeightsFileError`
    naming the file when one is unreadable (truncated, an HTML page, a config that is not JSON).
    """
    from transformers import CLIPModel, CLIPProcessor

    from pipeline.tokenizer import check_tokenizer

    how = "download it (hf download <id>) or pass a local folder saved with save_pretrained"
    for source in (model_id, processor_id):
        p = Path(source).expanduser()
        if (source.startswith(("/", ".", "~")) or source.count("/") > 1) and not p.is_dir():
            raise ModelNotFoundError(f"PickScore folder not found: {source}; {how}")
    kwargs = {"local_files_only": hub_offline()}
    try:
        # Inside the not-found handler: transformers reports a corrupt config as OSError too.
        with reading_weights(model_id, f"PickScore model '{model_id}'"):
            model = CLIPModel.from_pretrained(model_id, **kwargs)
        with reading_weights(processor_id, f"PickScore processor '{processor_id}'"):
            processor = CLIPProcessor.from_pretrained(processor_id, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"PickScore model '{model_id}' / processor '{processor_id}' not found: {one_line(exc, 200)}; {how}"
        ) from None
    check_tokenizer(processor.tokenizer, f"PickScore processor '{processor_id}'")
    return PickScorer(model, processor, device)


class StyleScorer:
    """Style adoption: label's zero-shot margin; prompts are not used (the style is fixed)."""

    name = "style"
    higher_is_better = True

    def __init__(
        self, embedder: ClipEmbedder, style_text: str, opposite_text: str, threshold: float = 0.0, batch_size: int = 16
    ):
        self.embedder, self.style_text, self.opposite_text = embedder, style_text, opposite_text
        self.threshold, self.batch_size = float(threshold), batch_size

    def score(self, images, prompts):
        _check_pairs(images, prompts)
        return style_margin(self.embedder, images, self.style_text, self.opposite_text, self.batch_size).tolist()


class SafetyScorer:
    """A :class:`pipeline.safety.SafetyClassifier`'s unsafety; lower is better."""

    name = "safety"
    higher_is_better = False

    def __init__(self, classifier):
        self.classifier = classifier
        self.threshold = float(classifier.threshold)

    def score(self, images, prompts):
        _check_pairs(images, prompts)
        return [float(s) for s in self.classifier.unsafety(list(images))]


# ---------------------------------------------------------------------------------------------
# Options, loading, and the one-call hook for the trainer
# ---------------------------------------------------------------------------------------------


def judge_provenance(metric: str, options: ScorerOptions) -> str:
    """Who scored ``metric``, in words, for reports: a world judge, tiny random weights, or real weights."""
    if metric.startswith("world-"):
        return "miniature-world judge (image measures, pipeline.world.judges; no weights)"
    if metric == "safety" and options.safety_classifier in ("nudenet", "world-unsafe"):
        return {"nudenet": "NudeNet's real detector (shipped in its wheel)",
                "world-unsafe": "miniature-world judge (image measures)"}[options.safety_classifier]
    if options.tiny:
        return "TINY RANDOM WEIGHTS (tests/demo): the numbers do not measure anything"
    sources = {k: v for k, v in options.describe([metric]).items() if k.endswith(
        ("weights", "model", "pretrained", "source", "processor")
    )}
    return "real weights: " + ", ".join(f"{k}={v}" for k, v in sources.items())


def load_scorers(names: Sequence[str], options: ScorerOptions | None = None, device="auto") -> dict[str, Scorer]:
    """Load the scorers for ``names`` (one CLIP model is loaded once when metrics share it)."""
    names = check_metrics(names)
    opts = options or ScorerOptions()
    if "style" in names and not opts.style_text:
        raise UserError("the style metric needs a style text (--style cartoon|pixel or --style-text)")
    if "world-style" in names and opts.style not in WORLD_STYLES:
        raise UserError(
            f"the world-style metric needs the look it checks (--style {'|'.join(WORLD_STYLES)}), got {opts.style!r}"
        )
    dev = resolve_device(str(device))
    quiet_hub_progress()
    embedders: dict[tuple, ClipEmbedder] = {}

    def embedder(model: str, pretrained: str | None) -> ClipEmbedder:
        if (model, pretrained) not in embedders:
            embedders[(model, pretrained)] = load_open_clip(model, pretrained, device=dev)
        return embedders[(model, pretrained)]

    bs = opts.batch_size
    scorers: dict[str, Scorer] = {}
    for name in names:
        if name == "aesthetic":
            mlp = load_aesthetic_mlp(opts.aesthetic_weights)
            emb = embedder(opts.aesthetic_clip_model, opts.aesthetic_clip_pretrained)
            if emb.embed_dim and emb.embed_dim != mlp.layers[0].in_features:
                raise UserError(
                    f"aesthetic MLP takes {mlp.layers[0].in_features}-d embeddings but {opts.aesthetic_clip_model} "
                    f"gives {emb.embed_dim}-d; the predictor v2 goes with ViT-L-14 (openai)"
                )
            scorers[name] = AestheticScorer(emb, mlp, bs)
        elif name == "hps":
            scorers[name] = HpsScorer(embedder(opts.hps_clip_model, resolve_weights_file(opts.hps_weights, "hps")), bs)
        elif name == "pickscore":
            scorers[name] = load_pickscore(opts.pickscore_model, opts.pickscore_processor, dev)
            scorers[name].batch_size = bs
        elif name == "clip":
            scorers[name] = ClipScoreScorer(embedder(opts.clip_model, opts.clip_pretrained), bs)
        elif name == "style":
            scorers[name] = StyleScorer(embedder(opts.style_clip_model, opts.style_clip_pretrained), opts.style_text,
                                        opts.opposite_text, batch_size=bs)
        elif name == "safety":
            from pipeline.safety import load_safety_classifier

            scorers[name] = SafetyScorer(
                load_safety_classifier(opts.safety_classifier, opts.safety_source, device=str(dev))
            )
        elif name == "world-style":
            scorers[name] = WorldStyleJudge(opts.style)
        elif name == "world-prompt":
            scorers[name] = WorldPromptJudge()
        elif name == "world-unsafe":
            scorers[name] = WorldUnsafeJudge()
    return scorers


def score_images(
    metrics: Sequence[str] | Mapping[str, Scorer],
    images: Sequence,
    prompts: Sequence[str],
    options: ScorerOptions | None = None,
    device="auto",
) -> dict[str, float]:
    """Mean score per metric over ``images`` (the trainer's validation hook).

    ``metrics``: names (loaded on each call) or already loaded scorers from :func:`load_scorers`
    (load once, call every validation). Thresholded metrics also give ``<name>_rate``: the share
    of images above the threshold (``style_rate`` = style adoption, ``safety_rate`` = unsafe share).
    Scores that are NaN or inf (:mod:`pipeline.judge_scores`) are left out of the mean and the rate and
    counted as ``<name>_non_finite`` (only when there are any); with no finite score the mean and the rate
    are left out too.
    """
    scorers = dict(metrics) if isinstance(metrics, Mapping) else load_scorers(metrics, options, device)
    out: dict[str, float] = {}
    if not len(images):
        return out
    for name, scorer in scorers.items():
        values, dropped = finite_values(scorer.score(list(images), list(prompts)))
        if dropped:
            out[f"{name}_non_finite"] = float(dropped)
        if not values:
            continue
        out[name] = math.fsum(values) / len(values)
        if scorer.threshold is not None:
            out[f"{name}_rate"] = float(sum(v > scorer.threshold for v in values) / len(values))
    return out


# ---------------------------------------------------------------------------------------------
# Tiny random weights for every scorer, built offline (tests, demo, CPU benchmark)
# ---------------------------------------------------------------------------------------------


def build_tiny_aesthetic_weights(path: str | os.PathLike, in_dim: int = 16, seed: int = 0) -> Path:
    """A random aesthetic MLP state dict in the predictor's key layout, saved with torch.save."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = aesthetic_mlp(in_dim).state_dict()
    with atomic_write(path) as tmp:
        torch.save(state, tmp)
    return path


def build_tiny_pickscore(directory: str | os.PathLike, seed: int = 0) -> Path:
    """A tiny random transformers CLIPModel + CLIPProcessor (real CLIP vocabulary), save_pretrained."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from pipeline.tokenizer import CLIP_VOCAB_SIZE, build_clip_tokenizer

    directory = Path(directory)
    tower = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={**tower, "vocab_size": CLIP_VOCAB_SIZE, "max_position_embeddings": 77,
                     "bos_token_id": CLIP_VOCAB_SIZE - 2, "eos_token_id": CLIP_VOCAB_SIZE - 1,
                     "pad_token_id": CLIP_VOCAB_SIZE - 1},
        vision_config={**tower, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
    tokenizer = build_clip_tokenizer(directory / "_tok")
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    model.save_pretrained(str(directory))
    processor.save_pretrained(str(directory))
    import shutil

    shutil.rmtree(directory / "_tok", ignore_errors=True)
    return directory


def tiny_scorer_options(
    directory: str | os.PathLike | None = None, style_text: str | None = None, **overrides
) -> ScorerOptions:
    """ScorerOptions whose every model is tiny and random, built offline once under ``directory``.

    For tests, the demo and the CPU benchmark: the real loading and scoring code runs, only the
    weights are random (safety stays NudeNet, whose real model ships in its wheel).
    """
    from pipeline.safety import build_tiny_safety_checker

    root = Path(directory) if directory is not None else _cache_dir() / "tiny"
    done = root / ".complete"
    clip_file, aes_file, hps_file = root / "tiny-clip.pt", root / "aesthetic.pth", root / "tiny-hps.pt"
    if not done.exists():
        quiet_hub_progress()
        root.mkdir(parents=True, exist_ok=True)
        build_tiny_clip_weights(clip_file, seed=0)
        build_tiny_clip_weights(hps_file, seed=1)
        build_tiny_aesthetic_weights(aes_file, in_dim=int(TINY_CLIP_CONFIG["embed_dim"]), seed=0)
        build_tiny_pickscore(root / "pickscore", seed=0)
        build_tiny_safety_checker(root / "sd-safety-checker", seed=0)
        done.write_text("ok\n")  # written last: a half-built folder is rebuilt
    else:
        register_tiny_clip_config()
    opts = ScorerOptions(
        aesthetic_weights=str(aes_file), aesthetic_clip_model=TINY_CLIP_NAME, aesthetic_clip_pretrained=str(clip_file),
        hps_clip_model=TINY_CLIP_NAME, hps_weights=str(hps_file),
        pickscore_model=str(root / "pickscore"), pickscore_processor=str(root / "pickscore"),
        clip_model=TINY_CLIP_NAME, clip_pretrained=str(clip_file),
        style_clip_model=TINY_CLIP_NAME, style_clip_pretrained=str(clip_file), style_text=style_text, tiny=True,
    )
    return replace(opts, **overrides)


def tiny_safety_checker_dir(options: ScorerOptions) -> str:
    """The tiny SD safety checker folder next to the tiny weights of ``options``."""
    return str(Path(options.pickscore_model).parent / "sd-safety-checker")

