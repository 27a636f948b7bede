"""``aesthetic``: the LAION aesthetic predictor v2 ("improved aesthetic predictor").

An MLP 768-1024-128-64-16-1 on L2-normalised CLIP ViT-L/14 (OpenAI) image embeddings; scores about 1-10,
higher is better (christophschuhmann/improved-aesthetic-predictor). Prompts are not read.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

from pipeline.cli.options import option
from pipeline.errors import UserError, one_line

from .options_panels import PANEL_WEIGHTS
from .registry import JudgeSpec, LoadContext, register
from .weights import check_pairs, resolve_weights_file, tiny_once, weights_version

AESTHETIC_WEIGHTS_URL = (
    "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac+logos+ava1-l14-linearMSE.pth"
)
# The MLP's layer widths after the input (the input width comes from the weights).
AESTHETIC_HIDDEN = (1024, 128, 64, 16)


@functools.cache
def _mlp_class():
    import torch

    class AestheticMLP(torch.nn.Module):
        """The improved aesthetic predictor's MLP; state-dict keys ``layers.{0,2,4,6,7}.*`` as in its .pth.
        Input ``[N, in_dim]`` float embeddings, output ``[N, 1]``."""

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

        def forward(self, x):
            return self.layers(x)

    AestheticMLP.__module__ = __name__
    return AestheticMLP


def __getattr__(name: str):
    # AestheticMLP is a torch module: made on first use, so declaring this judge does not import torch.
    if name == "AestheticMLP":
        return _mlp_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def aesthetic_mlp(in_dim: int = 768):
    """A fresh :class:`AestheticMLP` of input width ``in_dim``, in eval mode."""
    return _mlp_class()(in_dim).eval()


def aesthetic_from_embeddings(mlp, embeddings):
    """Aesthetic scores ``[N]`` (float32, CPU) from CLIP image embeddings ``[N, D]``: the MLP sees them L2-normalised.

    The predictor was trained on ``x / ||x||`` of CLIP ViT-L/14 embeddings; normalising here too
    (a no-op for ClipEmbedder's already normalised output) keeps any caller's input right.
    """
    import torch

    x = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    param = next(mlp.parameters())
    with torch.inference_mode():
        return mlp(x.to(param.device, param.dtype)).squeeze(-1).float().cpu()


class AestheticJudge:
    name = "aesthetic"
    higher_is_better = True
    threshold = None

    def __init__(self, embedder, mlp, batch_size: int = 16):
        self.embedder, self.mlp, self.batch_size = embedder, mlp.to(embedder.device).eval(), batch_size

    def score(self, images, prompts):
        check_pairs(images, prompts)
        return aesthetic_from_embeddings(self.mlp, self.embedder.embed_images(images, self.batch_size)).tolist()


def load_aesthetic_mlp(weights: str):
    """Load the predictor's state dict (``layers.0.weight`` ...) into :func:`aesthetic_mlp`.

    Raises :class:`ModelNotFoundError` when the file is not found,
    :class:`~pipeline.models.weights_files.WeightsFileError` when it is unreadable (truncated, an HTML page ...),
    :class:`UserError` when it holds something else.
    """
    import torch

    from pipeline.models.weights_files import reading_weights

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


def build_tiny_aesthetic_weights(path: str | os.PathLike, in_dim: int = 16, seed: int = 0) -> Path:
    """A random aesthetic MLP state dict in the predictor's key layout, saved with torch.save."""
    import torch

    from pipeline.data.atomic import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = aesthetic_mlp(in_dim).state_dict()
    with atomic_write(path) as tmp:
        torch.save(state, tmp)
    return path


def _load(ctx: LoadContext) -> AestheticJudge:
    opts = ctx.options
    mlp = load_aesthetic_mlp(opts.aesthetic_weights)
    emb = ctx.clip(opts.aesthetic_clip_model, opts.aesthetic_clip_pretrained)
    if emb.embed_dim and emb.embed_dim != mlp.layers[0].in_features:
        raise UserError(
            f"aesthetic MLP takes {mlp.layers[0].in_features}-d embeddings but {opts.aesthetic_clip_model} "
            f"gives {emb.embed_dim}-d; the predictor v2 goes with ViT-L-14 (openai)"
        )
    return AestheticJudge(emb, mlp, opts.batch_size)


def _tiny(root: Path) -> dict:
    from pipeline.judges.clip_embed import TINY_CLIP_CONFIG, TINY_CLIP_NAME

    from .clip_common import tiny_clip_file

    file = root / "aesthetic.pth"
    tiny_once(root, "aesthetic", lambda: build_tiny_aesthetic_weights(
        file, in_dim=int(TINY_CLIP_CONFIG["embed_dim"]), seed=0))
    return {"aesthetic_weights": str(file), "aesthetic_clip_model": TINY_CLIP_NAME,
            "aesthetic_clip_pretrained": tiny_clip_file(root)}


register(JudgeSpec(
    name="aesthetic", load=_load, higher_is_better=True,
    summary="LAION aesthetic predictor v2 on CLIP ViT-L/14 image embeddings (about 1-10)",
    version=weights_version(lambda o: f"{o.aesthetic_clip_model}:{o.aesthetic_weights}"),
    options=(
        ("aesthetic_weights", str, option(AESTHETIC_WEIGHTS_URL, panel=PANEL_WEIGHTS, help=(
            "Aesthetic MLP .pth: local file, URL or org/repo/file (default: LAION's "
            "sac+logos+ava1-l14-linearMSE.pth)."))),
        ("aesthetic_clip_model", str, option("ViT-L-14", panel=PANEL_WEIGHTS,
                                             help="open_clip model for the aesthetic embeddings.")),
        ("aesthetic_clip_pretrained", str | None, option("openai", panel=PANEL_WEIGHTS,
                                                         help="Its tag or local weights file.")),
    ),
    tiny=_tiny, keep_with_tiny=("aesthetic_weights",),
))
