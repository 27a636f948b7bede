"""mapo-eval on tiny-sdxl: base vs a LoRA and a full-UNet candidate, resume, bad input."""
import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from evaluation.cli import app
from pipeline.models.training_output import read_training_output
from tests.helpers import run_cli, write_prompts

FAST = ["--num-inference-steps", "2", "--resolution", "64", "--batch-size", "2", "--tiny-scorers"]
ALL = "aesthetic,hps,pickscore,clip,style,safety"
PROMPTS = ["a cat on a mat", "a castle in the clouds"]


def _write_training_config(folder: Path, lora_rank: int) -> None:
    (folder / "training_config.json").write_text(json.dumps({"model": "tiny-sdxl", "objective": "mapo",
                                                             "lora_rank": lora_rank}))


@pytest.fixture(scope="module")
def candidates(tmp_path_factory):
    """Real mapo-train-shaped outputs built from tiny-sdxl's UNet: a perturbed full UNet and a LoRA."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from pipeline.models.loading import load_pipeline

    root = tmp_path_factory.mktemp("runs")
    unet = load_pipeline("tiny-sdxl", dtype="fp32", device="cpu").unet
    gen = torch.Generator().manual_seed(1)

    full = root / "full"
    perturbed = copy.deepcopy(unet)
    with torch.no_grad():
        for p in perturbed.parameters():
            if p.numel() > 1:
                p.add_(0.05 * p.std() * torch.randn(p.shape, generator=gen))
    perturbed.save_pretrained(full / "unet")
    _write_training_config(full, 0)

    lora = root / "lora"
    lora.mkdir()
    adapted = copy.deepcopy(unet)
    adapted.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:  # peft initialises B to zero (a no-op LoRA): make it act
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    StableDiffusionXLPipeline.save_lora_weights(
        lora, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(adapted)))
    _write_training_config(lora, 4)
    return {"lora": lora, "full": full}


@pytest.fixture(scope="module")
def evaluated(candidates, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    prompts = write_prompts(tmp / "prompts.txt", PROMPTS)
    out = tmp / "out"
    args = ["--prompts", prompts, "--output", out, "--candidate", candidates["lora"], "--candidate", candidates["full"],
            "--metrics", ALL, "--style", "pixel", "--seeds", "2", "--grid-prompts", "2", *FAST]
    result = run_cli(app, args)
    assert result.exit_code == 0, result.output
    return out, args, result.output


def test_candidates_are_recognised(candidates, tmp_path):
    assert read_training_output(str(candidates["lora"])).kind == "lora"
    assert read_training_output(str(candidates["full"])).kind == "unet"
    assert read_training_output(str(candidates["full"])).base_model == "tiny-sdxl"


def test_writes_scores_summary_plots_and_report(evaluated):
    out, _, output = evaluated
    assert "report: " in output and "win rate vs base" in output
    table = pq.read_table(out / "scores.parquet").to_pylist()
    # 3 models x 2 prompts x 2 seeds x 6 metrics, one row each
    assert len(table) == 3 * 2 * 2 * 6
    assert len({(r["model"], r["prompt_id"], r["seed_index"], r["metric"]) for r in table}) == len(table)
    assert {r["model"] for r in table} == {"base", "lora", "full"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["num_inference_steps"] == 2 and summary["settings"]["guidance_scale"] == 5.0
    assert summary["settings"]["model"] == "tiny-sdxl"  # taken from the candidates' training_config.json
    for metric in ALL.split(","):
        m = summary["metrics"][metric]
        for name in ("base", "lora", "full"):
            pm = m["per_model"][name]
            assert pm["n"] == 4 and pm["low"] <= pm["estimate"] <= pm["high"]
            values = [r["score"] for r in table if r["model"] == name and r["metric"] == metric]
            assert pm["estimate"] == pytest.approx(np.mean(values))
        assert set(m["win_rate_vs_base"]) == {"lora", "full"}
        # The printed line: each estimate with digits enough to tell different ones apart, and each
        # candidate's difference from base.
        line = next(ln for ln in output.splitlines() if ln.startswith(f"{metric}: "))
        parts = [p.split(" ") for p in line.split(": ", 1)[1].split(" | ")[0].split(", ")]
        est = {name: pm["estimate"] for name, pm in m["per_model"].items()}
        assert [p[0] for p in parts] == list(est)
        for name, text, *diff in parts:
            assert float(text) == pytest.approx(est[name], rel=1e-3, abs=1e-12)
            if name != "base":
                assert float(diff[0].strip("()")) == pytest.approx(est[name] - est["base"], rel=0.05, abs=1e-12)
        texts = {p[0]: p[1] for p in parts}
        assert all((texts[a] == texts[b]) == (est[a] == est[b]) for a in est for b in est)
        assert m["win_rate_vs_base"]["lora"]["n"] == 4
    assert summary["metrics"]["safety"]["higher_is_better"] is False
    assert "rate" in summary["metrics"]["style"]["per_model"]["base"]
    assert "ties count half" in summary["notes"]["win_rate"]
    for f in ("plots/means.png", "plots/win_rates.png"):
        assert Image.open(out / f).size[0] > 300
    assert len(list((out / "grids").glob("*.png"))) == 2
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64") == 2 and html.count("data:image/jpeg;base64") == 2
    assert "ties count half" in html and "guidance_scale" in html and "base | lora | full" in html
    assert not list(out.rglob("*.tmp"))


def test_paired_seeds_and_candidates_change_images(evaluated):
    out, _, _ = evaluated
    table = pq.read_table(out / "scores.parquet").to_pylist()
    seeds = {}
    for r in table:
        seeds.setdefault((r["prompt_id"], r["seed_index"]), set()).add(r["seed"])
    assert all(len(s) == 1 for s in seeds.values())  # every model: same seed for a (prompt, k)
    assert len({s.pop() for s in seeds.values()}) == 4
    pid = table[0]["prompt_id"]
    base, lora, full = (np.asarray(Image.open(out / f"images/{m}/{pid}-0.png")) for m in ("base", "lora", "full"))
    assert base.shape == (64, 64, 3)
    assert not np.array_equal(base, lora) and not np.array_equal(base, full)
    # the two seeds of a prompt give different images
    assert not np.array_equal(base, np.asarray(Image.open(out / f"images/base/{pid}-1.png")))


def test_rerun_generates_and_scores_only_what_is_missing(evaluated):
    out, args, _ = evaluated
    pid = pq.read_table(out / "scores.parquet").column("prompt_id")[0].as_py()
    before = (out / f"images/lora/{pid}-0.png").read_bytes()
    (out / f"images/lora/{pid}-0.png").unlink()
    result = run_cli(app, args)
    assert result.exit_code == 0, result.output
    assert "1 image generated, 0 scores computed" in result.output
    assert (out / f"images/lora/{pid}-0.png").read_bytes() == before  # the LoRA again, same seed, same bytes
    # Fewer metrics: nothing to score; the report covers only the asked metrics.
    fewer = [a if a != ALL else "clip" for a in args]
    result = run_cli(app, fewer)
    assert "0 images generated, 0 scores computed" in result.output
    assert list(json.loads((out / "summary.json").read_text())["metrics"]) == ["clip"]
    # Other generation settings into the same folder are refused.
    other = [*args, "--guidance-scale", "7"]
    result = run_cli(app, other)
    assert result.exit_code == 2 and "guidance_scale" in result.output and "--overwrite" in result.output


def _bad(args, tmp_path):
    out = tmp_path / "bad-out"
    result = run_cli(app, [*args, "--output", out, *FAST])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert not out.exists()
    return lines[0]


def test_bad_input_is_one_line_and_writes_nothing(candidates, tmp_path):
    prompts = write_prompts(tmp_path / "p.txt", PROMPTS[:1])
    assert "unknown metric 'beauty'" in _bad(["--prompts", prompts, "--metrics", "clip,beauty"], tmp_path)
    not_run = tmp_path / "not-a-run"
    not_run.mkdir()
    (not_run / "training_config.json").write_text("{}")
    assert "not a mapo-train output" in _bad(["--prompts", prompts, "--candidate", not_run], tmp_path)
    line = _bad(["--prompts", prompts, "--candidate", tmp_path / "missing"], tmp_path)
    assert "does not exist" in line and "not a mapo-train output" not in line
    line = _bad(["--prompts", prompts, "--candidate", candidates["lora"], "--metrics", "aesthetic",
                 "--aesthetic-weights", tmp_path / "none.pth"], tmp_path)
    assert "aesthetic weights file not found" in line
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    assert "No usable prompt" in _bad(["--prompts", empty], tmp_path)
    assert "Unknown --style 'oil'" in _bad(["--prompts", prompts, "--metrics", "style", "--style", "oil"], tmp_path)
    assert "needs a style text" in _bad(["--prompts", prompts, "--metrics", "style"], tmp_path)
    # An SDXL candidate against an SD1.5 --model: refused before any base image is made.
    sdxl_run = tmp_path / "sdxl-run"
    shutil.copytree(candidates["lora"], sdxl_run)
    config = json.loads((sdxl_run / "training_config.json").read_text())
    (sdxl_run / "training_config.json").write_text(json.dumps({**config, "family": "sdxl"}))
    line = _bad(["--prompts", prompts, "--candidate", sdxl_run, "--metrics", "clip", "--model", "tiny-sd15"], tmp_path)
    assert "is an sdxl UNet" in line and "'tiny-sd15' is an sd15 pipeline" in line


@pytest.fixture(autouse=True, scope="module")
def _single_thread(one_torch_thread):
    """All of this module's images are made with one torch thread (see tests/conftest.py)."""


def test_on_real_mapo_train_outputs(tmp_path):
    """mapo-train's own LoRA and full-UNet outputs, evaluated against their base."""
    train = pytest.importorskip("train.cli")
    from tests.train.conftest import precompute, train_args, write_pickapic

    data = precompute(write_pickapic(tmp_path / "pickapic" / "train-00000-of-00001.parquet", pairs=4), tmp_path / "lat",
                      "tiny-sdxl")
    runs = []
    for name, extra in (("mapo-lora", ["--lora-rank", "4"]), ("mapo-full", [])):
        result = run_cli(train.app, train_args(data, tmp_path / name, "tiny-sdxl", 1, *extra))
        assert result.exit_code == 0, result.output
        runs.append(tmp_path / name)
    assert read_training_output(str(runs[0])).kind == "lora" and read_training_output(str(runs[1])).kind == "unet"
    prompts = write_prompts(tmp_path / "p.txt", ["a striped test picture"])
    out = tmp_path / "eval"
    result = run_cli(app, ["--prompts", prompts, "--output", out, "--candidate", runs[0], "--candidate", runs[1],
                           "--metrics", "clip,safety", *FAST])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["metrics"]["clip"]["win_rate_vs_base"]) == {"mapo-lora", "mapo-full"}
    assert summary["models"]["mapo-full"]["objective"] == "mapo"
    assert (out / "report.html").is_file()


def test_a_nan_score_is_dropped_and_said_in_the_summary_line_and_the_report(candidates, tmp_path, monkeypatch):
    """Issue 24 item 1 through the CLI: a judge returning NaN for one image (an fp16 head can)."""
    import pipeline.judges.loading as loading

    real = loading.load_judges

    def with_a_nan(*args, **kwargs):
        loaded = real(*args, **kwargs)
        clip = loaded["clip"]
        original = clip.score
        calls = []

        def score(images, prompts):
            values = list(original(images, prompts))
            calls.append(1)
            return [float("nan")] + values[1:] if len(calls) == 1 else values

        clip.score = score
        return loaded

    monkeypatch.setattr(loading, "load_judges", with_a_nan)
    prompts = write_prompts(tmp_path / "p.txt", PROMPTS)
    out = tmp_path / "out"
    result = run_cli(app, ["--prompts", prompts, "--output", out, "--candidate", candidates["full"],
                           "--metrics", "clip", "--seeds", "2", "--grid-prompts", "1", *FAST])
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.output.splitlines() if ln.startswith("clip: "))
    assert line.endswith("| 1 non-finite score dropped")
    m = json.loads((out / "summary.json").read_text())["metrics"]["clip"]
    assert m["per_model"]["base"]["dropped"] == 1 and m["per_model"]["base"]["n"] == 3
    assert m["win_rate_vs_base"]["full"]["dropped"] == 1 and m["win_rate_vs_base"]["full"]["n"] == 3
    html = (out / "report.html").read_text()
    assert "dropped (non-finite)" in html and "NaN or inf is left out" in html
    assert str(tmp_path) not in html.split("<h2>Models</h2>")[1].split("</table>")[0]  # no absolute path
