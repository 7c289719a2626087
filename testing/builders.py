"""Shared builders for the tests: tiny configs whose genotypes exercise every candidate op."""

from __future__ import annotations

import torch

from hf_revdarts import RevDartsConfig
from hf_revdarts.model.genotype import DECODER_OPS, ENCODER_OPS


def every_op_genotype(layers: int, offset: int = 0) -> tuple[list[list[str]], list[list[str]]]:
    """Cycle through the op lists so that, together, encoder and decoder use every op at 6+ layers."""
    enc = [[ENCODER_OPS[(2 * i + j + offset) % len(ENCODER_OPS)] for j in range(2)] for i in range(layers)]
    start = 2 * layers + offset  # the decoder continues where the encoder stopped
    dec = [[DECODER_OPS[(start + 2 * i + j) % len(DECODER_OPS)] for j in range(2)] for i in range(layers)]
    return enc, dec


def tiny_config(layers: int = 2, d_model: int = 48, vocab_size: int = 60, **kw) -> RevDartsConfig:
    enc, dec = every_op_genotype(layers)
    defaults = dict(
        vocab_size=vocab_size,
        d_model=d_model,
        num_heads=2,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_genotype=enc,
        decoder_genotype=dec,
        dropout=0.1,
        attention_dropout=0.1,
        activation_dropout=0.1,
        max_position_embeddings=64,
    )
    defaults.update(kw)
    return RevDartsConfig(**defaults)


def tiny_search_config(layers: int = 2, dropout: float = 0.1, vocab_size: int = 200, **kw) -> RevDartsConfig:
    """A small config for supernets (no genotype: the supernet ignores it), every dropout at ``dropout``."""
    args = dict(
        vocab_size=vocab_size, d_model=48, num_heads=2, encoder_layers=layers, decoder_layers=layers,
        dropout=dropout, attention_dropout=dropout, activation_dropout=dropout, max_position_embeddings=32,
    )
    args.update(kw)
    return RevDartsConfig(**args)


def saved_tensor_bytes(stack: torch.nn.Module, x: torch.Tensor, *args) -> int:
    """Bytes autograd keeps for backward while ``stack(x, *args)`` runs forward."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        stack(x, *args)
    return total


def padded_batch(vocab_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Three source sentences of different lengths (right-padded) and labels padded with -100."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab_size, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    for row, length in ((1, 6), (2, 3)):
        ids[row, length:] = 0
        mask[row, length:] = 0
    labels = torch.randint(4, vocab_size, (3, 8), generator=g)
    labels[1, 5:] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def set_reversible(model: torch.nn.Module, reversible: bool) -> None:
    for module in model.modules():
        if hasattr(module, "reversible") and isinstance(module.reversible, bool):
            module.reversible = reversible


def param_grads(model: torch.nn.Module, batch: dict, seed: int = 123) -> dict[str, torch.Tensor]:
    """Gradients of every parameter for one training step with the given dropout seed."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    model(**batch).loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def grad_errors(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(global relative error, worst per-parameter relative error).

    Parameters whose true gradient is ~0 (key-projection biases: softmax ignores a constant shift) are
    compared against the global norm instead of their own, which is pure rounding noise.
    """
    assert got.keys() == ref.keys(), set(got) ^ set(ref)
    flat_ref = torch.cat([g.flatten() for g in ref.values()])
    flat_got = torch.cat([got[n].flatten() for n in ref])
    scale = flat_ref.norm()
    worst = 0.0
    for name, g in ref.items():
        denom = g.norm() if g.norm() > 1e-6 * scale else scale
        worst = max(worst, float((got[name] - g).norm() / denom))
    return float((flat_got - flat_ref).norm() / scale), worst


def load_script(name: str):
    """Import ``training/<name>.py`` as a module (under a name that shadows no library, e.g. ``evaluate``)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "training" / f"{name}.py"
    module_name = f"revdarts_script_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def supernet_grads_reversible_vs_ordinary(
    model: torch.nn.Module, batch: dict, seed: int = 123
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """Gradients of one loss through backprop-with-reconstruction, then with ordinary autograd (same dropout
    masks from ``seed``), and the α parameter names; asserts every α got a gradient."""

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        model(**batch).loss.backward()
        return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}

    rev = grads()
    set_reversible(model, False)
    ref = grads()
    names = {id(p): n for n, p in model.named_parameters()}
    arch = [names[id(a)] for a in model.arch_parameters()]
    assert all(n in ref and ref[n].abs().sum() > 0 for n in arch), "every α must get a gradient"
    return rev, ref, arch
