"""Precomputed latent shards (``mapo-data precompute`` output): format, reader, model check, sampler.

Layout of a precompute output (shard k = input shard k)::

    manifest.json                                ShardedOutput manifest; ``manifest["latents"]`` holds
                                                 the model description (see ``describe_models``)
    data/train-KKKKK-of-NNNNN.parquet            one row per pair (pair_id, caption_id, time ids, ...);
                                                 written LAST: its presence marks the shard complete
    data/train-KKKKK-of-NNNNN.latents.npy        [n, V, 2, C, h, w]  V views (1, or 2 with --flip both:
                                                 0 = as is, 1 = mirrored), 2 = (chosen, rejected);
                                                 [n, V, 1, C, h, w] for unpaired examples (see below)
    data/train-KKKKK-of-NNNNN.logvar.npy         same shape, only with --latent-stats
    data/train-KKKKK-of-NNNNN.captions.json      {"caption_ids": [...], "captions": [...]}: row j of
    data/train-KKKKK-of-NNNNN.prompt_embeds.npy  [m, 77, D] and of
    data/train-KKKKK-of-NNNNN.pooled.npy         [m, P] (SDXL) belongs to caption j
    rejects/train-KKKKK-of-NNNNN.parquet         rows not turned into pairs, with a reason

Unpaired examples (``manifest["latents"]["shape"] == "unpaired"``, Diffusion-KTO's data: one image
and a desirable / undesirable label per row): the table has ``example_id`` instead of ``pair_id``,
``label`` (int64, 1 desirable, 0 undesirable) instead of chosen / label_0 / label_1, and the arrays
hold one image per row. Outputs without ``shape`` are pairs.

Why ``.npy`` beside a small Parquet table: a training step wants ONE random pair. ``np.load(...,
mmap_mode="r")`` gives O(1) random access to exactly that pair's bytes (the OS pages them in), and
``torch.from_numpy`` wraps the copied slice without another copy; a Parquet row group would have to
be decoded whole for one row. The metadata stays in Parquet (readable with pyarrow / datasets).
Arrays are little-endian fp16, or bf16 stored as raw uint16 bits (numpy has no bf16) and viewed as
``torch.bfloat16`` on read. Latents are already multiplied by the VAE's ``scaling_factor`` (after
subtracting ``shift_factor`` when the VAE has one): feed them to the UNet's noising as they are.
With ``--latent-stats`` the log-variance of the SCALED latent is kept too, so
``sample_latents(mean, logvar)`` draws what ``latent_dist.sample() * scaling_factor`` would.
Each distinct caption is stored once in the whole output (in the first input shard that uses it).
Size: 2 x C x h x w x 2 bytes per pair (256 KiB at 1024 px for SDXL's 4 x 128 x 128), doubled by
``--flip both`` and again by ``--latent-stats``.

Stable API (the trainer imports it)::

    ds = open_latents(root)              # UserError unless root is a complete precompute output
    ds.manifest, ds.family, len(ds)      # family: "sdxl" | "sd15" | "sd3"; len: pairs (or examples)
    ds.unpaired, ds.labels               # unpaired examples? their labels (list of 0/1; None for pairs)
    item = ds[i]  /  ds[(i, True)]  /  ds.get(i, flip=True)
        "latents"        [2, C, h, w] storage dtype, chosen first (mirrored view when flip);
                         [1, C, h, w] for unpaired examples, which also carry "label" (int64 scalar:
                         1 desirable, 0 undesirable) and "example_id" instead of "pair_id"
        "latents_logvar" [2, C, h, w] only with --latent-stats
        "prompt_embeds"  [77, D] storage dtype
        "pooled_prompt_embeds" [P] (SDXL, SD3) and "add_time_ids" [6] float32 (SDXL only)
        "caption_id", "pair_id": str; "flip": bool; "index": int
    check_model(ds, vae=vae, text_encoders=[te1, te2])   # UserError when made by another model
    sampler = PairSampler(len(ds), batch_size, seed, rank, world_size, drop_last=True, flip=False)
    for indices in sampler: batch = collate([ds[i] for i in indices])
    sampler.state_dict() / sampler.load_state_dict(state)   # resume mid-epoch

Model check: the VAE and text encoders are compared WITHOUT running them. Precision changes a
weight's last bits (a model loaded in fp16 is not bit-equal to the same model in fp32), so an exact
hash cannot be the test. Each component gets a config hash (dtype keys ignored) and a signature:
for each of ``SIGNATURE_CHUNKS`` consecutive groups of tensors (sorted by name), the summed mean
|w| and root-mean-square of w, in fp64. Rounding to fp16/bf16 moves these by < 1e-4 relative;
another model (or another VAE such as the fp16-fix one) moves them far more. ``check_model``
accepts when configs match and every signature value is within ``SIGNATURE_RTOL``. The exact
``pipeline.models.loading.weights_fingerprint`` and the dtype it was taken in are recorded as well, for
the record. The trainer can load the VAE / text encoders on the CPU (they never need to run).
"""
from __future__ import annotations

import bisect
import hashlib
import json
from pathlib import Path

from pipeline.data.atomic import atomic_write
from pipeline.data.shards import DATA_DIR, read_manifest, shard_name
from pipeline.errors import UserError
from pipeline.families import get_family

FORMAT = "mapo-latents"
FORMAT_VERSION = 1
STAGE = "precompute"
STORAGE_DTYPES = ("fp16", "bf16")
SIGNATURE_CHUNKS = 32
SIGNATURE_RTOL = 2e-3


# -- format helpers (the writer in stages/precompute/ and the reader share these) ------------
def sidecar(root: str | Path, k: int, num_shards: int, kind: str) -> Path:
    """Path of shard k's array / caption file of ``kind`` (latents, logvar, prompt_embeds, pooled, captions)."""
    suffix = "json" if kind == "captions" else "npy"
    return Path(root) / DATA_DIR / f"{shard_name(k, num_shards)}.{kind}.{suffix}"


def finite_in_storage(tensor, storage_dtype: str):
    """``[B, ...]`` float tensor -> ``[B]`` bool: is every value of row b still finite once cast to
    the storage dtype? (A latent finite in fp32 can exceed fp16's 65504 and be stored as inf.)"""
    import torch

    if storage_dtype not in STORAGE_DTYPES:
        raise UserError(f"Unknown storage dtype '{storage_dtype}'; choose one of {', '.join(STORAGE_DTYPES)}.")
    cast = tensor.detach().to(torch.float16 if storage_dtype == "fp16" else torch.bfloat16)
    return torch.isfinite(cast).flatten(1).all(1)


def to_storage(tensor, storage_dtype: str):
    """Torch tensor -> numpy array in the storage format (fp16, or bf16 bits as uint16)."""
    import torch

    if storage_dtype == "fp16":
        return tensor.detach().to("cpu", torch.float16).numpy()
    if storage_dtype == "bf16":
        return tensor.detach().to("cpu", torch.bfloat16).view(torch.int16).numpy().view("<u2")
    raise UserError(f"Unknown storage dtype '{storage_dtype}'; choose one of {', '.join(STORAGE_DTYPES)}.")


def from_storage(array, storage_dtype: str):
    """Numpy array (owned, not a memmap view) -> torch tensor sharing its memory."""
    import torch

    if storage_dtype == "bf16":
        return torch.from_numpy(array.view("<i2")).view(torch.bfloat16)
    return torch.from_numpy(array)


def save_array_atomic(path: Path, array) -> None:
    """np.save under a temporary name (``.<name>.tmp-<pid>``, swept by ShardedOutput), then rename."""
    import numpy as np

    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)


# -- model description and check -------------------------------------------------------------
_DTYPE_KEYS = ("torch_dtype", "dtype", "transformers_version", "_diffusers_version", "diffusers_version")


def _config_hash(module) -> str:
    config = getattr(module, "config", None)
    as_dict = {} if config is None else (config.to_dict() if hasattr(config, "to_dict") else dict(config))
    as_dict = {k: v for k, v in as_dict.items() if not k.startswith("_") and k not in _DTYPE_KEYS}
    return hashlib.sha256(json.dumps(as_dict, sort_keys=True, default=str).encode()).hexdigest()[:16]


def weights_signature(module) -> list[float]:
    """Precision-tolerant summary of a module's weights (see the module docstring)."""
    import torch

    items = sorted(module.state_dict().items())
    chunks = [[0.0, 0.0] for _ in range(min(SIGNATURE_CHUNKS, max(len(items), 1)))]
    with torch.no_grad():
        for i, (_, tensor) in enumerate(items):
            t = tensor.detach().double()
            c = chunks[i * len(chunks) // len(items)]
            c[0] += t.abs().mean().item() if t.numel() else 0.0
            c[1] += t.square().mean().sqrt().item() if t.numel() else 0.0
    return [float(f"{v:.8g}") for pair in chunks for v in pair]


def describe_component(module) -> dict:
    from pipeline.models.loading import dtype_name, weights_fingerprint

    params = list(module.parameters())
    return {
        "name": str(getattr(getattr(module, "config", None), "_name_or_path", "") or type(module).__name__),
        "class": type(module).__name__,
        "config_hash": _config_hash(module),
        "signature": weights_signature(module),
        "weights_fingerprint": weights_fingerprint(module),
        "fingerprint_dtype": dtype_name(params[0].dtype) if params else None,
    }


def describe_models(vae, text_encoders) -> dict:
    return {"vae": describe_component(vae), "text_encoders": [describe_component(te) for te in text_encoders]}


def _same_component(recorded: dict, module) -> bool:
    if recorded.get("config_hash") != _config_hash(module):
        return False
    mine = weights_signature(module)
    theirs = recorded.get("signature") or []
    return len(mine) == len(theirs) and all(
        abs(a - b) <= SIGNATURE_RTOL * max(abs(a), abs(b)) + 1e-8 for a, b in zip(mine, theirs)
    )


def check_model(source, *, vae=None, text_encoders=None) -> None:
    """Refuse (UserError) latents made by another VAE or other text encoders than those given.

    ``source``: a LatentDataset, a manifest dict or a precompute folder. Pass the modules the
    trainer would use (load them on the CPU: they are only read, never run); ``None`` skips one.
    """
    manifest = source.manifest if isinstance(source, LatentDataset) else source
    if not isinstance(manifest, dict):
        manifest = _read_latent_manifest(Path(manifest))
    info = manifest["latents"]
    recorded = info["components"]
    made_by = f"model '{info['model']}'" + (f" with VAE '{info['vae']}'" if info.get("vae") else "")
    if text_encoders is not None:
        text_encoders = [te for te in text_encoders if te is not None]
        if len(text_encoders) != len(recorded["text_encoders"]):
            raise UserError(
                f"The latents were made by {made_by} ({info['family']}, "
                f"{len(recorded['text_encoders'])} text encoder(s)); "
                f"the model given has {len(text_encoders)}. Train with the model the latents were made with, or rerun "
                "`mapo-data precompute` with this model."
            )
        for i, (rec, te) in enumerate(zip(recorded["text_encoders"], text_encoders)):
            if not _same_component(rec, te):
                _refuse(f"text encoder {i + 1}", rec, te, made_by)
    if vae is not None and not _same_component(recorded["vae"], vae):
        _refuse("VAE", recorded["vae"], vae, made_by)


def _refuse(what: str, recorded: dict, module, made_by: str):
    given = getattr(getattr(module, "config", None), "_name_or_path", "") or type(module).__name__
    raise UserError(
        f"The latents were made by {made_by}, whose {what} ('{recorded['name']}') differs from the {what} "
        f"of the model given ('{given}'). Train with the model the latents were made with, or rerun "
        "`mapo-data precompute` with this model into a new --output."
    )


# -- reader ----------------------------------------------------------------------------------
def _read_latent_manifest(root: Path) -> dict:
    if not root.exists():
        raise UserError(
            f"Latent folder '{root}' does not exist; make it with `mapo-data precompute --input PAIRS --output {root}`."
        )
    manifest = read_manifest(root)
    if manifest is not None and manifest.get("stage") == STAGE and "latents" not in manifest:
        raise UserError(
            f"'{root}' is an unfinished `mapo-data precompute` output; rerun the same command to finish it."
        )
    if manifest is not None and manifest.get("stage") == "generate":
        raise UserError(f"'{root}' is a `mapo-data generate` output (pairs without labels); label it first "
                        f"(`mapo-data label --input {root} --output LABELED/ --target style|safety`), then run "
                        "`mapo-data precompute --input LABELED/ --output LATENTS/` and pass LATENTS/.")
    if manifest is None or manifest.get("stage") != STAGE or "latents" not in manifest:
        what = (
            f"a `mapo-data {manifest['stage']}` output"
            if manifest and manifest.get("stage")
            else "not a mapo-data output"
        )
        raise UserError(
            f"'{root}' is not a latent folder ({what}); run `mapo-data precompute --input {root} --output LATENTS/` "
            "first and pass LATENTS/ instead."
        )
    if manifest["latents"].get("format_version") != FORMAT_VERSION:
        raise UserError(f"'{root}' has latent format version {manifest['latents'].get('format_version')}, "
                        f"this reader reads version {FORMAT_VERSION}; rerun `mapo-data precompute`.")
    return manifest


def latents_model(root: str | Path) -> str:
    """The base model a precompute output was made with (its manifest's ``latents.model``).

    Raises:
        UserError: ``root`` is not a precompute output.
    """
    return _read_latent_manifest(Path(root))["latents"]["model"]


def open_latents(root: str | Path, allow_partial: bool = False) -> "LatentDataset":
    """Open a precompute output for reading (raises UserError with what to run otherwise)."""
    root = Path(root)
    manifest = _read_latent_manifest(root)
    if manifest.get("status") != "complete" and not allow_partial:
        done, total = len(manifest.get("completed_shards", [])), manifest.get("num_shards")
        raise UserError(
            f"'{root}' is incomplete ({done} of {total} shards); rerun the same `mapo-data precompute` command to "
            "finish it."
        )
    return LatentDataset(root, manifest)


class LatentDataset:
    """Map-style dataset over all pairs of a precompute output (arrays memory-mapped lazily)."""

    def __init__(self, root: Path, manifest: dict):
        import numpy as np
        import pyarrow.parquet as pq

        self.root = Path(root)
        self.manifest = manifest
        self.info = manifest["latents"]
        self.family = self.info["family"]
        self.storage_dtype = self.info["storage_dtype"]
        self.has_flips = self.info["views"] == 2
        self.has_logvar = bool(self.info["latent_stats"])
        self.unpaired = self.info.get("shape", "pairs") == "unpaired"
        self.labels: list[int] | None = [] if self.unpaired else None
        id_column = "example_id" if self.unpaired else "pair_id"
        n = manifest["num_shards"]
        self.shards = sorted(manifest.get("completed_shards", []))
        self._num_shards = n
        self._offsets = [0]
        self.pair_ids: list[str] = []
        self.caption_ids: list[str] = []
        time_ids, time_ids_flipped = [], []
        self._caption_index: dict[str, tuple[int, int]] = {}
        self.captions: dict[str, str] = {}
        for k in self.shards:
            cols = [id_column, "caption_id", "time_ids", "time_ids_flipped"] + (["label"] if self.unpaired else [])
            table = pq.read_table(self.root / DATA_DIR / f"{shard_name(k, n)}.parquet", columns=cols)
            self.pair_ids += table.column(id_column).to_pylist()
            if self.unpaired:
                self.labels += table.column("label").to_pylist()
            self.caption_ids += table.column("caption_id").to_pylist()
            time_ids += table.column("time_ids").to_pylist()
            time_ids_flipped += table.column("time_ids_flipped").to_pylist()
            self._offsets.append(self._offsets[-1] + table.num_rows)
            caps = json.loads(sidecar(self.root, k, n, "captions").read_text())
            for j, (cid, text) in enumerate(zip(caps["caption_ids"], caps["captions"])):
                self._caption_index.setdefault(cid, (k, j))
                self.captions.setdefault(cid, text)
        missing = sorted(set(self.caption_ids) - set(self._caption_index))
        if missing:
            raise UserError(f"'{self.root}' lacks text embeddings for {len(missing)} caption(s) (e.g. {missing[0]}); "
                            "rerun the same `mapo-data precompute` command to finish it.")
        self._time_ids = np.asarray(time_ids, dtype=np.float32).reshape(-1, 6)
        self._time_ids_flipped = (np.asarray(time_ids_flipped, dtype=np.float32).reshape(-1, 6)
                                  if self.has_flips and time_ids_flipped else None)
        self._arrays: dict = {}

    # Memory maps are opened lazily, per process, so the dataset pickles cheaply into DataLoader workers.
    def __getstate__(self):
        state = dict(self.__dict__)
        state["_arrays"] = {}
        return state

    def _array(self, k: int, kind: str):
        import numpy as np

        key = (k, kind)
        if key not in self._arrays:
            self._arrays[key] = np.load(sidecar(self.root, k, self._num_shards, kind), mmap_mode="r")
        return self._arrays[key]

    def __len__(self) -> int:
        return self._offsets[-1]

    def _locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"pair index {i} out of range (0..{len(self) - 1})")
        s = bisect.bisect_right(self._offsets, i) - 1
        return self.shards[s], i - self._offsets[s]

    def __getitem__(self, key):
        if isinstance(key, tuple):
            return self.get(int(key[0]), flip=bool(key[1]))
        return self.get(int(key))

    def _tensor(self, k: int, kind: str, index):
        import numpy as np

        return from_storage(np.array(self._array(k, kind)[index]), self.storage_dtype)

    def get(self, i: int, flip: bool = False) -> dict:
        import torch

        if flip and not self.has_flips:
            raise UserError(f"'{self.root}' has no mirrored latents; precompute with --flip both to train with flips.")
        k, row = self._locate(i)
        view = 1 if flip else 0
        cid = self.caption_ids[i]
        ck, crow = self._caption_index[cid]
        item = {
            "latents": self._tensor(k, "latents", (row, view)),
            "prompt_embeds": self._tensor(ck, "prompt_embeds", crow),
            "caption_id": cid,
            "flip": bool(flip),
            "index": i,
        }
        if self.unpaired:
            item["example_id"] = self.pair_ids[i]
            item["label"] = torch.tensor(self.labels[i], dtype=torch.long)
        else:
            item["pair_id"] = self.pair_ids[i]
        if self.has_logvar:
            item["latents_logvar"] = self._tensor(k, "logvar", (row, view))
        family = get_family(self.family)
        if family.pooled:  # SDXL, SD3
            item["pooled_prompt_embeds"] = self._tensor(ck, "pooled", crow)
        if family.time_ids:  # SDXL's micro-conditioning
            ids = self._time_ids_flipped if flip else self._time_ids
            item["add_time_ids"] = torch.from_numpy(ids[i].copy())
        return item


def collate(items: list[dict]) -> dict:
    """Stack a list of ``LatentDataset`` items: tensors -> [B, ...], other values -> lists."""
    import torch

    out = {}
    for key, value in items[0].items():
        values = [it[key] for it in items]
        out[key] = torch.stack(values) if isinstance(value, torch.Tensor) else values
    return out


def sample_latents(mean, logvar, generator=None):
    """Draw from the cached (scaled) latent distribution: mean + exp(logvar / 2) * noise."""
    import torch

    noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32).to(mean.device)
    return mean.float() + torch.exp(0.5 * logvar.float()) * noise


# -- sampler ---------------------------------------------------------------------------------
class PairSampler:
    """Seeded, rank-sharded, resumable batch sampler over ``num_items`` pairs.

    Each epoch is a permutation drawn from (seed, epoch). A global batch is ``batch_size *
    world_size`` consecutive entries; rank r takes entries [r*batch_size, (r+1)*batch_size) of
    each, so ranks never overlap and together cover the epoch (``drop_last=False`` pads the last
    global batch with the epoch's first entries). Iterating yields this rank's index lists for
    the rest of the current epoch, then moves to the next epoch. ``position`` counts global
    batches handed out, so ``state_dict()`` taken after a step resumes at the next batch. With
    ``flip=True`` entries are ``(index, flip)`` tuples, the flips drawn from the same seed.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool = True, flip: bool = False):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"Bad sampler settings: batch_size={batch_size}, rank={rank}, world_size={world_size}.")
        if num_items < 1 or (drop_last and num_items < batch_size * world_size):
            raise UserError(
                f"{num_items} pairs is fewer than one global batch ({batch_size} x {world_size} processes)."
            )
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size, self.drop_last, self.flip = rank, world_size, drop_last, flip
        self.epoch = 0
        self.position = 0

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        """Batches per epoch (the same on every rank)."""
        full, rest = divmod(self.num_items, self.global_batch)
        return full + (1 if rest and not self.drop_last else 0)

    def epoch_order(self, epoch: int):
        """The epoch's global order: (indices, flips or None), length len(self) * global_batch."""
        import numpy as np

        rng = np.random.default_rng([self.seed, epoch])
        order = np.resize(rng.permutation(self.num_items), len(self) * self.global_batch)
        flips = rng.random(len(order)) < 0.5 if self.flip else None
        return order, flips

    def __iter__(self):
        order, flips = self.epoch_order(self.epoch)
        while self.position < len(self):
            start = self.position * self.global_batch + self.rank * self.batch_size
            indices = [int(v) for v in order[start : start + self.batch_size]]
            if flips is not None:
                indices = [(v, bool(f)) for v, f in zip(indices, flips[start : start + self.batch_size])]
            self.position += 1  # before yielding: a checkpoint after this step resumes at the next batch
            yield indices
        self.epoch += 1
        self.position = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "num_items": self.num_items,
                "batch_size": self.batch_size, "world_size": self.world_size, "drop_last": self.drop_last,
                "flip": self.flip}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "num_items", "batch_size", "world_size", "drop_last", "flip"):
            if key in state and state[key] != getattr(self, key):
                raise UserError(f"Cannot resume the pair sampler: {key} was {state[key]}, now {getattr(self, key)}.")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
