"""generate() with RevDarts's incremental cache: the generation config's defaults, cached decoding equal to uncached
decoding (greedy, beam search, sampling), one new position per step, and what the cache holds and reorders."""

from __future__ import annotations

import torch
import transformers

from hf_revdarts.model.genotype import DECODER_OPS
from hf_revdarts.model.modeling_revdarts import CACHE_FIELD, RevDartsCache

MAJOR = int(transformers.__version__.split(".")[0])


def _gen(model, batch, **kw) -> torch.Tensor:
    torch.manual_seed(1234)
    out = model.generate(**batch, **kw)
    return out if isinstance(out, torch.Tensor) else out.sequences


def test_generation_config_defaults(model, batch):
    gen = model.generation_config
    cfg = model.config
    assert (gen.decoder_start_token_id, gen.pad_token_id, gen.eos_token_id) == (1, 0, 2)
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id, cfg.decoder_start_token_id) == (0, 1, 2, 1)
    # v5 warns on every generate(max_new_tokens=...) when max_length is stored: there generate() supplies the
    # position limit itself (tests/model/test_generation.py checks a plain call reaches it); 4.57 stores it.
    assert gen.max_length == (None if MAJOR >= 5 else cfg.max_position_embeddings)
    out = model.generate(**batch)  # a plain call: start token, eos, pad and max length from generation_config
    assert (out[:, 0] == 1).all()
    assert out.shape[1] <= cfg.max_position_embeddings
    for row in out.tolist():  # after eos, only padding
        if 2 in row:
            assert all(t == 0 for t in row[row.index(2) + 1 :])


def _assert_varied(out: torch.Tensor) -> None:
    assert len(set(out[:, 1:].flatten().tolist())) > 4, f"degenerate generation, test proves little: {out}"


def test_cached_equals_uncached_greedy(model, batch):
    kw = dict(max_new_tokens=20, min_new_tokens=20, num_beams=1, do_sample=False)
    cached = _gen(model, batch, use_cache=True, **kw)
    uncached = _gen(model, batch, use_cache=False, **kw)
    _assert_varied(cached)
    assert cached.shape == (3, 21)
    assert torch.equal(cached, uncached)


def test_cached_equals_uncached_beam4(model, batch):
    kw = dict(max_new_tokens=16, num_beams=4, num_return_sequences=2, do_sample=False, early_stopping=True)
    cached = _gen(model, batch, use_cache=True, **kw)
    uncached = _gen(model, batch, use_cache=False, **kw)
    _assert_varied(cached)
    assert cached.shape[0] == 6
    assert torch.equal(cached, uncached)


def test_cached_equals_uncached_sampling(model, batch):
    kw = dict(max_new_tokens=12, do_sample=True, top_k=20, num_return_sequences=3)
    cached = _gen(model, batch, use_cache=True, **kw)
    uncached = _gen(model, batch, use_cache=False, **kw)
    assert cached.shape[0] == 9
    _assert_varied(cached)
    assert torch.equal(cached, uncached)


def test_one_position_per_new_token(model, batch):
    """After the first step the decoder gets exactly one new position per sequence, and the cross-attention
    keys/values are computed from the encoder output once per generate call."""
    lengths: list[int] = []
    cross_kv: list[int] = []

    def on_decoder(module, args, kwargs):
        embeds = args[0] if args else kwargs["inputs_embeds"]
        lengths.append(embeds.shape[1])

    cross = [
        split.op.op
        for layer in model.model.decoder.stack.layers
        for split in layer.functions
        if split.op.name == "cross_attn"
    ]
    hooks = [model.model.decoder.register_forward_pre_hook(on_decoder, with_kwargs=True)]
    hooks += [c.k_proj.register_forward_hook(lambda m, a, o: cross_kv.append(1)) for c in cross]
    try:
        for num_beams in (1, 4):
            lengths.clear()
            cross_kv.clear()
            out = model.generate(**batch, max_new_tokens=10, min_new_tokens=10, num_beams=num_beams, use_cache=True)
            steps = out.shape[1] - 1
            assert lengths == [1] * steps, lengths
            # one k_proj call per cross-attention split (the searched one and the fixed last split), not per step
            assert len(cross_kv) == len(cross) == model.config.decoder_layers + 1
        lengths.clear()
        out = model.generate(**batch, max_new_tokens=6, min_new_tokens=6, use_cache=False)
        assert lengths == list(range(1, out.shape[1])), lengths  # uncached: the whole prefix every step
    finally:
        for h in hooks:
            h.remove()


def test_cache_contents(model, batch):
    """Per layer and split: self-attention keys/values, each (dynamic) convolution's last w-1 inputs,
    the cross-attention keys/values of the encoder output."""
    dec_ids = torch.full((3, 1), model.config.decoder_start_token_id)
    out = model(**batch, decoder_input_ids=dec_ids, use_cache=True)
    cache = getattr(out, CACHE_FIELD)
    assert isinstance(cache, RevDartsCache) and cache.get_seq_length() == 1
    for _ in range(4):
        out = model(**batch, decoder_input_ids=dec_ids, use_cache=True, **{CACHE_FIELD: cache})
    assert cache.get_seq_length() == 5
    src_len = batch["input_ids"].shape[1]
    width = model.config.d_model // model.config.decoder_splits
    heads = model.config.num_heads
    seen = set()
    for names, state in zip(model.config.decoder_genotype, cache.layers):
        for k, name in enumerate(list(names) + ["cross_attn"]):
            sub = state[k]
            if name == "self_attn":
                assert sub["k"].shape == sub["v"].shape == (3, heads, 5, width // heads)
            elif name == "cross_attn":
                assert sub["k"].shape == (3, heads, src_len, width // heads)
            elif name.startswith(("conv_", "dynconv_")):
                w = int(name.split("_")[1])
                assert sub["prev"].shape == (3, w - 1, width)
            else:
                assert sub == {}
            seen.add(name)
    assert seen == set(DECODER_OPS)
    # reorder_cache follows beam indices; generate's within-sentence reordering keeps cross-attention as is
    last = model.config.decoder_splits - 1
    searched = {(i, k) for i, names in enumerate(model.config.decoder_genotype) for k, n in enumerate(names) if n == "cross_attn"}
    assert cache.static == {(i, last) for i in range(model.config.decoder_layers)} | searched
    before = cache.layers[0][0]["prev"].clone()
    cross = cache.layers[0][last]["k"]
    cache.reorder_cache(torch.tensor([2, 0, 1]), within_batch=True)
    assert torch.equal(cache.layers[0][0]["prev"], before[[2, 0, 1]])
    assert cache.layers[0][last]["k"] is cross
    cache.reorder_cache(torch.tensor([2, 0, 1]))
    assert torch.equal(cache.layers[0][last]["k"], cross[[2, 0, 1]])


def test_cached_logits_match_full_forward(model, batch):
    """Step-by-step cached logits equal one uncached forward over the whole decoder input."""
    torch.manual_seed(3)
    dec = torch.randint(4, model.config.vocab_size, (3, 7))
    dec[:, 0] = model.config.decoder_start_token_id
    full = model(**batch, decoder_input_ids=dec, use_cache=False).logits
    cache, steps = None, []
    for t in range(dec.shape[1]):
        kw = {CACHE_FIELD: cache} if cache is not None else {}
        out = model(**batch, decoder_input_ids=dec[:, t : t + 1], use_cache=True, **kw)
        cache = getattr(out, CACHE_FIELD)
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-4)
