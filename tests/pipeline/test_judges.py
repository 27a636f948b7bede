"""Judges: every built-in judge's real loading and scoring code on tiny random weights built offline."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests/conftest.py sets it too; never wait on the hub

from dataclasses import replace

import pytest
import torch
from PIL import Image

from pipeline.errors import ModelNotFoundError, UserError
from pipeline.judges import Judge, clip_embed, judges
from pipeline.judges import safety_classifiers as safety
from pipeline.judges.aesthetic import AestheticMLP, aesthetic_from_embeddings, load_aesthetic_mlp
from pipeline.judges.loading import load_judges, score_images
from pipeline.judges.tiny import tiny_judge_options, tiny_safety_checker_dir
from tests.image_fixtures import geometric_scene, gray, schematic_torso

# The miniature world's judges read 64 px world scenes; they have their own tests (tests/pipeline/test_world.py).
REAL_METRICS = [name for name, spec in judges().items() if spec.weights]

STYLE = ("a pixel art style image", "a realistic photo")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def opts(tmp_path_factory):
    return tiny_judge_options(tmp_path_factory.mktemp("judges"), style_text=STYLE[0], opposite_text=STYLE[1])


@pytest.fixture(scope="module")
def loaded(opts):
    return load_judges(REAL_METRICS, opts, device="cpu")


def _images():
    return [Image.new("RGB", (64, 48), (200, 30, 30)), Image.new("L", (40, 40), 90), geometric_scene(64),
            Image.new("RGB", (32, 32), (20, 200, 40))]


PROMPTS = ["a red square", "a gray card", "shapes on blue", "a green field"]


def test_every_metric_scores_one_float_per_image(loaded):
    assert list(loaded) == REAL_METRICS
    for name, judge in loaded.items():
        assert isinstance(judge, Judge)
        out = judge.score(_images(), PROMPTS)
        assert len(out) == 4 and all(isinstance(v, float) and v == v for v in out), name
        assert judge.score([], []) == [], name
        with pytest.raises(UserError):
            judge.score(_images(), PROMPTS[:2])
    assert loaded["safety"].higher_is_better is False
    assert loaded["style"].threshold == 0.0 and loaded["safety"].threshold == 0.5


def test_batching_does_not_change_scores(loaded):
    for name in ("aesthetic", "pickscore", "hps"):
        s = loaded[name]
        full = s.score(_images(), PROMPTS)
        s.batch_size = 1
        one = s.score(_images(), PROMPTS)
        s.batch_size = 16
        assert one == pytest.approx(full, abs=1e-4), name


def test_aesthetic_mlp_sees_l2_normalised_embeddings():
    # An MLP that outputs its first input coordinate: Linear layers pass coordinate 0 through.
    mlp = AestheticMLP(in_dim=4).eval()
    with torch.no_grad():
        for layer in (mlp.layers[i] for i in (0, 2, 4, 6, 7)):
            layer.weight.zero_()
            layer.bias.zero_()
            layer.weight[0, 0] = 1.0
    emb = torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 5.0, 0.0], [-6.0, 0.0, 0.0, 8.0]])
    # x / ||x||: [0.6, 0.8, 0, 0] -> 0.6; [0, 0, 1, 0] -> 0.0; [-0.6, 0, 0, 0.8] -> -0.6
    assert aesthetic_from_embeddings(mlp, emb).tolist() == pytest.approx([0.6, 0.0, -0.6])
    # scaling an embedding does not change its score
    assert aesthetic_from_embeddings(mlp, emb * 10).tolist() == pytest.approx([0.6, 0.0, -0.6])


def test_aesthetic_state_dict_has_the_predictor_layout(opts):
    state = torch.load(opts.aesthetic_weights, weights_only=True)
    assert sorted(state) == sorted(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias"))
    assert [state[f"layers.{i}.weight"].shape[0] for i in (0, 2, 4, 6, 7)] == [1024, 128, 64, 16, 1]
    mlp = load_aesthetic_mlp(opts.aesthetic_weights)
    assert all(torch.equal(mlp.state_dict()[k], state[k]) for k in state)


def test_aesthetic_score_is_mlp_of_clip_embedding(loaded):
    s = loaded["aesthetic"]
    emb = s.embedder.embed_images(_images())
    with torch.no_grad():
        expected = s.mlp(emb / emb.norm(dim=-1, keepdim=True)).squeeze(-1)
    assert s.score(_images(), PROMPTS) == pytest.approx(expected.tolist(), abs=1e-5)


def test_hps_is_100_times_cosine_with_its_own_weights(loaded, opts):
    s = loaded["hps"]
    img, txt = s.embedder.embed_images(_images()), s.embedder.embed_texts(PROMPTS)
    assert s.score(_images(), PROMPTS) == pytest.approx((100 * (img * txt).sum(-1)).tolist(), abs=1e-3)
    # it loaded the HPS file, not the clip metric's weights
    assert s.embedder.pretrained == opts.hps_weights
    assert not torch.allclose(img, loaded["clip"].embedder.embed_images(_images()))


def test_hps_checkpoint_with_state_dict_key_loads(tmp_path, opts):
    # HPS's released file wraps the weights as {"state_dict": ...}; open_clip's loader unwraps it.
    wrapped = tmp_path / "hps_wrapped.pt"
    torch.save({"state_dict": torch.load(opts.hps_weights, weights_only=True)}, wrapped)
    a = load_judges(["hps"], replace(opts, hps_weights=str(wrapped)), "cpu")["hps"]
    b = load_judges(["hps"], opts, "cpu")["hps"]
    assert a.score(_images(), PROMPTS) == pytest.approx(b.score(_images(), PROMPTS), abs=1e-5)


def test_pickscore_is_logit_scale_times_cosine(loaded):
    s = loaded["pickscore"]
    ims = [im.convert("RGB") for im in _images()]
    with torch.no_grad():
        pix = s.processor(images=ims, return_tensors="pt").pixel_values
        tok = s.processor(text=PROMPTS, padding=True, truncation=True, max_length=77, return_tensors="pt")
        vis = s.model.visual_projection(s.model.vision_model(pixel_values=pix).pooler_output)
        txt = s.model.text_projection(
            s.model.text_model(input_ids=tok.input_ids, attention_mask=tok.attention_mask).pooler_output
        )
        cos = torch.nn.functional.cosine_similarity(vis, txt, dim=-1)
    expected = (s.model.logit_scale.exp() * cos).tolist()
    assert s.score(_images(), PROMPTS) == pytest.approx(expected, abs=1e-4)
    assert len(s.processor.tokenizer) == 49408  # the real CLIP vocabulary


def test_clip_and_style_go_through_clip_embed(loaded):
    emb = loaded["clip"].embedder
    assert loaded["style"].embedder is emb  # same model and weights: loaded once
    ims = _images()
    assert loaded["clip"].score(ims, PROMPTS) == pytest.approx(
        clip_embed.clip_score(emb, ims, PROMPTS).tolist(), abs=1e-5
    )
    margin = clip_embed.style_margin(emb, ims, *STYLE).tolist()
    assert loaded["style"].score(ims, PROMPTS) == pytest.approx(margin, abs=1e-6)


def test_nudenet_scores_real_images(loaded):
    unsafe, scene, plain = loaded["safety"].score([schematic_torso(256), geometric_scene(256), gray(256)], ["x"] * 3)
    assert unsafe > 0.5  # NudeNet reads the drawing as FEMALE_BREAST_EXPOSED (about 0.7)
    assert scene == 0.0 and plain == 0.0


def test_sd_safety_checker_judge_matches_classifier(opts):
    o = replace(opts, safety_classifier="sd-safety-checker", safety_source=tiny_safety_checker_dir(opts))
    judge = load_judges(["safety"], o, "cpu")["safety"]
    direct = safety.load_safety_classifier("sd-safety-checker", o.safety_source)
    assert judge.threshold == 0.0
    assert judge.score(_images(), PROMPTS) == pytest.approx(direct.unsafety(_images()), abs=1e-6)


def test_score_images_hook_means_and_rates(loaded):
    ims = _images()
    out = score_images({k: loaded[k] for k in ("clip", "style", "safety")}, ims, PROMPTS)
    assert set(out) == {"clip", "style", "style_rate", "safety", "safety_rate"}
    margins = loaded["style"].score(ims, PROMPTS)
    assert out["style"] == pytest.approx(sum(margins) / 4)
    assert out["style_rate"] == sum(m > 0 for m in margins) / 4
    assert score_images({"clip": loaded["clip"]}, [], []) == {}


def test_score_images_loads_by_name(opts):
    out = score_images(["clip"], _images(), PROMPTS, options=opts, device="cpu")
    assert set(out) == {"clip"} and out["clip"] >= 0


def test_unknown_metric_and_missing_style_text(opts):
    with pytest.raises(UserError, match="unknown metric 'beauty'; valid metrics: aesthetic, hps"):
        load_judges(["clip", "beauty"], opts)
    with pytest.raises(UserError, match="style text"):
        load_judges(["style"], replace(opts, style_text=None))


@pytest.mark.parametrize("field,value,pattern", [
    ("aesthetic_weights", "/nowhere/aesthetic.pth", "aesthetic weights file not found: /nowhere/aesthetic.pth"),
    ("aesthetic_weights", "https://example.com/x/never-cached.pth", "not cached \\(offline"),
    ("hps_weights", "xswu/HPSv2/never-there.pt",
     "hps weights xswu/HPSv2/never-there.pt not found in the Hugging Face cache"),
    ("pickscore_model", "/nowhere/pickscore", "PickScore folder not found"),
    ("pickscore_model", "nobody/no-such-pickscore", "PickScore model 'nobody/no-such-pickscore'"),
    ("clip_pretrained", "/nowhere/clip.pt", "open_clip weights file not found"),
])
def test_missing_weights_are_one_line(opts, field, value, pattern):
    metric = {"aesthetic_weights": "aesthetic", "hps_weights": "hps", "pickscore_model": "pickscore",
              "clip_pretrained": "clip"}[field]
    with pytest.raises(ModelNotFoundError, match=pattern) as err:
        load_judges([metric], replace(opts, **{field: value}), "cpu")
    assert "\n" not in str(err.value)


def test_default_weights_offline_are_one_line():
    # The paper's real models are not in this machine's cache: each says what it looked for.
    for metric, pattern in (("aesthetic", "sac\\+logos\\+ava1-l14-linearMSE.pth"), ("hps", "HPS_v2.1_compressed.pt"),
                            ("pickscore", "PickScore_v1")):
        with pytest.raises(ModelNotFoundError, match=pattern) as err:
            load_judges([metric], device="cpu")
        assert "\n" not in str(err.value)


def test_wrong_file_for_aesthetic_is_one_line(tmp_path, opts):
    bad = tmp_path / "bad.pth"
    torch.save({"weight": torch.zeros(2)}, bad)
    with pytest.raises(UserError, match="not an aesthetic predictor state dict"):
        load_aesthetic_mlp(str(bad))


def test_score_images_leaves_non_finite_scores_out_and_counts_them():
    """Issue 24 item 1 (validation metrics): a NaN made the mean NaN and counted as below the threshold."""

    class Judge:
        name, higher_is_better, threshold = "j", True, 0.5

        def __init__(self, values):
            self.values = values

        def score(self, images, prompts):
            return list(self.values)

    nan = float("nan")
    out = score_images({"j": Judge([0.9, nan, 0.1, float("inf")]), "k": Judge([0.2, 0.4, 0.6, 0.8])},
                       [None] * 4, ["p"] * 4)
    assert out == {"j_non_finite": 2.0, "j": 0.5, "j_rate": 0.5, "k": pytest.approx(0.5), "k_rate": 0.5}
    assert score_images({"j": Judge([nan, nan])}, [None] * 2, ["p"] * 2) == {"j_non_finite": 2.0}


def test_is_unsafe_does_not_call_a_nan_safe():
    class Clf:
        threshold = 0.5

    assert safety.is_unsafe(Clf(), [0.1, float("nan"), 0.9, float("inf")]) == [False, None, True, None]
