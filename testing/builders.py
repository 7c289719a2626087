"""Builders shared by the tests: tiny configs whose genotypes exercise every candidate op, small models, batches
with padding, text files, and comparisons of gradients (reversible against ordinary autograd)."""

from __future__ import annotations

import gzip
from pathlib import Path

import torch

from hf_revdarts import RevDartsConfig, RevDartsForConditionalGeneration
from hf_revdarts.model.genotype import DECODER_OPS, ENCODER_OPS

# A few parallel sentences for tokenizers and data sets built inside a test.
TEXT_EN = ["a man rides a bike", "two dogs play in the snow", "a girl reads a book"] * 4
TEXT_DE = ["ein mann fährt rad", "zwei hunde spielen im schnee", "ein mädchen liest ein buch"] * 4

# One op of every kind, for supernets that stay quick (the per-op tests cover every op).
ONE_OP_PER_KIND = {"encoder_ops": ["conv_5", "dynconv_3", "self_attn", "glu", "ffn", "identity", "zero"],
                   "decoder_ops": ["conv_3", "dynconv_7", "self_attn", "cross_attn", "ffn", "identity", "zero"]}


def every_op_genotype(layers: int, offset: int = 0) -> tuple[list[list[str]], list[list[str]]]:
    """Cycle through the op lists so that, together, encoder and decoder use every op at 6+ layers."""
    enc = [[ENCODER_OPS[(2 * i + j + offset) % len(ENCODER_OPS)] for j in range(2)] for i in range(layers)]
    start = 2 * layers + offset  # the decoder continues where the encoder stopped
    dec = [[DECODER_OPS[(start + 2 * i + j) % len(DECODER_OPS)] for j in range(2)] for i in range(layers)]
    return enc, dec


def tiny_config(layers: int = 2, d_model: int = 48, vocab_size: int = 60, **kw) -> RevDartsConfig:
    """A small derived-model config with dropout everywhere and the op-cycling genotype of ``every_op_genotype``."""
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


def every_op_config(vocab_size: int, **kw) -> RevDartsConfig:
    """2 encoder layers; 7 decoder layers whose 14 searchable splits use every decoder op once (untied head)."""
    dec_ops = list(DECODER_OPS)
    dec = [dec_ops[2 * i : 2 * i + 2] for i in range(len(dec_ops) // 2)]
    enc = [["self_attn", "dynconv_7"], ["conv_5", "ffn"]]
    assert sorted(op for layer in dec for op in layer) == sorted(DECODER_OPS)
    args = dict(
        vocab_size=vocab_size,
        d_model=48,
        num_heads=2,
        encoder_layers=len(enc),
        decoder_layers=len(dec),
        encoder_genotype=enc,
        decoder_genotype=dec,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        dropout=0.1,
    )
    args.update(kw)
    return RevDartsConfig(**args)


def small_model(**kw) -> RevDartsForConditionalGeneration:
    """A seeded one-layer model of ``tiny_config`` without dropout (``kw`` overrides its settings)."""
    torch.manual_seed(0)
    defaults = dict(layers=1, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    defaults.update(kw)
    return RevDartsForConditionalGeneration(tiny_config(**defaults))


def tiny_search_config(layers: int = 2, dropout: float = 0.1, vocab_size: int = 200, **kw) -> RevDartsConfig:
    """A small config for supernets (no genotype: the supernet ignores it), every dropout at ``dropout``."""
    args = dict(
        vocab_size=vocab_size, d_model=48, num_heads=2, encoder_layers=layers, decoder_layers=layers,
        dropout=dropout, attention_dropout=dropout, activation_dropout=dropout, max_position_embeddings=32,
    )
    args.update(kw)
    return RevDartsConfig(**args)


def write_lines(folder: Path, name: str, lines: list[str], gz: bool = False) -> None:
    """``lines`` as the text file ``folder/name`` (``folder/name.gz`` with ``gz``), one per line."""
    folder.mkdir(parents=True, exist_ok=True)
    data = "".join(line + "\n" for line in lines)
    if gz:
        with gzip.open(folder / (name + ".gz"), "wt", encoding="utf-8") as f:
            f.write(data)
    else:
        (folder / name).write_text(data, encoding="utf-8")


def save_model_folder(model: torch.nn.Module, tokenizer, folder: Path) -> Path:
    """The model and its tokenizer saved as one folder, as a trained model is published."""
    from hf_revdarts.training.tokenization import save_tokenizer

    model.save_pretrained(folder)
    save_tokenizer(tokenizer, folder)
    return folder


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


def set_alpha(model: torch.nn.Module, node: str, op: str, value: float) -> None:
    """Set one α logit of a supernet: the one of ``op`` at ``node`` (e.g. ``"encoder.p0.s1"``)."""
    with torch.no_grad():
        dict(model.named_arch_parameters())[node][model.op_names(node.split(".")[0]).index(op)] = value


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
