"""The latent reader API the trainer uses: items, batches, refusal of other folders, the pair sampler."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.data.latent_shards import PairSampler, collate, from_storage, open_latents, sample_latents, to_storage
from pipeline.errors import UserError
from stages.cli import app
from tests.helpers import run_cli
from tests.stages.test_precompute import write_pick_file


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("latents")
    write_pick_file(tmp / "pick")
    out = tmp / "latents"
    result = run_cli(app, ["precompute", "--input", tmp / "pick", "--output", out, "--model", "tiny-sdxl",
                           "--resolution", "64", "--flip", "both"])
    assert result.exit_code == 0, result.output
    return out


def test_items_and_batches_have_training_shapes(latents):
    ds = open_latents(latents)
    assert len(ds) == 5 and ds.family == "sdxl" and ds.manifest["latents"]["views"] == 2
    item = ds[2]
    assert item["latents"].shape == (2, 4, 8, 8) and item["latents"].dtype == torch.float16
    assert item["prompt_embeds"].shape == (77, 64) and item["pooled_prompt_embeds"].shape == (32,)
    assert item["add_time_ids"].shape == (6,) and item["add_time_ids"].dtype == torch.float32
    assert isinstance(item["caption_id"], str) and item["flip"] is False
    mirrored = ds.get(1, flip=True)
    assert mirrored["flip"] and torch.equal(mirrored["prompt_embeds"], ds[1]["prompt_embeds"])
    assert not torch.equal(mirrored["latents"], ds[1]["latents"])
    # "a bird": chosen 96 x 72 -> resized 85 x 64, crop left round(10.5) = 10; mirrored: 85 - 10 - 64 = 11.
    assert ds[2]["add_time_ids"].tolist() == [72, 96, 0, 10, 64, 64]
    assert ds.get(2, flip=True)["add_time_ids"].tolist() == [72, 96, 0, 11, 64, 64]
    batch = collate([ds[i] for i in range(3)])
    assert batch["latents"].shape == (3, 2, 4, 8, 8) and batch["add_time_ids"].shape == (3, 6)
    assert batch["caption_id"] == ds.caption_ids[:3]
    with pytest.raises(IndexError):
        ds[5]


def test_storage_round_trip_bf16_and_fp16():
    x = torch.randn(3, 4, 5)
    for dtype, torch_dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        stored = to_storage(x, dtype)
        back = from_storage(np.array(stored), dtype)
        assert back.dtype == torch_dtype and torch.equal(back, x.to(torch_dtype))


def test_sample_latents_matches_distribution():
    mean, logvar = (
        torch.full((20000,), 2.0, dtype=torch.float16), torch.full((20000,), np.log(0.25), dtype=torch.float16)
    )
    s = sample_latents(mean, logvar, torch.Generator().manual_seed(0))
    assert abs(s.mean().item() - 2.0) < 0.02 and abs(s.std().item() - 0.5) < 0.02


def test_open_latents_on_raw_image_shards_says_what_to_run(latents, tmp_path):
    write_pick_file(tmp_path / "raw")
    with pytest.raises(UserError, match="not a latent folder.*run `mapo-data precompute"):
        open_latents(tmp_path / "raw")


def _epoch(sampler):
    return [b for b in sampler]


def test_sampler_seeded_shuffle():
    a, b, c = (PairSampler(100, 8, seed=s) for s in (1, 1, 2))
    ea, eb, ec = _epoch(a), _epoch(b), _epoch(c)
    assert ea == eb and ea != ec
    assert len(ea) == 12 and all(len(x) == 8 for x in ea)
    assert _epoch(a) != ea  # the next epoch is another permutation
    assert a.epoch == 2 and a.position == 0


@pytest.mark.parametrize("drop_last", [True, False])
def test_ranks_disjoint_and_cover_the_epoch(drop_last):
    n, bs, world = 50, 4, 3
    per_rank = [_epoch(PairSampler(n, bs, seed=7, rank=r, world_size=world, drop_last=drop_last)) for r in range(world)]
    assert len({len(p) for p in per_rank}) == 1
    steps = len(per_rank[0])
    assert steps == (4 if drop_last else 5)
    seen = [i for step in range(steps) for r in range(world) for i in per_rank[r][step]]
    order, _ = PairSampler(n, bs, seed=7, world_size=world, drop_last=drop_last).epoch_order(0)
    assert seen == order.tolist()  # rank r holds slice r of every global batch
    if drop_last:
        assert len(set(seen)) == len(seen) == 48
    else:
        assert set(seen) == set(range(n)) and len(seen) == 60  # padded with the epoch's first entries


def test_resume_mid_epoch_equals_uninterrupted():
    straight = PairSampler(30, 4, seed=3, flip=True)
    full = _epoch(straight) + _epoch(straight)
    assert all(isinstance(i, tuple) and isinstance(i[1], bool) for b in full for i in b)
    first = PairSampler(30, 4, seed=3, flip=True)
    it = iter(first)
    got = [next(it) for _ in range(5)]
    state = first.state_dict()
    assert state["epoch"] == 0 and state["position"] == 5
    resumed = PairSampler(30, 4, seed=3, flip=True)
    resumed.load_state_dict(state)
    got += _epoch(resumed) + _epoch(resumed)
    assert got == full
    with pytest.raises(UserError, match="batch_size"):
        PairSampler(30, 5, seed=3, flip=True).load_state_dict(state)


def test_sampler_refuses_too_few_items():
    with pytest.raises(UserError, match="fewer than one global batch"):
        PairSampler(5, 4, world_size=2)
    assert len(PairSampler(5, 4, world_size=2, drop_last=False)) == 1
