"""Multi-split reversible coupling and backpropagation with reconstruction.

A layer splits its input X (width d) into n parts and, for k = 1..n in order, computes

    Y_k = X_k + G_k(X_{k+1}, ..., X_n, Y_1, ..., Y_{k-1})

whose exact inverse, for k = n..1, is X_k = Y_k - G_k(same inputs). ``ReversibleStack`` runs a list of
such layers either with ordinary autograd (every activation kept) or through one
``_ReversibleLayerFunction`` per layer, which together keep only the stack's output and rebuild each
layer's input from its output during backward.

This file is copied next to saved models (``trust_remote_code``); it imports only torch and ``.ops``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from .ops import OpContext


class RngState:
    """The CPU (and, for CUDA inputs, the device's) RNG state before a split function ran, so that its
    dropout masks are replayed bit-exactly when it is recomputed in backward."""

    def __init__(self, device: torch.device) -> None:
        self.cpu = torch.get_rng_state()
        self.device = device if device.type == "cuda" else None
        self.cuda = torch.cuda.get_rng_state(device) if self.device is not None else None

    def replay(self) -> Any:
        fork = torch.random.fork_rng(devices=[self.device] if self.device is not None else [])
        fork.__enter__()
        torch.set_rng_state(self.cpu)
        if self.device is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)
        return fork


class ReversibleLayer(nn.Module):
    """One n-split coupling layer; ``functions[k]`` is G_k, called as ``G_k(inputs, ctx, side, state)``."""

    def __init__(self, functions: list[nn.Module]) -> None:
        super().__init__()
        self.functions = nn.ModuleList(functions)

    @property
    def splits(self) -> int:
        return len(self.functions)

    def forward(
        self,
        x: torch.Tensor,
        ctx: OpContext,
        side: torch.Tensor | None = None,
        state: dict | None = None,
        rng: list | None = None,
    ) -> torch.Tensor:
        xs = list(x.chunk(self.splits, dim=-1))
        ys: list[torch.Tensor] = []
        for k, g in enumerate(self.functions):
            if rng is not None:
                rng.append(RngState(x.device) if self.training else None)
            sub = None if state is None else state.setdefault(k, {})
            ys.append(xs[k] + g(xs[k + 1 :] + ys, ctx, side, sub))
        return torch.cat(ys, dim=-1)

    @torch.no_grad()
    def inverse(self, y: torch.Tensor, ctx: OpContext, side: torch.Tensor | None = None) -> torch.Tensor:
        """X from Y (eval mode: no dropout). Used by tests; backward uses the fused ``backward_step``."""
        parts = list(y.chunk(self.splits, dim=-1))
        for k in reversed(range(self.splits)):
            parts[k] = parts[k] - self.functions[k](parts[k + 1 :] + parts[:k], ctx, side, None)
        return torch.cat(parts, dim=-1)

    def backward_step(
        self,
        y: torch.Tensor,
        dy: torch.Tensor,
        ctx: OpContext,
        side: torch.Tensor | None,
        rng: list,
        params: dict[str, torch.Tensor],
        aliases: dict[str, str],
        grads: dict[str, torch.Tensor],
        side_grad: list,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rebuild X from Y and turn dL/dY into dL/dX, accumulating parameter and side-input gradients.

        Undoes the couplings from the last split to the first. At step k the parts hold
        (Y_1..Y_k, X_{k+1}..X_n); G_k is recomputed once with grad enabled and serves both the
        reconstruction X_k = Y_k - G_k and the vector-Jacobian product with dL/dY_k.

        ``params`` are the layer's trainable parameters as forward saw them, by name (see ``_param_table``),
        ``aliases`` maps every name a parameter is registered under to that name; gradients are accumulated
        in ``grads`` under it. Wrappers such as FSDP swap the module's parameter objects between forward and
        backward (or unregister them), so backward must not look them up on the module.
        """
        parts = [p.detach() for p in y.chunk(self.splits, dim=-1)]
        dparts = list(dy.chunk(self.splits, dim=-1))
        for k in reversed(range(self.splits)):
            g_fn = self.functions[k]
            others = list(range(k + 1, self.splits)) + list(range(k))
            inputs = [parts[j].detach().requires_grad_() for j in others]
            # Recompute on detached stand-ins of the parameters: the inner autograd.grad must not fire the
            # user's (or DDP's) hooks on the real parameters; they see the gradient once, when we return it.
            # A parameter registered under several names of G_k gets one stand-in (tied, its gradients summed).
            prefix = f"functions.{k}."
            local = {a[len(prefix) :]: c for a, c in aliases.items() if a.startswith(prefix)}
            own = {c: params[c].detach().requires_grad_() for c in dict.fromkeys(local.values())}
            stand_ins = {a: own[c] for a, c in local.items()}
            fork = rng[k].replay() if rng[k] is not None else None
            try:
                out = functional_call(g_fn, stand_ins, (inputs, ctx, side, None))
            finally:
                if fork is not None:
                    fork.__exit__(None, None, None)
            with torch.no_grad():
                parts[k] = parts[k] - out
            if not out.requires_grad:  # e.g. the zero op: nothing flows back through G_k
                continue
            wrt = inputs + ([side] if side is not None and side.requires_grad else []) + list(own.values())
            got = torch.autograd.grad(out, wrt, grad_outputs=dparts[k], allow_unused=True)
            for j, gj in zip(others, got[: len(inputs)]):
                if gj is not None:
                    dparts[j] = dparts[j] + gj
            rest = got[len(inputs) :]
            if side is not None and side.requires_grad:
                if rest[0] is not None:
                    side_grad[0] = rest[0] if side_grad[0] is None else side_grad[0] + rest[0]
                rest = rest[1:]
            for key, gp in zip(own, rest):
                if gp is not None:
                    grads[key] = gp if key not in grads else grads[key] + gp
        return torch.cat(parts, dim=-1), torch.cat(dparts, dim=-1)


class _Tape:
    """Shared by the layer Functions of one reversible pass through a stack.

    After forward it holds the stack output; during backward, the (reconstructed) output of the layer whose
    backward runs next: autograd runs layer i's backward only after layer i+1's, which rebuilt layer i's
    output as its own input. No layer Function saves a tensor, so memory stays that of one layer.
    """

    def __init__(self, side: torch.Tensor | None, device_type: str) -> None:
        self.y: torch.Tensor | None = None
        self.next = -1  # index of the layer whose backward must run next
        self.side = side
        self._side_in: torch.Tensor | None = None
        self.autocast = _autocast_state(device_type)

    def side_input(self) -> torch.Tensor | None:
        # One detached leaf for all layers: each layer's vector-Jacobian product w.r.t. the encoder output.
        if self.side is not None and self._side_in is None:
            self._side_in = self.side.detach().requires_grad_(self.side.requires_grad)
        return self._side_in


class _ReversibleLayerFunction(torch.autograd.Function):
    """One reversible layer whose backward rebuilds its input from its output (read from the tape).

    The layer's parameters are inputs of the Function and their gradients its return values (no ``.grad``
    written on the side), so ``torch.autograd.grad``, hooks and DDP's reducer see them like any other;
    one Function per layer keeps just one layer's parameter gradients alive at a time.
    """

    @staticmethod
    def forward(ctx, x, side, layer, index, op_ctx, tape, anchor, table, *params):  # type: ignore[override]
        ctx.layer, ctx.index, ctx.op_ctx, ctx.tape = layer, index, op_ctx, tape
        # the parameter tensors forward used (not saved tensors: parameters, or a wrapper's views of them)
        ctx.param_names, ctx.aliases = table
        ctx.params = dict(zip(ctx.param_names, params))
        # An exact copy of the input every k layers: reconstruction error restarts from zero there.
        ctx.anchor = x.detach() if anchor else None
        ctx.rng = []
        y = layer(x, op_ctx, side, None, ctx.rng)
        tape.y, tape.next = y.detach(), index
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        tape = ctx.tape
        y, tape.y = tape.y, None
        if y is None or tape.next != ctx.index:
            raise RuntimeError(
                "backward through reversible layers ran twice for one forward pass (retain_graph / a second "
                "autograd.grad); reconstruction consumes the activations: use config.reversible=False for that"
            )
        grads: dict[str, torch.Tensor] = {}
        side_grad: list = [None]
        device_type, enabled, dtype = tape.autocast
        with torch.enable_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
            x, dx = ctx.layer.backward_step(
                y, dy, ctx.op_ctx, tape.side_input(), ctx.rng, ctx.params, ctx.aliases, grads, side_grad
            )
        if ctx.index > 0:
            tape.y, tape.next = (ctx.anchor if ctx.anchor is not None else x), ctx.index - 1
        return (dx, side_grad[0], None, None, None, None, None, None) + tuple(grads.get(n) for n in ctx.param_names)


def _autocast_state(device_type: str) -> tuple[str, bool, torch.dtype]:
    if device_type not in ("cpu", "cuda", "xpu", "mps"):
        return device_type, False, torch.float32
    return device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


class ReversibleStack(nn.Module):
    """A stack of reversible layers.

    ``reversible=True`` trains with backpropagation-with-reconstruction; ``False`` runs the same layers
    with ordinary autograd, optionally with per-layer activation checkpointing (``gradient_checkpointing``).
    Incremental decoding (a ``cache`` given) and inference without grad run the layers directly.

    Hybrid (``reversible=True``, ``keep_layers=k > 0``): the top k layers run with ordinary autograd (their
    activations kept), the layers below are reconstructed. The top layers are the cheapest to keep: backward
    starts there, so their activations are freed before any reconstruction runs and never add to its peak.
    The top layers consume the bottom part's output as an ordinary tensor, whose gradient flows back into
    the reversible Functions, so gradients stay those of ordinary autograd.
    """

    def __init__(
        self, layers: list[ReversibleLayer], reversible: bool = True, exact_every: int = 0, keep_layers: int = 0
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.reversible = reversible
        self.exact_every = exact_every
        self.keep_layers = keep_layers
        self.gradient_checkpointing = False

    def forward(
        self,
        x: torch.Tensor,
        ctx: OpContext,
        side: torch.Tensor | None = None,
        cache: list[dict] | None = None,
    ) -> torch.Tensor:
        if cache is not None:
            for layer, state in zip(self.layers, cache):
                x = layer(x, ctx, side, state)
            return x
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad
            or (side is not None and side.requires_grad)
            or any(p.requires_grad for p in self.parameters())
        )
        kept = self.layers
        if self.reversible and needs_grad:
            if self.keep_layers < 0:
                raise ValueError(f"keep_layers={self.keep_layers} must be >= 0 (0 = reconstruct every layer)")
            reconstructed = max(len(self.layers) - self.keep_layers, 0)
            tape = _Tape(side, x.device.type)
            for i, layer in enumerate(self.layers[:reconstructed]):
                _check_not_sharded(layer, i)
                anchor = bool(self.exact_every) and i > 0 and i % self.exact_every == 0
                names, params, aliases = _param_table(layer)
                x = _ReversibleLayerFunction.apply(x, side, layer, i, ctx, tape, anchor, (names, aliases), *params)
            kept = self.layers[reconstructed:]
        for layer in kept:
            if self.gradient_checkpointing and needs_grad:
                fn = getattr(self, "_gradient_checkpointing_func", None)
                x = fn(layer.__call__, x, ctx, side) if fn is not None else checkpoint(
                    layer, x, ctx, side, use_reentrant=False
                )
            else:
                x = layer(x, ctx, side)
        return x


def _check_not_sharded(layer: nn.Module, index: int) -> None:
    # FSDP1 wraps the layer (a FullyShardedDataParallel in the stack), FSDP2 changes its class (an FSDPModule).
    if isinstance(layer, ReversibleLayer) and not any(c.__name__ == "FSDPModule" for c in type(layer).__mro__):
        return
    raise RuntimeError(
        f"layer {index} of a reversible stack is its own FSDP unit ({type(layer).__name__}): reconstruction runs "
        "it again inside backward, after FSDP has resharded its parameters. Shard the whole model as one FSDP unit "
        "(no per-layer auto-wrap policy), keep the sharded layers (config.reversible_keep_layers) or train with "
        "config.reversible=False"
    )


def _unique_params(module: nn.Module) -> list[nn.Parameter]:
    # A parameter used twice within a layer is one input of its Function (one gradient returned); one tied
    # across layers (α shared by a repeated block) is an input of each, and autograd sums them.
    return [p for p in module.parameters() if p.requires_grad]


def _param_table(module: nn.Module) -> tuple[list[str], list[torch.Tensor], dict[str, str]]:
    """The trainable parameters of a layer once each (``_unique_params``' order) with their first names, and every
    name they are registered under mapped to that first name."""
    first: dict[int, str] = {}
    names, params, aliases = [], [], {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if not p.requires_grad:
            continue
        if id(p) not in first:
            first[id(p)] = name
            names.append(name)
            params.append(p)
        aliases[name] = first[id(p)]
    return names, params, aliases
