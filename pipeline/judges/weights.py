"""Judge weights files: a local path, a URL (cached), or an ``org/repo/file`` hub file."""
from __future__ import annotations

import os
from pathlib import Path

from pipeline.errors import ModelNotFoundError, one_line


def cache_dir() -> Path:
    """Where downloaded judge weights and the tiny random ones live (``<cache root>/scorers``)."""
    from pipeline.models.builtin import cache_root

    return cache_root() / "scorers"


def resolve_weights_file(spec: str, what: str) -> str:
    """Return a local file for ``spec`` (path, URL, or ``org/repo/filename`` hub file).

    With ``HF_HUB_OFFLINE=1`` only caches are looked at.

    Raises:
        ModelNotFoundError: not found (or not downloadable), one line saying what was looked for and how to
            provide it (``--<what>-weights``).
    """
    import torch

    from pipeline.data.atomic import atomic_write
    from pipeline.judges.clip_embed import hub_offline

    path = Path(spec).expanduser()
    if path.is_file():
        return str(path)
    how = f"download it where there is network or pass a local file with --{what}-weights"
    if spec.startswith(("http://", "https://")):
        cached = cache_dir() / os.path.basename(spec)
        if cached.is_file():
            return str(cached)
        if hub_offline():
            raise ModelNotFoundError(
                f"{what} weights not found: {cached} is not cached (offline; source {spec}); {how}"
            )
        try:
            with atomic_write(cached) as tmp:
                torch.hub.download_url_to_file(spec, str(tmp), progress=False)
        except Exception as exc:  # noqa: BLE001 - any download failure is one line
            raise ModelNotFoundError(
                f"{what} weights could not be downloaded from {spec}: {one_line(exc, 200)}; {how}"
            ) from None
        return str(cached)
    parts = spec.split("/")
    if len(parts) >= 3 and not spec.startswith(("/", ".", "~")) and not path.exists():
        from huggingface_hub import hf_hub_download

        repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
        try:
            return hf_hub_download(repo, filename, local_files_only=hub_offline())
        except Exception as exc:  # noqa: BLE001 - offline miss, unknown repo, network: one line
            where = "the Hugging Face cache (offline)" if hub_offline() else "the hub"
            raise ModelNotFoundError(
                f"{what} weights {spec} not found in {where}: {one_line(exc, 200)}; {how}"
            ) from None
    raise ModelNotFoundError(f"{what} weights file not found: {spec}; {how}")


def check_pairs(images, prompts) -> None:
    """Raise :class:`~pipeline.errors.UserError` unless there is one prompt per image."""
    from pipeline.errors import UserError

    if len(images) != len(prompts):
        raise UserError(f"{len(images)} images but {len(prompts)} prompts: need one prompt per image")


def weights_version(describe):
    """A ``JudgeSpec.version`` for a judge with weights: ``"tiny random weights"`` under ``--tiny-scorers``,
    else ``describe(options)`` (the weights the user named)."""
    def version(options) -> str:
        return "tiny random weights" if options.tiny else describe(options)
    return version


def tiny_once(root: Path, name: str, build) -> None:
    """Run ``build()`` unless ``root/.<name>.complete`` says it ran (the marker is written last: a half-built
    set of tiny weights is rebuilt)."""
    done = root / f".{name}.complete"
    if not done.exists():
        root.mkdir(parents=True, exist_ok=True)
        build()
        done.write_text("ok\n")


def from_pretrained(cls, source: str, what: str, **kwargs):
    """``cls.from_pretrained(source, **kwargs)`` with an unreadable file named in one line
    (:func:`pipeline.models.weights_files.reading_weights`: a truncated file, an HTML page, a config that is not
    JSON)."""
    from pipeline.models.weights_files import reading_weights

    with reading_weights(source, what):
        return cls.from_pretrained(source, **kwargs)
