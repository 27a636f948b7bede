"""The ``mapo-train`` recipe: setup / train / save_checkpoint / save_final / cleanup (torchtune's shape).

The parts live in their own modules (config, objectives, batch_sources, data, model_setup, step,
checkpoint, lora_io, tracking, validation, model_card); this file only wires them together on an
accelerate ``Accelerator``. The loop is the same for every objective: the batch source gives the next
micro-batch and runs the objective's declared loss on it.
"""
from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.cli.options import options_record
from pipeline.cli.progress import progress_bar
from pipeline.errors import UserError, writing_output

from . import sharding
from .batch_sources import source_class
from .checkpoint import (
    TrainState,
    checkpoint_step,
    continue_schedule,
    list_checkpoints,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
)
from .config import TrainConfig
from .data import micro_batches_this_step, optimizer_steps_per_epoch
from .lora_io import register_adapter_only_checkpoints, save_lora
from .model_card import write_model_card
from .model_setup import build_lr_scheduler, build_optimizer, setup_models, trainable_parameters
from .run_folder import DEBUG_DIR, METRICS_FILE, MetricsLog, check_resume_config, claim_run_folder, write_run_config
from .step import Objective, step_generator
from .tracking import flat_config, peak_memory_gb, trackers
from .validation import Validator, load_scorers

_FP16_ON_CPU = "fp16 mixed precision is not supported on the CPU; use --mixed-precision bf16 or no."


@dataclass
class TrainResult:
    output_dir: str
    steps: int
    start_step: int
    stopped_by_signal: str | None
    nonfinite_skipped: int
    final_metrics: dict = field(default_factory=dict)
    seconds: float = 0.0
    saved: str | None = None  # unet/ folder or LoRA file
    is_main: bool = True  # the main process (the one that saved and prints the summary)
    distributed: dict = field(default_factory=dict)  # train.sharding.engine_record: the engine that ran


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.record = options_record(cfg)  # as given: --config <this run> fills defaults in again
        self.cfg = cfg.validate()
        if cfg.model is None:  # the model the latents were made with
            from pipeline.data.latent_shards import latents_model

            cfg.model = latents_model(cfg.data)
        from pipeline.models.loading import check_resolution  # SD3's 16 px, and --compile: before any folder
        from pipeline.models.option_checks import check_compile
        check_resolution(cfg.model, cfg.validation_resolution, "--validation-resolution")
        if cfg.compile:
            check_compile(cfg.model)
        self.out = Path(cfg.output_dir)
        self.accelerator = None
        self._signal = None
        self._old_handlers: dict = {}

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        import torch
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        cfg = self.cfg
        sharded = sharding.check_engine_request(cfg) == "fsdp2"  # an engine this run cannot honour: refused here
        if cfg.use_8bit_adam:  # fail before any model is loaded
            from pipeline.errors import require

            require("bitsandbytes", "--use-8bit-adam")
        # Before the output folder is checked: --overwrite would delete an earlier run for a run that cannot
        # start. Same device rule as accelerate's, which on the CPU would not autocast fp16 at all.
        from pipeline.runtime.distributed import _launched_multi_process, runs_on_cpu

        if cfg.mixed_precision == "fp16" and runs_on_cpu():
            raise UserError(_FP16_ON_CPU)
        if cfg.optimizer_in_backward and _launched_multi_process():  # DDP all-reduces after the in-backward hooks
            raise UserError("--optimizer-in-backward runs on one process; drop it or launch one process.")
        source_class(cfg.spec).check(cfg)  # e.g. spo on a flow model: refused before the run folder is claimed
        resume = resolve_resume(self.out, cfg.resume_from_checkpoint)
        claim_run_folder(self.out, self.cfg, resume)
        self.scorers = None
        self.accelerator = acc = Accelerator(
            mixed_precision=cfg.mixed_precision,
            log_with=trackers(cfg.report_to) or None,
            project_config=ProjectConfiguration(project_dir=str(self.out), logging_dir=str(self.out / "logs")),
        )
        if sharded:
            sharding.enable_fsdp2(acc)
        if resume is not None:  # a launch that cannot load the checkpoints fails before any model loads
            sharding.check_resume_engine(self.out, acc)
        if cfg.compile and acc.is_main_process:
            print("--compile: the UNet's transformer blocks compile during the first steps (slower, tens of seconds "
                  "on a CPU; once per shape)", file=sys.stderr)
        if cfg.spec.warning is not None and acc.is_main_process:  # before the models load: said at once
            warning = cfg.spec.warning(cfg.resolved_beta, cfg.learning_rate)  # kto: beta x lr saturation; dpo: its lr
            if warning:
                print(warning, file=sys.stderr)
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)
        self.models = setup_models(cfg, self.weight_dtype, sharding.setup_device(acc, cfg))
        unet = self.models.unet
        if acc.is_fsdp2 and self.models.reference is not None and cfg.reference_device != "cpu":
            sharding.shard_frozen(acc, self.models.reference)
        # Latents from precompute, or prompts sampled online by the policy (spo): train/batch_sources.py.
        self.source = source_class(cfg.spec)(cfg, self.models, acc, self.weight_dtype)
        self.base_pipe = self.source.pipe
        self.objective = Objective(cfg.objective, cfg.resolved_beta, self.models.num_train_timesteps,
                                   self.models.prediction_type, cfg.mapo_a, cfg.kto_lambda_desirable,
                                   cfg.kto_lambda_undesirable, cfg.spo_clip, cfg.sft_weight)
        # The last step of an epoch takes the micro-batches left (train.data.micro_batches_this_step).
        steps_per_epoch = optimizer_steps_per_epoch(self.source.steps_per_epoch, cfg.gradient_accumulation_steps)
        self.total_steps = cfg.max_steps if cfg.max_steps is not None else cfg.num_epochs * steps_per_epoch
        self.params = trainable_parameters(unet)
        optimizer = build_optimizer(cfg, self.params)
        # The LR scheduler is stepped once per optimizer step by hand (not prepared: accelerate's
        # wrapper would step it once per process) and saved with the checkpoint.
        self.lr_scheduler = build_lr_scheduler(cfg, optimizer, self.total_steps)
        self.unet, self.optimizer = acc.prepare(unet, optimizer)
        if acc.is_fsdp2:  # fully_shard replaced the weights with sharded ones
            self.params = trainable_parameters(self.unet)
        self.state = TrainState()
        acc.register_for_checkpointing(self.lr_scheduler, self.source.sampler, self.state)
        if cfg.is_lora:
            register_adapter_only_checkpoints(acc, self.unet)
        if resume is not None:
            saved = check_resume_config(self.out, self.resolved_config())
            self._check_steps_left(resume, saved)
            load_checkpoint(acc, resume)
            continue_schedule(self.lr_scheduler)  # the (maybe new) curve's lr at the restored step, not the old one's
            if self.state.global_step != checkpoint_step(resume):
                raise UserError(
                    f"Checkpoint {resume} is inconsistent (step {self.state.global_step}); pick another one."
                )
            if acc.is_main_process:
                MetricsLog(self.out).truncate(self.state.global_step)
            acc.wait_for_everyone()
            acc.print(f"resumed from {resume} at step {self.state.global_step}")
        elif cfg.resume_from_checkpoint == "latest":
            acc.print(f"no checkpoint in {self.out / 'checkpoints'}: starting from scratch")
        self.start_step = self.state.global_step
        self.validator = None
        if cfg.validation_prompts:
            resolution = cfg.validation_resolution or int(self._data_info()["resolution"])
            self.scorers = load_scorers(cfg, acc)
            self.validator = Validator(self.base_pipe, cfg.validation_prompts, cfg.validation_seeds, resolution,
                                       cfg.validation_inference_steps, cfg.validation_guidance_scale, self.out,
                                       scorers=self.scorers, metrics_file=self.out / METRICS_FILE,
                                       base_unet=self._base_unet, pipeline_kwargs=self._sampling_kwargs())
        else:  # not needed: free the text encoders and VAE (unless the source samples with them)
            self.base_pipe = None
            self.source.release_pipe()
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            self._write_config()
        acc.init_trackers("mapo-train", config=flat_config(self.resolved_config()))
        self._install_signal_handlers()

    @contextlib.contextmanager
    def _base_unet(self, unet):
        """The untrained UNet for a resumed run's before/after grid: LoRA off, or the base weights reloaded."""
        from .model_setup import load_base_unet_and_scheduler
        from .step import adapters_disabled

        if self.cfg.is_lora:
            with adapters_disabled(unet) as base:
                yield base
            return
        base = load_base_unet_and_scheduler(self.cfg.model)[0].requires_grad_(False)
        try:
            yield base
        finally:
            del base

    def _check_steps_left(self, resume: Path, saved: dict) -> None:
        """Resuming must leave steps to train: a finished run is trained further with a larger --max-steps."""
        step = checkpoint_step(resume)
        if self.total_steps <= step:
            raise UserError(f"'{self.out}' is already trained to step {step}; pass a larger --max-steps (above {step}) "
                            "to train further.")
        # diffusers' decaying schedules are functions of the total: the restored step count continues
        # on the new curve (the scheduler's state holds its step count, not its shape).
        if saved.get("total_steps") not in (None, self.total_steps) and \
                self.cfg.lr_scheduler not in ("constant", "constant_with_warmup"):
            self.accelerator.print(f"note: --lr-scheduler {self.cfg.lr_scheduler} now spans {self.total_steps} steps "
                                   f"(the run was made with {saved['total_steps']}); from step {step} the learning "
                                   "rate follows the new schedule.")

    def resolved_config(self) -> dict:
        return {
            **self.cfg.to_json(),
            "lora_target_modules": self.models.lora_target_modules,  # resolved: given, or the family's
            "family": self.models.family,
            "prediction_type": self.models.prediction_type,
            "num_train_timesteps": self.models.num_train_timesteps,
            "world_size": self.accelerator.num_processes,
            "distributed": sharding.engine_record(self.accelerator),
            "total_steps": self.total_steps,
            "pairs_per_step": (
                self.cfg.batch_size * self.cfg.gradient_accumulation_steps * self.accelerator.num_processes
            ),
            **self.source.record(),
            **self.record,
        }

    def _sampling_kwargs(self) -> dict:
        """Pipeline-call settings the training text was encoded with (SD3: the T5 token count precompute used)."""
        return self.source.sampling_kwargs()

    def _data_info(self) -> dict:
        return self.source.data_info()

    def _write_config(self) -> None:
        write_run_config(self.out, self.resolved_config())

    def _install_signal_handlers(self) -> None:
        """SIGTERM / SIGINT: finish the current step, save a checkpoint, exit cleanly (preemptible clusters)."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, _frame):
            self._signal = signal.Signals(signum).name

        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old_handlers[sig] = signal.signal(sig, handler)

    # ------------------------------------------------------------------ train
    def train(self) -> TrainResult:

        acc, cfg, state = self.accelerator, self.cfg, self.state
        t_start = time.perf_counter()
        lora_base = acc.unwrap_model(self.unet) if (cfg.is_lora and self.objective.uses_reference) else None
        if self.validator is not None and state.global_step == 0:
            self._validate(0)
        announcement = self.source.announce()  # kto: its examples' balance
        if announcement:
            acc.print(announcement)
        bar = progress_bar(total=self.total_steps, desc=f"train {cfg.objective}", unit="step",
                           initial=state.global_step)  # restored steps: done, but not in the rate
        last_metrics: dict = {}
        succeeded = 0  # optimizer steps taken in this run (a non-finite loss skips its step)
        stopped = None
        while state.global_step < self.total_steps:
            t0 = time.perf_counter()
            metrics, indices = self._optimizer_step(lora_base)
            state.global_step += 1
            step = state.global_step
            elapsed = time.perf_counter() - t0
            if metrics is not None:
                succeeded += 1
                metrics["pairs_per_s"] = (
                    cfg.batch_size * self.micro_batches * acc.num_processes / max(elapsed, 1e-9)
                )
                metrics["peak_mem_gb"] = peak_memory_gb(acc.device)
                last_metrics = metrics
                if step % cfg.logging_steps == 0 or step == self.total_steps:
                    self._log(step, metrics)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", **({"acc": f"{metrics['implicit_acc']:.2f}"}  # not sft's
                                                                  if "implicit_acc" in metrics else {}))
            if cfg.debug_weight_checksums:
                self._write_checksum(step, indices)
            bar.update(1)
            if step % cfg.checkpointing_steps == 0 and step < self.total_steps:
                self.save_checkpoint()
            if (self.validator is not None and cfg.validation_steps and step % cfg.validation_steps == 0
                    and step < self.total_steps):
                self._validate(step)
            # A signal during the last step lets the run finish (final model and checkpoint): a stop
            # there would leave a checkpoint at max_steps, which a rerun could not continue.
            stopped = self._stop_requested() if step < self.total_steps else None
            if stopped:
                break
        bar.close()
        if stopped:
            path = self.save_checkpoint()
            acc.print(f"{stopped}: checkpoint saved at {path}; resume with --resume-from-checkpoint latest")
            return TrainResult(str(self.out), state.global_step, self.start_step, stopped, state.nonfinite_total,
                               last_metrics, time.perf_counter() - t_start)
        if succeeded == 0 and state.global_step > self.start_step:
            raise UserError(f"no training step succeeded: all {state.global_step - self.start_step} steps had a "
                            "non-finite loss, so the model is unchanged and was not saved. Lower --learning-rate, use "
                            "--mixed-precision bf16 or no, or check the data; then rerun with --overwrite.")
        with writing_output(self.out):  # a full disk or read-only folder: one line naming the file or folder
            saved = self.save_final(last_metrics)
        # After the final model (a kill in between leaves that model and the older checkpoints): the
        # last step's checkpoint lets `--resume-from-checkpoint latest --max-steps M` train further.
        self.save_checkpoint()
        return TrainResult(str(self.out), state.global_step, self.start_step, None, state.nonfinite_total,
                           last_metrics, time.perf_counter() - t_start, saved)

    def _optimizer_step(self, lora_base):
        """Accumulate ``gradient_accumulation_steps`` micro-batches (fewer for an epoch's last step:
        :func:`train.data.micro_batches_this_step`; the loss is their mean), then one optimizer step.
        A metric a micro-batch did not measure (NaN, :class:`train.losses.LossOutput`) is left out of the mean.

        A non-finite loss on any rank skips the whole step on every rank (no backward, no
        optimizer or LR step), so ranks stay in lockstep and weights stay identical.
        """
        import torch

        acc, cfg, state = self.accelerator, self.cfg, self.state
        # Up to --gradient-accumulation-steps, fewer at an epoch's end (no step spans two epochs).
        accum = self.micro_batches = micro_batches_this_step(self.source.sampler, cfg.gradient_accumulation_steps)
        lr = float(self.lr_scheduler.optimizer.param_groups[0]["lr"])  # what this step's update uses (logged)
        sums: dict = {}  # per metric: the sum of its finite values over micro-batches, and their count
        counts: dict = {}
        indices: list = []
        with_signal = 0.0  # micro-batches with something to learn from (LossOutput.has_signal)
        finite = True
        for micro in range(accum):
            gen = step_generator(cfg.seed, state.global_step, acc.process_index, micro)
            # Read outside autocast: stacking fp16 storage under CPU bf16 autocast raises (train.data.to_compute);
            # an online source samples under autocast itself.
            batch = self.source.next_batch(self.unet, gen)
            # DDP syncs gradients on the last micro-batch only (FSDP2 on every one: sharding.accumulation_context).
            sync = sharding.accumulation_context(acc, self.unet, last=micro == accum - 1)
            with sync:
                with acc.autocast():
                    out = self.source.loss(self.unet, batch, gen, self.objective, reference=self.models.reference,
                                           lora_base=lora_base, reduce_mean=self._reduce_mean)
                indices += list(batch.get("index", []))
                finite = self._all_finite(out.loss)
                if not finite:
                    break
                acc.backward(out.loss / accum)
            with_signal += float(out.has_signal)
            for k, v in out.metrics.items():  # NaN = not measured in this micro-batch (spo without pairs)
                measured = torch.isfinite(v)
                sums[k] = sums.get(k, 0.0) + torch.where(measured, v, 0.0)
                counts[k] = counts.get(k, 0.0) + measured.float()
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            state.nonfinite_total += 1
            state.consecutive_nonfinite += 1
            acc.print(f"step {state.global_step + 1}: non-finite loss, step skipped "
                      f"({state.consecutive_nonfinite} in a row, {state.nonfinite_total} in total)")
            if state.consecutive_nonfinite >= cfg.max_consecutive_nonfinite:
                found = list_checkpoints(self.out)
                last = f"the last good checkpoint is {found[-1]}" if found else "no checkpoint was saved yet"
                raise UserError(f"{state.consecutive_nonfinite} non-finite losses in a row "
                                f"(step {state.global_step + 1}); stopping ({last}). Lower --learning-rate, use "
                                "--mixed-precision bf16 or no, or check the data.")
            return None, indices
        state.consecutive_nonfinite = 0
        metrics, with_signal = self._reduce_metrics(sums, counts, with_signal)
        grad_norm = None
        # No micro-batch on any rank had signal (spo: no kept pair): nothing to learn. AdamW would still move the
        # weights (momentum, weight decay) and fp16's GradScaler refuses a step without gradients: no update.
        if with_signal > 0:
            if cfg.optimizer_in_backward:  # the weights were updated (and each gradient clipped) in the backward
                grad_norm = self.optimizer.optimizer.take_grad_norm()
            else:
                grad_norm = acc.clip_grad_norm_(self.params, cfg.max_grad_norm)
            self.optimizer.step()
            self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        metrics["grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
        metrics["lr"] = lr
        metrics["nonfinite_skipped"] = float(state.nonfinite_total)
        return metrics, indices

    def _reduce_metrics(self, sums: dict, counts: dict, with_signal: float) -> tuple[dict, float]:
        """Each metric's mean over the measured micro-batches of every rank (NaN when none measured it), and
        ``with_signal`` (this rank's count of micro-batches with LossOutput.has_signal) summed over the ranks,
        in the same all-reduce."""
        import torch

        keys, device = sorted(sums), self.accelerator.device
        rows = [torch.stack([torch.as_tensor(sums[k]), torch.as_tensor(counts[k])]).to(device, torch.float32)
                for k in keys]
        local = torch.stack([*rows, torch.tensor([with_signal, 0.0], device=device)])
        total = self.accelerator.reduce(local, reduction="sum").tolist()
        metrics = {k: float(s / c) if c > 0 else float("nan") for k, (s, c) in zip(keys, total)}
        return metrics, total[-1][0]

    def _reduce_mean(self, value):
        """The mean of a tensor over all processes (KTO's reference point); itself on one process."""
        if self.accelerator.num_processes == 1:
            return value
        return self.accelerator.reduce(value.reshape(1), reduction="mean").reshape(value.shape)

    def _all_finite(self, loss) -> bool:
        import torch

        flag = torch.isfinite(loss.detach()).float().reshape(1)
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(flag, reduction="sum") / self.accelerator.num_processes
        return bool(flag.item() == 1.0)

    def _stop_requested(self) -> str | None:
        import torch

        flag = 1.0 if self._signal else 0.0
        if self.accelerator.num_processes > 1:  # a signal to any rank stops all ranks at the same step
            t = self.accelerator.reduce(torch.tensor([flag], device=self.accelerator.device), reduction="sum")
            flag = float(t.item())
        return (self._signal or "SIGTERM") if flag > 0 else None

    def _log(self, step: int, metrics: dict) -> None:
        acc = self.accelerator
        acc.log({f"train/{k}": v for k, v in metrics.items()}, step=step)
        if acc.is_main_process:
            MetricsLog(self.out).append(step, metrics)

    def _write_checksum(self, step: int, indices: list) -> None:
        """Per-rank digest of the trainable weights: equal on all ranks after every step (test hook)."""
        digest = sharding.weights_digest(self.params)  # every rank: FSDP2 gathers each shard
        folder = self.out / DEBUG_DIR
        folder.mkdir(parents=True, exist_ok=True)
        idx = [i if isinstance(i, int) else list(i) for i in indices]
        with open(folder / f"weights-rank{self.accelerator.process_index}.jsonl", "a") as fh:
            fh.write(json.dumps({"step": step, "checksum": digest, "indices": idx}) + "\n")

    def _validate(self, step: int) -> None:
        acc = self.accelerator
        with sharding.gathered_model(acc, self.unet) as unet:  # whole on the main process (FSDP2: a gathered copy)
            if acc.is_main_process:
                self.validator.run(unet, step, acc.device, acc.autocast, acc.trackers)
        acc.wait_for_everyone()

    # ------------------------------------------------------------------ save
    def save_checkpoint(self) -> Path:
        return save_checkpoint(self.accelerator, self.out, self.state.global_step, self.cfg.checkpoints_total_limit)

    def save_final(self, final_metrics: dict) -> str:
        """unet/ (full fine-tune) or the LoRA file, the model card, and a before/after grid."""
        acc = self.accelerator
        acc.wait_for_everyone()
        saved = None
        with sharding.gathered_model(acc, self.unet) as unet:  # whole on the main process (FSDP2: a gathered copy)
            if acc.is_main_process:
                saved = self._save_final_on_main(unet, final_metrics)
        acc.wait_for_everyone()
        return saved

    def _save_final_on_main(self, unet, final_metrics: dict) -> str:
        """The main process's part of save_final, on the whole (unsharded) trained ``unet``."""
        acc, cfg = self.accelerator, self.cfg
        if cfg.is_lora:
            saved = str(save_lora(unet, self.out, self.models.family))
        else:
            from pipeline.families import get_family

            folder = self.out / get_family(self.models.family).denoiser_dir  # unet/ or transformer/
            unet.save_pretrained(folder, safe_serialization=True)
            saved = str(folder)
        write_model_card(self.out, self.resolved_config(), final_metrics, self._data_info())
        if self.validator is not None:
            self.validator.run(unet, self.state.global_step, acc.device, acc.autocast, acc.trackers)
            self.validator.before_after(unet, self.state.global_step, acc.device, acc.autocast, acc.trackers)
        return saved

    # ------------------------------------------------------------------ cleanup
    def cleanup(self) -> None:
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        self._old_handlers = {}
        acc = self.accelerator
        if acc is None:
            return
        acc.end_training()
        if acc.num_processes == 1:
            # In-process callers (tests, notebooks) may start another run with other settings.
            from accelerate.state import AcceleratorState, GradientState

            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()


def run_train(cfg: TrainConfig) -> TrainResult:
    """Train as ``cfg`` says (``cfg.model`` None: the model the latents were made with).

    Raises:
        UserError: bad data, a mismatched model or output folder, a run with no successful step.
    """
    trainer = Trainer(cfg)
    try:
        trainer.setup()
        result = trainer.train()
        result.is_main = trainer.accelerator.is_main_process
        result.distributed = sharding.engine_record(trainer.accelerator)
        return result
    finally:
        trainer.cleanup()
