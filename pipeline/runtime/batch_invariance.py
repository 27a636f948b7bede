"""Batch-invariant inference: the same image bits whatever the batch size.

Matrix kernels pick different code paths for different batch sizes (MKL's sgemm on the CPU
gives different last bits for a 2-row and a 6-row product; cuBLAS does the same), so a batched
UNet call is not bit-identical to the same samples run one by one. Running the UNet one sample
at a time, decoding one latent at a time and encoding each prompt alone makes every kernel
see the same shapes whatever ``--batch-size`` is. The cost is the lost batching speed-up;
``--no-batch-invariant`` trades reproducibility across batch sizes for throughput.
"""
from __future__ import annotations


def _split(value, batch: int, i: int):
    import torch

    if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == batch:
        return value[i : i + 1]
    if isinstance(value, dict):
        return {k: _split(v, batch, i) for k, v in value.items()}
    return value


def per_sample_forward(module, unbatched: tuple[str, ...] = ()) -> None:
    """Make ``module``'s forward run each batch element separately (first arg = batch tensor, or the
    ``hidden_states`` keyword: diffusers' transformers are called with keywords). Keyword arguments named in
    ``unbatched`` are passed whole even when their first dimension equals the batch size (Flux's position ids
    ``txt_ids`` [L, 3] and ``img_ids`` [S, 3]: the ModelFamily's ``unbatched_inputs``)."""
    import torch

    original = module.forward

    def forward(*args, **kwargs):
        sample = args[0] if args else kwargs["hidden_states"]
        batch = sample.shape[0]
        if batch == 1:
            return original(*args, **kwargs)
        outs = [
            original(
                *(_split(a, batch, i) for a in args),
                **{k: v if k in unbatched else _split(v, batch, i) for k, v in kwargs.items()},
            )
            for i in range(batch)
        ]
        first = outs[0]
        if isinstance(first, tuple):
            return tuple(torch.cat([o[j] for o in outs]) for j in range(len(first)))
        return type(first)(sample=torch.cat([o.sample for o in outs]))

    module.forward = forward


def make_batch_invariant(pipe) -> None:
    from pipeline.families import family_of_pipe

    family = family_of_pipe(pipe)
    per_sample_forward(family.denoiser(pipe), family.unbatched_inputs)
    if getattr(pipe, "vae", None) is not None:
        pipe.vae.enable_slicing()
