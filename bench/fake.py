"""Running the trainer's step on fake tensors and counting what it would hold: the machinery of ``bench/estimate.py``.

:class:`LiveBytes` (a ``TorchDispatchMode``) counts the bytes of every live tensor storage by kind and the
operators that stand for a kernel launch (:func:`launches_kernel`); :func:`fake_mode` / :func:`weak_memo` make a
``FakeTensorMode`` the trainer's model setup runs under; :func:`bitsandbytes_stand_in` and
:func:`real_flow_schedulers` stand in for what cannot run on fake tensors on a CPU (bitsandbytes' CUDA-only 8-bit
AdamW; a scheduler constructor that reads a tensor's value). What the estimate does with them: bench/estimate.py.
"""
from __future__ import annotations

import weakref

CATEGORIES = ("weights", "gradients", "optimizer", "activations")
CUDA_BLOCK = 512  # bytes: the CUDA caching allocator rounds every allocation up to a multiple of this


def _storages(t):
    """The untyped storages behind a tensor (one for a plain or fake tensor)."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if is_traceable_wrapper_subclass(t):
        attrs, _ = t.__tensor_flatten__()
        return [s for a in attrs for s in _storages(getattr(t, a))]
    return [t.untyped_storage()]


# Operators that make a tensor without running a kernel on it (allocation, metadata): not counted as launches.
_NO_KERNEL = frozenset({"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "lift_fresh",
                        "detach", "alias", "_to_copy_noop"})


def launches_kernel(func, out) -> bool:
    """Whether operator ``func`` (an OpOverload) with outputs ``out`` stands for a device kernel: it computes
    a tensor (metadata queries such as ``prim.device``, which a tensor subclass dispatches for every Python
    ``.device`` access, do not) or writes into one of its arguments (in-place ``_foreach_*_`` operators and
    fused AdamW return None), is not a view and not a bare allocation (:data:`_NO_KERNEL`). A proxy: a fused
    CUDA kernel (fused AdamW, SDPA, a foreach operator) counts once, and an operator may launch more than one
    kernel."""
    import torch
    from torch.utils._pytree import tree_leaves

    if func.is_view or func.namespace == "prim" or func.overloadpacket.__name__ in _NO_KERNEL:
        return False
    if any(isinstance(t, torch.Tensor) for t in tree_leaves(out)):
        return True
    return any(a.alias_info is not None and a.alias_info.is_write for a in func._schema.arguments)


class LiveBytes:
    """Bytes of live tensor storages by category, and the breakdown at the peak of their sum.

    Use :meth:`mode` (a ``TorchDispatchMode``) around the work; every operator's outputs are
    counted once per storage, in the category :attr:`phase` names when they appear; a storage
    stops counting when it is freed (weakref callback). :meth:`add` registers tensors that exist
    already (weights) and :meth:`retag` moves one to another category (a gradient, once autograd
    has stored it in ``.grad``). Sizes are rounded up to ``round_to`` bytes (CUDA: 512).
    """

    def __init__(self, round_to: int = CUDA_BLOCK):
        from torch.utils.weak import WeakIdKeyDictionary

        self.round_to = round_to
        self.live = WeakIdKeyDictionary()  # storage -> entry [category, bytes, weakref]
        self.current = dict.fromkeys(CATEGORIES, 0)
        self.peak = dict(self.current)
        self.peak_total = 0
        self.phase = "activations"
        self.ops = 0  # operators that compute a tensor (launches_kernel): about one GPU kernel each

    @property
    def total(self) -> int:
        return sum(self.current.values())

    def _free(self, entry, _ref) -> None:
        self.current[entry[0]] -= entry[1]

    def add(self, t, category: str | None = None) -> None:
        """Count ``t``'s storage (bytes, rounded) under ``category`` (default: the phase) unless counted already."""
        for st in _storages(t):
            if st in self.live:
                continue
            nbytes = -(-st.nbytes() // self.round_to) * self.round_to
            entry = [category or self.phase, nbytes, None]
            entry[2] = weakref.ref(st, lambda ref, e=entry: self._free(e, ref))
            self.live[st] = entry
            self.current[entry[0]] += nbytes
        self.update_peak()

    def retag(self, t, category: str) -> None:
        """Move ``t``'s storage to ``category`` (counting it first if it is new)."""
        for st in _storages(t):
            entry = self.live.get(st)
            if entry is None:
                self.add(t, category)
            elif entry[0] != category:
                self.current[entry[0]] -= entry[1]
                self.current[category] += entry[1]
                entry[0] = category

    def discount(self, t) -> None:
        """Stop counting ``t``'s storage (a module offloaded to CPU memory: not on the card)."""
        for st in _storages(t):
            entry = self.live.get(st)
            if entry is not None:
                self.current[entry[0]] -= entry[1]
                entry[1] = 0

    def update_peak(self) -> None:
        total = self.total
        if total > self.peak_total:
            self.peak_total, self.peak = total, dict(self.current)

    def mode(self):
        """A ``TorchDispatchMode`` that counts every operator's tensor outputs."""
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_map_only

        tracker = self

        class _Count(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                if launches_kernel(func, out):
                    tracker.ops += 1
                tree_map_only(torch.Tensor, tracker.add, out)
                return out

        return _Count()


def fake_mode():
    """A ``FakeTensorMode`` whose parameters can be moved with ``Module.to``.

    FakeTensorMode memoises converted tensors in a ``WeakValueDictionary``; ``Module.to`` swaps a
    fake parameter (``torch.utils.swap_tensors``), which refuses a tensor with a weak reference.
    A plain dict keeps the memo without weak references while the models are set up; call
    :func:`weak_memo` before the step runs, or the dict keeps every tensor converted during the
    step (activations among them) alive, and the count with it.
    ``copy.deepcopy`` of a fake parameter (DPO's reference UNet) copies its ``__dict__``, which
    holds the mode: the mode deep-copies as itself.
    """
    from torch._subclasses import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    mode.fake_tensor_converter.meta_converter.tensor_memo = {}
    mode.__deepcopy__ = lambda memo: mode
    return mode


def weak_memo(mode) -> None:
    """Back to FakeTensorMode's own weak memo (see :func:`fake_mode`): from here on, a converted
    tensor lives only as long as the step holds it."""
    mode.fake_tensor_converter.meta_converter.tensor_memo = weakref.WeakValueDictionary()


class AdamW8bitStandIn:
    """The memory of bitsandbytes' ``AdamW8bit`` (which needs CUDA and is not installed here), as the estimate sees it.

    bitsandbytes' 8-bit optimizers (Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization")
    keep both moments as uint8 with one fp32 absmax per block of 256 values, and 32-bit moments for
    tensors under 4096 values (``min_8bit_size``); the fused CUDA kernel updates the weights in place
    (no temporaries). Modelled: that state, allocated at the first step, and an in-place update.
    A ``torch.optim.Optimizer`` subclass, built through ``bitsandbytes.optim.AdamW8bit`` by
    :func:`bitsandbytes_stand_in` so ``train.model_setup.build_optimizer`` runs its own path.
    """

    @staticmethod
    def make():
        import torch

        class AdamW8bit(torch.optim.Optimizer):
            def __init__(self, params, lr=1e-3, **_kwargs):
                super().__init__(params, dict(lr=lr))

            @torch.no_grad()
            def step(self, closure=None):
                for group in self.param_groups:
                    for p in group["params"]:
                        if p.grad is None:
                            continue
                        state = self.state[p]
                        if not state:
                            if p.numel() < 4096:
                                state["state1"], state["state2"] = torch.zeros_like(p, dtype=torch.float32), \
                                    torch.zeros_like(p, dtype=torch.float32)
                            else:
                                blocks = -(-p.numel() // 256)
                                state["state1"] = torch.zeros_like(p, dtype=torch.uint8)
                                state["state2"] = torch.zeros_like(p, dtype=torch.uint8)
                                state["absmax1"], state["absmax2"] = torch.zeros(blocks), torch.zeros(blocks)
                        p.add_(p.grad, alpha=-group["lr"])  # in place, as the fused kernel
        return AdamW8bit


def bitsandbytes_stand_in():
    """A context in which ``import bitsandbytes`` gives :class:`AdamW8bitStandIn` as ``optim.AdamW8bit``."""
    import contextlib
    import sys
    import types

    @contextlib.contextmanager
    def ctx():
        saved = sys.modules.get("bitsandbytes")
        module = types.ModuleType("bitsandbytes")
        module.optim = types.SimpleNamespace(AdamW8bit=AdamW8bitStandIn.make())
        sys.modules["bitsandbytes"] = module
        try:
            yield
        finally:
            if saved is None:
                sys.modules.pop("bitsandbytes", None)
            else:
                sys.modules["bitsandbytes"] = saved
    return ctx()


def real_flow_schedulers():
    """A context in which ``FlowMatchEulerDiscreteScheduler`` is built on real tensors even under FakeTensorMode.

    Its constructor reads ``sigmas[-1].item()``, a data-dependent call that a fake tensor refuses; its tables
    (1000 sigmas and timesteps) are a few KB of CPU memory that the step indexes, never on the card's count.
    """
    import contextlib
    import functools

    from diffusers import FlowMatchEulerDiscreteScheduler
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    @contextlib.contextmanager
    def ctx():
        original = FlowMatchEulerDiscreteScheduler.__init__

        @functools.wraps(original)
        def init(self, *args, **kwargs):
            with unset_fake_temporarily():
                original(self, *args, **kwargs)

        FlowMatchEulerDiscreteScheduler.__init__ = init
        try:
            yield
        finally:
            FlowMatchEulerDiscreteScheduler.__init__ = original
    return ctx()
