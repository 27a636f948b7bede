"""FSDP2 and DDP on 2 CPU processes (gloo), launched as users launch them: `accelerate launch --use_fsdp
--fsdp_version 2` and `accelerate launch --multi_gpu`.

accelerate would run plain DDP here (it enables FSDP on accelerators only); train/sharding.py switches its state
to FSDP2, so these runs take accelerate's FSDP2 code paths: sharded weights, gradients, optimizer state and
checkpoints, and a gathered UNet at the end.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import time

import pytest
import torch

from tests.helpers import ACCELERATE_LAUNCH, BIN, run_cli
from tests.train.conftest import train_args
from train.cli import app

FSDP2 = ("--use_fsdp", "--fsdp_version", "2")
DDP = ("--multi_gpu",)
# 2 micro-batches of 1 pair per process and step (4 pairs a step, 8 pairs: an epoch spans 2 steps), clipped:
# accumulation and clipping go through FSDP2's sharded gradients. (Later flags win over train_args' --batch-size 2.)
ARGS = ("--batch-size", "1", "--gradient-accumulation-steps", "2", "--max-grad-norm", "0.05",
        "--checkpointing-steps", "2", "--debug-weight-checksums")
STEPS = 4
# FSDP2 vs DDP after 4 AdamW steps at lr 1e-3 (each weight moves by up to ~4e-3): the engines sum gradients in
# another order (reduce-scatter of shards vs all-reduce of buckets), so weights differ in float32's last bits and
# Adam's normalisation carries that on. Measured on these 4 steps: max |diff| 4.7e-5, while the weights moved by up
# to 4.0e-3 from the base; a wrong engine (a missing reduction, a shard updated twice) is off by ~1e-3.
ATOL = 2e-4


def _env():
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}


def _launch_cmd(engine: tuple, args) -> list[str]:
    return [*ACCELERATE_LAUNCH, *engine, "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
            str(BIN / "mapo-train"), *map(str, args)]


def _launch(engine: tuple, args, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(_launch_cmd(engine, args), capture_output=True, text=True, timeout=timeout, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _unet(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def straight(tmp_path_factory, latents_sdxl):
    """An uninterrupted FSDP2 run of STEPS steps; (output folder, stdout)."""
    out = tmp_path_factory.mktemp("fsdp") / "straight"
    proc = _launch(FSDP2, train_args(latents_sdxl, out, "tiny-sdxl", STEPS, *ARGS))
    return out, proc.stdout


@pytest.fixture(scope="module")
def ddp(tmp_path_factory, latents_sdxl):
    """The same run under DDP (`accelerate launch --multi_gpu`); (output folder, stdout)."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    proc = _launch(DDP, train_args(latents_sdxl, out, "tiny-sdxl", STEPS, *ARGS))
    return out, proc.stdout


def test_ddp_splits_the_data_and_keeps_identical_weights(ddp):
    """Two processes under DDP: each rank sees its own half of every step's pairs (disjoint), an epoch (2 steps of
    4 pairs) covers every pair once, and both ranks hold the same weights after every step."""
    out, stdout = ddp
    assert "engine ddp on 2 processes" in stdout
    config = json.loads((out / "training_config.json").read_text())
    assert config["distributed"] == {"engine": "ddp", "num_processes": 2}
    assert config["world_size"] == 2 and config["pairs_per_step"] == 4  # 2 processes x 2 micro-batches x 1 pair
    ranks = [[json.loads(line) for line in (out / "debug" / f"weights-rank{r}.jsonl").read_text().splitlines()]
             for r in (0, 1)]
    assert [row["step"] for row in ranks[0]] == [row["step"] for row in ranks[1]] == list(range(1, STEPS + 1))
    seen = []
    for r0, r1 in zip(*ranks):
        assert r0["checksum"] == r1["checksum"]  # identical weights after every step
        assert len(r0["indices"]) == len(r1["indices"]) == 2 and not set(r0["indices"]) & set(r1["indices"])
        seen += r0["indices"] + r1["indices"]
    assert sorted(seen[:8]) == list(range(8)) and sorted(seen[8:]) == list(range(8))  # each epoch: every pair once
    assert len({row["checksum"] for row in ranks[0]}) == STEPS  # and they change
    assert (out / "unet").exists()


def test_fsdp2_shards_records_its_engine_and_trains_like_ddp(straight, ddp):
    from diffusers import UNet2DConditionModel

    out, stdout = straight
    config = json.loads((out / "training_config.json").read_text())
    assert config["distributed"] == {"engine": "fsdp2", "num_processes": 2}
    assert "engine fsdp2 on 2 processes" in stdout
    # Really sharded: each process wrote its own part of the weights (torch.distributed.checkpoint), about half.
    model_dir = out / "checkpoints" / "checkpoint-2" / "pytorch_model_fsdp_0"
    parts = sorted(p.stat().st_size for p in model_dir.glob("*.distcp"))
    assert len(parts) == 2 and parts[0] > 0.3 * sum(parts), parts
    assert not (out / "checkpoints" / "checkpoint-2" / "model.safetensors").exists()
    # The same full weights on both processes after every step (each gathered for the checksum).
    ranks = [[json.loads(line) for line in (out / "debug" / f"weights-rank{r}.jsonl").read_text().splitlines()]
             for r in (0, 1)]
    assert [r["checksum"] for r in ranks[0]] == [r["checksum"] for r in ranks[1]]
    assert len({r["checksum"] for r in ranks[0]}) == STEPS  # and they change

    a, b = _unet(out), _unet(ddp[0])
    assert a.keys() == b.keys()
    from train.model_setup import load_base_unet_and_scheduler

    base = load_base_unet_and_scheduler("tiny-sdxl")[0].state_dict()
    moved = max((b[k] - base[k]).abs().max().item() for k in b)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert moved > 10 * ATOL and diff < ATOL, (moved, diff)
    # The final UNet is a normal diffusers folder, gathered from the shards.
    loaded = UNet2DConditionModel.from_pretrained(out / "unet")
    assert all(torch.equal(loaded.state_dict()[k], a[k]) for k in a)


def _kill_tree(proc) -> None:
    """SIGKILL the launcher and both ranks (torch's elastic agent starts each rank in its own session, so killing
    the launcher's process group would leave them running)."""
    import psutil  # accelerate's dependency

    launcher = psutil.Process(proc.pid)
    tree = [*launcher.children(recursive=True), launcher]
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    proc.wait()
    psutil.wait_procs(tree, timeout=30)


def test_fsdp2_killed_then_resumed_equals_uninterrupted(straight, latents_sdxl, tmp_path):
    out = tmp_path / "run"
    args = train_args(latents_sdxl, out, "tiny-sdxl", STEPS, *ARGS)
    proc = subprocess.Popen(_launch_cmd(FSDP2, args), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = out / "checkpoints" / "checkpoint-2"
    deadline = time.time() + 240
    while time.time() < deadline and not first.exists() and proc.poll() is None:
        time.sleep(0.02)
    _kill_tree(proc)
    assert first.exists() and not (out / "unet").exists()
    resumed = _launch(FSDP2, [*args, "--resume-from-checkpoint", "latest"])
    assert f"(2 -> {STEPS})" in resumed.stdout, resumed.stdout
    a, b = _unet(straight[0]), _unet(out)
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit: same engine, same shards, same order

    def rows(folder):
        return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]

    drop = ("pairs_per_s", "peak_mem_gb")
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows(out)] == \
        [{k: v for k, v in r.items() if k not in drop} for r in rows(straight[0])]


def test_a_run_is_resumed_by_the_engine_that_wrote_its_checkpoints(straight, latents_sdxl, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(straight[0], out)
    proc = subprocess.run(_launch_cmd(DDP, train_args(latents_sdxl, out, "tiny-sdxl", STEPS + 1, *ARGS,
                                                      "--resume-from-checkpoint", "latest")),
                          capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode != 0
    assert "error: Cannot resume" in proc.stdout + proc.stderr
    assert "written by fsdp2 and this launch runs ddp" in proc.stdout + proc.stderr


@pytest.mark.parametrize("objective", ["dpo", "kto"])
def test_reference_objectives_under_fsdp2_with_bf16_checkpointing_and_validation(tmp_path, latents_sd15, objective):
    """The reference UNet is sharded like the policy: at step 1 both compute the same errors (DPO's loss is ln 2)."""
    out = tmp_path / objective
    validation = ("--validation-prompts", "a red square", "--validation-seeds", "1", "--validation-steps", "1")
    _launch(FSDP2, train_args(latents_sd15, out, "tiny-sd15", 2, "--objective", objective, "--batch-size", "1",
                              "--mixed-precision", "bf16", "--gradient-checkpointing",
                              *(validation if objective == "dpo" else ())))
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    if objective == "dpo":
        assert math.isclose(first["loss"], math.log(2), rel_tol=1e-6), first
        assert sorted(p.name for p in (out / "validation").iterdir()) == [
            "before_after.png", "step-000000.png", "step-000001.png", "step-000002.png"]
    else:
        assert first["e"] == first["ref_e"], first
    assert json.loads((out / "training_config.json").read_text())["distributed"]["engine"] == "fsdp2"
    from diffusers import UNet2DConditionModel

    UNet2DConditionModel.from_pretrained(out / "unet")


def _fsdp_env(monkeypatch, version="2", processes="2"):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", version)
    monkeypatch.setenv("WORLD_SIZE", processes)


def _one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.mark.parametrize("extra,message", [
    (("--lora-rank", "2"), "LoRA under FSDP2 is not supported"),
    (("--optimizer-in-backward",), "--optimizer-in-backward steps whole weights"),
    (("--master-weights", "bf16", "--mixed-precision", "bf16"), "--master-weights bf16 (BF16AdamW)"),
    (("--use-8bit-adam",), "--use-8bit-adam (bitsandbytes) is not tested"),
    (("--compile",), "--compile is not supported under FSDP2"),
])
def test_options_that_cannot_shard_are_refused_in_one_line(tmp_path, latents_sdxl, monkeypatch, extra, message):
    _fsdp_env(monkeypatch)
    out = tmp_path / "run"
    line = _one_error_line(run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", 2, *extra)))
    assert message in line
    assert not out.exists()  # refused before the output folder is made


@pytest.mark.parametrize("env,message", [
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, "does not support DeepSpeed"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "WORLD_SIZE": "2"}, "FSDP version 1 is not supported"),
    ({"ACCELERATE_USE_FSDP": "true", "WORLD_SIZE": "2"}, "FSDP version 1 is not supported"),  # accelerate's default
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "WORLD_SIZE": "1"}, "this launch has one"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "WORLD_SIZE": "2", "FSDP_ACTIVATION_CHECKPOINTING": "true"},
     "use mapo-train's --gradient-checkpointing"),
])
def test_engines_that_cannot_be_honoured_are_refused_in_one_line(tmp_path, latents_sdxl, monkeypatch, env, message):
    """What `accelerate launch --use_deepspeed` / `--use_fsdp` set: refused, never run as another engine. (Without
    DeepSpeed installed accelerate's launcher stops first; the variable is what it sets when it is.)"""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "run"
    line = _one_error_line(run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", 2)))
    assert message in line
    if "DeepSpeed" in message:
        assert "--use_fsdp --fsdp_version 2" in line
    assert not out.exists()


def test_a_resume_with_another_engine_is_refused_before_any_model_loads(tmp_path, latents_sdxl, monkeypatch):
    """A run FSDP2 wrote, resumed by one process: refused from the recorded config, before setup_models (which
    takes minutes on SDXL) would run."""
    import train.trainer

    out = tmp_path / "run"
    (out / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (out / "training_config.json").write_text(json.dumps({"distributed": {"engine": "fsdp2", "num_processes": 2}}))

    def no_models(*args, **kwargs):
        raise AssertionError("models were loaded before the engine check")

    monkeypatch.setattr(train.trainer, "setup_models", no_models)
    result = run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", 4, "--resume-from-checkpoint", "latest"))
    assert result.exit_code != 0
    assert "written by fsdp2 and this launch runs single" in result.output, result.output


def test_one_process_records_the_single_engine(tmp_path, latents_sdxl):
    out = tmp_path / "run"
    result = run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", 1))
    assert result.exit_code == 0 and "engine single on 1 process" in result.output, result.output
    config = json.loads((out / "training_config.json").read_text())
    assert config["distributed"] == {"engine": "single", "num_processes": 1}


def test_fsdp2_passes_forward_inputs_as_ddp_does(tmp_path):
    """A flow model's timestep (1000 sigma, fp32) reaches the sharded model exact, as under DDP: FSDP2's default
    policy casts every floating input to bf16 (411.47 -> 412.0). One process on gloo: fully_shard runs there too."""
    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from train.sharding import policy_as_ddp

    class Seen(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)
            self.inputs = []

        def forward(self, x, timestep):
            self.inputs.append(timestep)
            return self.lin(x.to(self.lin.weight.dtype)) * 0 + timestep.to(self.lin.weight.dtype)

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        seen = {}
        accelerate_default = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16)
        for name, policy in (("default", accelerate_default), ("as_ddp", policy_as_ddp(accelerate_default))):
            model = fully_shard(Seen(), mp_policy=policy)
            model(torch.ones(1, 2), torch.tensor([411.47]))
            seen[name] = model.inputs[0]
        assert policy_as_ddp(accelerate_default).reduce_dtype == torch.float32
        assert seen["default"].dtype == torch.bfloat16 and seen["default"].item() == 412.0  # the fault, shown
        assert seen["as_ddp"].dtype == torch.float32 and seen["as_ddp"].item() == pytest.approx(411.47)
    finally:
        dist.destroy_process_group()
