"""``pickscore``: PickScore v1 (Kirstain et al. 2023), a transformers CLIP-H fine-tuned on Pick-a-Pic:
``logit_scale.exp() * cos(image, prompt)`` (about 18-24), higher is better."""
from __future__ import annotations

import os
from pathlib import Path

from pipeline.cli.options import option
from pipeline.errors import ModelNotFoundError

from .options_panels import PANEL_WEIGHTS
from .registry import JudgeSpec, LoadContext, register
from .weights import check_pairs, from_pretrained, tiny_once, weights_version

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class PickScoreJudge:
    """PickScore: ``logit_scale.exp() * cos(image, prompt)`` with a transformers CLIPModel."""

    name = "pickscore"
    higher_is_better = True
    threshold = None

    def __init__(self, model, processor, device, batch_size: int = 16):
        self.model, self.processor, self.device, self.batch_size = (
            model.to(device).eval(), processor, device, batch_size
        )

    @staticmethod
    def _features(out):
        import torch

        # transformers 4.x returns the projected tensor, 5.x a ModelOutput with it as pooler_output
        return out if torch.is_tensor(out) else out.pooler_output

    def score(self, images, prompts):
        import torch

        check_pairs(images, prompts)
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


def load_pickscore(model_id: str, processor_id: str, device) -> PickScoreJudge:
    """PickScore's CLIPModel and processor from hub ids (local cache when offline) or local folders.

    Raises :class:`ModelNotFoundError` when either is not found,
    :class:`~pipeline.models.weights_files.WeightsFileError` naming the file when one is unreadable (truncated, an
    HTML page, a config that is not JSON).
    """
    from transformers import CLIPModel, CLIPProcessor

    from pipeline.errors import one_line
    from pipeline.judges.clip_embed import hub_offline
    from pipeline.models.tokenizer import check_tokenizer

    how = "download it (hf download <id>) or pass a local folder saved with save_pretrained"
    for source in (model_id, processor_id):
        p = Path(source).expanduser()
        if (source.startswith(("/", ".", "~")) or source.count("/") > 1) and not p.is_dir():
            raise ModelNotFoundError(f"PickScore folder not found: {source}; {how}")
    kwargs = {"local_files_only": hub_offline()}
    try:
        # Inside the not-found handler: transformers reports a corrupt config as OSError too.
        model = from_pretrained(CLIPModel, model_id, f"PickScore model '{model_id}'", **kwargs)
        processor = from_pretrained(CLIPProcessor, processor_id, f"PickScore processor '{processor_id}'", **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"PickScore model '{model_id}' / processor '{processor_id}' not found: {one_line(exc, 200)}; {how}"
        ) from None
    check_tokenizer(processor.tokenizer, f"PickScore processor '{processor_id}'")
    return PickScoreJudge(model, processor, device)


def build_tiny_pickscore(directory: str | os.PathLike, seed: int = 0) -> Path:
    """A tiny random transformers CLIPModel + CLIPProcessor (real CLIP vocabulary), save_pretrained."""
    import shutil

    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from pipeline.models.tokenizer import CLIP_VOCAB_SIZE, build_clip_tokenizer

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
    shutil.rmtree(directory / "_tok", ignore_errors=True)
    return directory


def _load(ctx: LoadContext) -> PickScoreJudge:
    judge = load_pickscore(ctx.options.pickscore_model, ctx.options.pickscore_processor, ctx.device)
    judge.batch_size = ctx.options.batch_size
    return judge


def _tiny(root: Path) -> dict:
    folder = root / "pickscore"
    tiny_once(root, "pickscore", lambda: build_tiny_pickscore(folder, seed=0))
    return {"pickscore_model": str(folder), "pickscore_processor": str(folder)}


register(JudgeSpec(
    name="pickscore", load=_load, higher_is_better=True,
    summary="PickScore v1: logit_scale.exp() * cos(image, prompt) with its CLIP-H",
    version=weights_version(lambda o: o.pickscore_model),
    options=(
        ("pickscore_model", str, option(PICKSCORE_MODEL, panel=PANEL_WEIGHTS,
                                        help="PickScore CLIPModel: hub id or folder.")),
        ("pickscore_processor", str, option(PICKSCORE_PROCESSOR, panel=PANEL_WEIGHTS,
                                            help="Its processor: hub id or folder.")),
    ),
    tiny=_tiny, keep_with_tiny=("pickscore_model", "pickscore_processor"),
))
