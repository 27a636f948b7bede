"""Where a training run's micro-batches come from, one class per kind of input an objective reads
(:attr:`train.objectives.ObjectiveSpec.reads`): :class:`LatentBatches` (pairs or examples from
``mapo-data precompute``) and :class:`OnlineSpo` (prompts, sampled and paired by the policy: SPO).

The trainer's loop is the same for every source: ``batch = source.next_batch(unet, generator)`` outside
autocast, then ``source.loss(unet, batch, generator, objective, ...)`` under it, which runs the models
over the batch and hands their outputs (:class:`train.objectives.Terms`) to the objective's declared loss.
A source also says what the run records about its data (:meth:`record`, :meth:`data_info`), its resumable
``sampler`` (registered for checkpointing) and ``steps_per_epoch``, and ``pipe``: the text encoders and VAE
(validation images; the online source samples with them).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import Tensor

from pipeline.errors import UserError
from pipeline.judges.scores import finite_mean, is_finite_score

from .data import TrainData, batch_stream, check_data_matches_model, open_training_latents, training_sampler
from .ddim_logprob import ddim_scheduler, ddim_step_with_log_prob, step_kwargs
from .losses import LossOutput
from .objectives import Terms
from .spo import (
    DEFAULT_NUM_CANDIDATES,
    DEFAULT_THRESHOLD,
    NO_PAIR_KEYS,
    Conditioning,
    JudgePreference,
    Pairs,
    SpoSettings,
    check_spo_model,
    guided_output,
    threshold_gap,
)
from .step import compute_loss


class LatentBatches:
    """The batch source of the objectives that read latents ("pairs" or "examples"): the precompute output
    at ``--data``, checked against the model, in this rank's seeded, resumable order.

    Raises:
        UserError: (in the constructor) latents of another model, unpaired examples for a pairwise objective,
            too few items for one global batch (:mod:`train.data`).
    """

    def __init__(self, cfg, models, accelerator, weight_dtype=None):
        self.cfg, self.device, self.noise_scheduler = cfg, accelerator.device, models.noise_scheduler
        # The model check first: latents of another model family are the real error, not their count.
        self.dataset = open_training_latents(cfg)
        from pipeline.families import get_family

        channels = get_family(models.family).latent_channels(models.unet.config)  # Flux: in_channels / 4
        self.pipe = check_data_matches_model(self.dataset, cfg.model, models.family, channels)
        self.data = TrainData(self.dataset, training_sampler(cfg, self.dataset, accelerator.process_index,
                                                             accelerator.num_processes))
        self.sampler = self.data.sampler
        self._stream = None

    @staticmethod
    def check(cfg) -> None:
        """Nothing to refuse before the run folder is claimed (the latents are checked when opened)."""

    @property
    def steps_per_epoch(self) -> int:
        return self.data.steps_per_epoch

    def release_pipe(self) -> None:
        """No validation images: free the text encoders and VAE (training reads precomputed latents)."""
        self.pipe = None

    def announce(self) -> str | None:
        """The line said when training starts: unpaired examples and their balance (imbalance is normal)."""
        if not self.dataset.unpaired:
            return None
        info = self.data_info()
        return (f"{self.cfg.objective}: {info['examples']} unpaired examples, "
                f"{100 * info['desirable_fraction']:.1f}% desirable")

    def next_batch(self, unet, generator) -> dict:
        """This rank's next micro-batch (epoch after epoch, from the sampler's position): every floating tensor
        fp32 on the device, whatever the storage dtype (:func:`train.data.batch_stream`; read outside autocast:
        stacking fp16 storage under CPU bf16 autocast raises). ``unet``, ``generator``: unused."""
        if self._stream is None:
            self._stream = batch_stream(self.data, self.device)
        return next(self._stream)

    def loss(self, unet, batch: dict, generator, objective, *, reference=None, lora_base=None,
             reduce_mean=None) -> LossOutput:
        """:func:`train.step.compute_loss`: noise and timesteps from ``generator``, the denoiser's errors on the
        batch (and the reference's), then the objective's declared loss."""
        return compute_loss(unet, batch, self.noise_scheduler, objective, generator, reference=reference,
                            lora_base=lora_base, reduce_mean=reduce_mean)

    def data_info(self) -> dict:
        ds = self.dataset
        info = ds.info
        if ds.unpaired:  # KTO's examples; their balance (imbalance is normal: log it, do not fix it)
            return {"examples": len(ds), "desirable_fraction": sum(ds.labels) / max(len(ds), 1),
                    "resolution": info.get("resolution"), "model": info.get("model")}
        # SD3: how the text was encoded, so eval and the card sample the same way even when the latent folder is
        # moved or deleted (pipeline.models.training_output.text_encoding_of reads it here first).
        text = {k: info[k] for k in ("t5", "max_sequence_length") if info.get(k) is not None}
        return {"pairs": len(ds), "resolution": info.get("resolution"), "model": info.get("model"), **text}

    def sampling_kwargs(self) -> dict:
        """Pipeline-call settings the training text was encoded with (SD3: the T5 token count precompute used)."""
        info = self.dataset.info
        return {"max_sequence_length": info["max_sequence_length"]} if info.get("max_sequence_length") else {}

    def record(self) -> dict:
        """What the run's config records about its data (resume must match ``data_fingerprint``)."""
        info = self.dataset.info
        return {
            "data_info": self.data_info(),
            # What the latents are (precompute's identity fingerprint); the path may move, this may not.
            "data_fingerprint": self.dataset.manifest.get("fingerprint") or str(Path(self.cfg.data).resolve()),
            "latents": {
                k: info.get(k) for k in ("model", "vae", "resolution", "storage_dtype", "latent_shape", "views")
            },
        }


class OnlineSpo:
    """The batch source of ``--objective spo`` (objectives that read "prompts"): prompts, frozen text encoders
    and VAE, the preference model; each micro-batch is sampled and paired by the policy (:meth:`next_batch`,
    :mod:`train.spo`) and trained with the objective's loss (:meth:`loss`)."""

    def __init__(self, cfg, models, accelerator, weight_dtype):
        from pipeline.data.latent_shards import PairSampler
        from pipeline.data.prompts import load_prompts
        from pipeline.models.loading import default_resolution, load_pipeline

        family, scheduler_config = models.family, models.noise_scheduler.config
        self.cfg, self.acc, self.device, self.weight_dtype = cfg, accelerator, accelerator.device, weight_dtype
        self.prompt_set = load_prompts(cfg.prompts, column=cfg.prompt_column, split=cfg.prompt_split)
        self.texts = [p.text for p in self.prompt_set.prompts]
        self.sampler = PairSampler(len(self.texts), cfg.batch_size, cfg.seed, accelerator.process_index,
                                   accelerator.num_processes, drop_last=False)
        resolution = cfg.resolution or default_resolution(cfg.model)
        self.settings = SpoSettings(
            num_candidates=cfg.num_candidates or DEFAULT_NUM_CANDIDATES[family], eta=cfg.spo_eta,
            threshold=cfg.spo_threshold if cfg.spo_threshold is not None else DEFAULT_THRESHOLD[family],
            num_inference_steps=cfg.num_inference_steps, start_step=cfg.spo_start_step,
            guidance_scale=cfg.guidance_scale, resolution=resolution, beta=cfg.resolved_beta, clip=cfg.spo_clip)
        if self.settings.start_step >= self.settings.num_inference_steps:
            raise UserError(f"--spo-start-step {self.settings.start_step} leaves no step to train: it must be below "
                            f"--num-inference-steps {self.settings.num_inference_steps}.")
        # Text encoders and VAE: frozen, in the weight dtype, on the training device (the validator
        # borrows this pipeline and may leave it on the CPU: _on_device puts it back).
        self.pipe = load_pipeline(cfg.model, device=self.device, dtype=weight_dtype, skip=("unet",))
        for name in ("text_encoder", "text_encoder_2", "vae"):
            module = getattr(self.pipe, name, None)
            if module is not None:
                module.requires_grad_(False).eval()
        if weight_dtype == torch.float16 and getattr(self.pipe.vae.config, "force_upcast", False):
            self.pipe.vae.to(torch.float32)  # SDXL's original VAE overflows in fp16 (diffusers upcasts it too)
        self.vae_scale = self.pipe.vae_scale_factor
        self.scheduler = ddim_scheduler(scheduler_config, self.settings.num_inference_steps)
        self.kwargs = step_kwargs(self.scheduler)
        self.preference = self._load_preference()
        self._stream = None
        self.no_pair_in_a_row = self.no_pair_total = 0  # micro-batches without a kept pair (this sitting)

    def _load_preference(self):
        from pipeline.judges.loading import load_judges

        name = self.cfg.preference_model
        try:
            judge = load_judges([name], self.cfg.judge_options(), device=self.device)[name]
        except UserError as exc:
            raise UserError(f"--preference-model: {exc}") from None
        return JudgePreference(judge)

    @staticmethod
    def check(cfg) -> None:
        """Before the run folder is claimed: a flow model is refused (:func:`train.spo.check_spo_model`)."""
        check_spo_model(cfg.model)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.sampler)

    def release_pipe(self) -> None:
        """Nothing to free: sampling needs the text encoders and VAE."""

    def announce(self) -> str | None:
        return None

    def data_info(self) -> dict:
        return self.record()["data_info"]

    def sampling_kwargs(self) -> dict:
        return {}

    def record(self) -> dict:
        """What the run's config records about its data (resume must match ``data_fingerprint``)."""
        s = self.settings
        return {
            "data_info": {"prompts": len(self.texts), "resolution": s.resolution, "model": self.cfg.model},
            "data_fingerprint": f"prompts:{self.prompt_set.fingerprint()}",
            "spo": {**s.__dict__, "preference_model": self.cfg.preference_model,
                    "preference_style": self.cfg.validation_style, "tiny_scorers": self.cfg.validation_tiny_scorers},
        }

    # ------------------------------------------------------------------ one micro-batch
    def _next_indices(self) -> list[int]:
        if self._stream is None:
            def endless():
                while True:
                    yield from self.sampler
            self._stream = endless()
        return next(self._stream)

    def _encode(self, texts: list[str]) -> Conditioning:
        from pipeline.families import family_of_pipe
        from pipeline.models.conditioning import encode_text

        self.pipe.to(self.device)
        # No negative prompt, as the pipelines sample: SDXL then guides with zero embeddings (its
        # force_zeros_for_empty_prompt), SD1.5 with the empty prompt's; the public SPO code does the same.
        emb = encode_text(self.pipe, texts, None, guidance=True)
        # encode_text runs under inference_mode: clones are ordinary tensors autograd may save.
        def plain(t):
            return None if t is None else t.clone().float()

        ids = None
        if family_of_pipe(self.pipe).time_ids:
            r = self.settings.resolution  # (original h, w, crop top, left, target h, w): SDXL's micro-conditioning
            ids = torch.tensor([[r, r, 0, 0, r, r]], dtype=torch.float32, device=self.device)
        return Conditioning(plain(emb.prompt_embeds), plain(emb.negative_prompt_embeds), plain(emb.pooled),
                            plain(emb.negative_pooled), ids)

    def _decode(self, latents: Tensor) -> list:
        vae = self.pipe.vae
        with torch.no_grad():
            images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        return self.pipe.image_processor.postprocess(images.float(), output_type="pil")

    def _score(self, latents: Tensor, texts: list[str], k: int, t: int) -> Tensor:
        """Rewards ``[k, B]`` fp64 of ``k * B`` candidates' (predicted) clean latents, candidate-major; NaN where
        the preference model gave no finite score."""
        b = len(texts)
        rewards = self.preference(self._decode(latents), texts * k, [t] * (k * b))
        # A candidate without a usable reward (None, NaN, inf) stays NaN: pair_candidates leaves it out.
        rewards = [float(r) if is_finite_score(r) else float("nan") for r in rewards]
        return torch.tensor(rewards, dtype=torch.float64).reshape(k, b)

    @torch.no_grad()
    def sample_pairs(self, unet, cond: Conditioning, texts: list[str], generator: torch.Generator) -> Pairs:
        """One stochastic DDIM trajectory per prompt, candidates from ``start_step`` on; the kept pairs."""
        from pipeline.judges.reward import pair_candidates

        s, kw, dev = self.settings, self.kwargs, self.device
        b, k = len(texts), s.num_candidates
        side = s.resolution // self.vae_scale
        channels = unet.config.in_channels
        shape = (channels, side, side)
        x = torch.randn((b, *shape), generator=generator).to(dev) * float(self.scheduler.init_noise_sigma)
        rows_b = torch.arange(b, device=dev)
        rows_kb = rows_b.repeat(k)
        min_gap = threshold_gap(s.threshold)
        kept = {"x_t": [], "t": [], "w": [], "l": [], "row": []}
        gaps, rewards_all, compared = [], [], 0
        pending = None  # (x_t [B], t, candidates [k, B, ...])

        def compare(rewards: Tensor, pend):
            nonlocal compared
            x_t, t, cands = pend
            rewards_all.extend(rewards.flatten().tolist())
            for j in range(b):
                found = pair_candidates(rewards[:, j].tolist(), "best-worst", min_gap)
                compared += 1
                if found and found[0].kept:
                    kept["x_t"].append(x_t[j]), kept["t"].append(t), kept["row"].append(j)
                    kept["w"].append(cands[found[0].chosen, j]), kept["l"].append(cands[found[0].rejected, j])
                    gaps.append(found[0].gap)

        for i, t in enumerate(self.scheduler.timesteps.tolist()):
            rows = rows_kb if pending is not None else rows_b
            ts = torch.full((x.shape[0],), t, device=dev, dtype=torch.long)
            out = guided_output(unet, x, ts, cond, rows, s.guidance_scale)
            if pending is not None:
                x0 = ddim_step_with_log_prob(out, t, x, eta=s.eta, variance_noise=torch.zeros_like(x),
                                             **kw).pred_original_sample
                compare(self._score(x0, texts, k, t), pending)
                # A random candidate continues (public code: torch.randint), so the next comparison does not
                # follow the preference model's choice.
                choice = torch.randint(0, k, (b,), generator=generator).to(dev)
                pick = choice * b + rows_b
                x, out, pending = x[pick], out[pick], None
            if i < s.start_step:
                noise = torch.randn((b, *shape), generator=generator).to(dev)
                x = ddim_step_with_log_prob(out, t, x, eta=s.eta, variance_noise=noise, **kw).prev_sample
                continue
            noise = torch.randn((k * b, *shape), generator=generator).to(dev)
            cands = ddim_step_with_log_prob(out.repeat(k, 1, 1, 1), t, x.repeat(k, 1, 1, 1), eta=s.eta,
                                            variance_noise=noise, **kw).prev_sample
            pending = (x, t, cands.reshape(k, b, *shape))
            x = cands
        compare(self._score(x, texts, k, 0), pending)  # the last step's candidates are clean latents
        if kept["t"]:
            stack = {key: torch.stack(v) for key, v in kept.items() if key not in ("t", "row")}
            return Pairs(stack["x_t"], torch.tensor(kept["t"], device=dev), stack["w"], stack["l"],
                         torch.tensor(kept["row"], device=dev), gaps, compared, rewards_all)
        empty = torch.zeros((0, *shape), device=dev)
        return Pairs(empty, torch.zeros(0, dtype=torch.long, device=dev), empty, empty,
                     torch.zeros(0, dtype=torch.long, device=dev), gaps, compared, rewards_all)

    def pair_loss(self, unet, pairs: Pairs, cond: Conditioning, objective, *, reference=None,
                  lora_base=None) -> LossOutput:
        """The objective's loss (:func:`train.losses.spo_loss` for spo) of ``pairs`` under ``unet`` (with
        gradient) against the frozen reference (a copy, or ``lora_base`` with its adapter off), under no_grad:
        :class:`train.objectives.Terms` with the winners' then the losers' log-probabilities ``[2P]``."""
        from .step import adapters_disabled

        s, kw = self.settings, self.kwargs
        rows, t = pairs.prompt_index, pairs.timesteps
        with torch.no_grad():
            ctx = contextlib.nullcontext(reference) if reference is not None else adapters_disabled(lora_base)
            with ctx as ref:
                ref_out = guided_output(ref, pairs.x_t, t, cond, rows, s.guidance_scale)
        out = guided_output(unet, pairs.x_t, t, cond, rows, s.guidance_scale)

        def logp(model_out):  # [2P]: winners, then losers
            return torch.cat([ddim_step_with_log_prob(model_out, t, pairs.x_t, eta=s.eta, prev_sample=x_prev,
                                                      **kw).log_prob for x_prev in (pairs.x_w, pairs.x_l)])

        return objective.loss(Terms(logp(out), logp(ref_out)))

    def _no_pair_loss(self, unet, cond: Conditioning, objective, reference, lora_base) -> Tensor:
        """A zero loss for a micro-batch without kept pairs (no update from it).

        On one process a constant. Under DDP every rank must run the wrapped UNet's forward and backward,
        or the ranks that kept pairs wait forever in the gradient all-reduce: there it is 0 x the loss of
        one stand-in pair (zeros at the first trained timestep, winner = loser), so this rank adds zero
        gradients and the ranks stay in lockstep."""
        if self.acc.num_processes == 1:
            return torch.zeros((), device=self.device, requires_grad=True)
        side = self.settings.resolution // self.vae_scale
        x = torch.zeros((1, self.acc.unwrap_model(unet).config.in_channels, side, side), device=self.device)
        t = self.scheduler.timesteps[self.settings.start_step].reshape(1).to(self.device)
        stand_in = Pairs(x, t, x, x, torch.zeros(1, dtype=torch.long, device=self.device), [], 0, [])
        return 0.0 * self.pair_loss(unet, stand_in, cond, objective, reference=reference, lora_base=lora_base).loss

    def next_batch(self, unet, generator: torch.Generator) -> dict:
        """Sample and pair one micro-batch (under the run's autocast, no gradient): "index" (the prompts'
        rows), "texts", "cond" (:class:`train.spo.Conditioning`) and "pairs" (:class:`train.spo.Pairs`).

        ``unet``: the trainable UNet (maybe a DDP wrapper; the unwrapped policy samples)."""
        with self.acc.autocast():
            indices = self._next_indices()
            texts = [self.texts[i] for i in indices]
            cond = self._encode(texts)
            pairs = self.sample_pairs(self.acc.unwrap_model(unet), cond, texts, generator)
        return {"index": indices, "texts": texts, "cond": cond, "pairs": pairs}

    def _say_no_pair(self, compared: int, non_finite: int) -> None:
        """One line (main process) for a micro-batch that kept no pair, as the trainer reports a skipped
        non-finite step: why its loss is logged as nan and that it adds no update, with running counts. Said for
        the 1st, 2nd, 4th, 8th, ... such micro-batch of the sitting, so a long run with a strict threshold is not
        flooded (metrics.jsonl's ``pairs`` has every step)."""
        self.no_pair_in_a_row += 1
        self.no_pair_total += 1
        if self.no_pair_total & (self.no_pair_total - 1):  # not a power of two
            return
        if compared:
            why = (f"none of its {compared} comparisons had two candidates whose preference gap passed "
                   f"--spo-threshold {self.settings.threshold:g}")
        else:
            why = "it had no two candidates with a preference score to compare"
        if non_finite:
            why += f"; {non_finite} candidates had no finite preference score"
        self.acc.print(f"spo: no pair formed in this micro-batch ({why}): its loss is not measured (logged as nan) "
                       f"and it adds no update ({self.no_pair_in_a_row} in a row, {self.no_pair_total} in total; "
                       "said at the 1st, 2nd, 4th, 8th, ...)")

    def loss(self, unet, batch: dict, generator, objective, *, reference=None, lora_base=None,
             reduce_mean=None) -> LossOutput:
        """The objective's loss over the batch's kept pairs, with the sampling's metrics ("pairs", "pair_rate",
        "preference", "non_finite_rewards"). With no kept pair the loss is 0 and ``has_signal`` False (no
        update; :meth:`_no_pair_loss`). ``unet``: the trainable UNet (maybe a DDP wrapper); ``lora_base``: the
        unwrapped LoRA UNet, or ``reference``: the frozen copy. ``generator``, ``reduce_mean``: unused (the
        sampling drew its randomness in :meth:`next_batch`)."""
        pairs, cond = batch["pairs"], batch["cond"]
        n = len(pairs.gaps)
        preference, non_finite = finite_mean(pairs.rewards)
        extra = {"pairs": float(n), "pair_rate": n / max(pairs.compared, 1),
                 "preference": float("nan") if preference is None else preference,  # NaN: not measured
                 "non_finite_rewards": float(non_finite)}  # candidates left out of every pair
        if n == 0:
            self._say_no_pair(pairs.compared, non_finite)
            # The same keys as a step with pairs (ranks and micro-batches reduce them together); NaN: not measured.
            nan = {k: torch.tensor(float("nan")) for k in NO_PAIR_KEYS}
            metrics = {"loss": torch.tensor(float("nan")), **nan, **{k: torch.tensor(v) for k, v in extra.items()}}
            return LossOutput(loss=self._no_pair_loss(unet, cond, objective, reference, lora_base), metrics=metrics,
                              has_signal=False)
        self.no_pair_in_a_row = 0
        out = self.pair_loss(unet, pairs, cond, objective, reference=reference, lora_base=lora_base)
        return LossOutput(loss=out.loss, metrics={**out.metrics, **{k: torch.tensor(v) for k, v in extra.items()}})


SOURCES = {"pairs": LatentBatches, "examples": LatentBatches, "prompts": OnlineSpo}


def source_class(spec):
    """The batch source class of an objective's declaration (by what it ``reads``)."""
    return SOURCES[spec.reads]
