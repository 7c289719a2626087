"""The ranking diagnostic's statistics (benchmarks/supernet_ranking.py): τ oriented so that +1 is a predictor that
orders genotypes as training them alone does, for losses and for parameter counts alike; undefined τ is None;
a proxy's stacked genotypes are unstacked to its block."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hf_revdarts.model.genotype import Genotype
from testing.scripts import load_benchmark

ranking_module = load_benchmark("supernet_ranking")


def _rows(losses, params, seed1=None, bleu=None):
    return [{"runs": [f"r{i}"], "kind": "random", "genotype": None, "parameters": p,
             "val_loss": {0: v, **({1: seed1[i]} if seed1 else {})}, "bleu": {0: (bleu or losses)[i]}}
            for i, (v, p) in enumerate(zip(losses, params))]


def test_tau_is_plus_one_for_a_perfect_predictor_of_each_kind():
    losses = [3.1, 3.4, 3.2, 3.6, 3.3]
    rows = _rows(losses, params=[5, 2, 4, 1, 3], seed1=[3.0, 3.5, 3.1, 3.7, 3.2], bleu=[-v for v in losses])
    result = ranking_module.ranking(rows, {"s": [v + 1.0 for v in losses], "partial": [1.0, None, 2.0, None, None]},
                                    {"s": [-v for v in losses]})  # α: the likelier genotype trains to the lower loss
    table = result["against_val_loss"]
    assert table["α of s"]["tau"] == pytest.approx(1.0) and table["α of s"]["genotypes"] == 5
    assert table["supernet s"]["tau"] == pytest.approx(1.0) and table["supernet s"]["genotypes"] == 5
    low, high = table["supernet s"]["ci95"]
    assert low == pytest.approx(1.0) and high == pytest.approx(1.0)
    assert table["parameter count"]["tau"] == pytest.approx(1.0)  # more parameters, lower loss: agreement
    assert table["another training seed (ceiling)"]["tau"] == pytest.approx(1.0)
    assert table["supernet partial"]["genotypes"] == 2 and table["supernet partial"]["ci95"] is None
    assert result["parameters_vs_test_bleu"]["tau"] == pytest.approx(1.0)
    assert result["val_loss_vs_test_bleu"]["tau"] == pytest.approx(1.0)
    reversed_ = ranking_module.ranking(rows, {"s": [-v for v in losses]})["against_val_loss"]["supernet s"]
    assert reversed_["tau"] == pytest.approx(-1.0)
    assert ranking_module.tau([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None  # a constant ranking orders nothing


def test_unstacked_takes_the_block_a_proxy_searched():
    proxy = SimpleNamespace(config=SimpleNamespace(encoder_layers=2, decoder_layers=2))
    block = {"encoder": [["conv_3", "glu"], ["ffn", "conv_7"]], "decoder": [["cross_attn", "glu"], ["ffn", "conv_3"]]}
    stacked = Genotype.from_dict({side: rows * 2 for side, rows in block.items()})
    assert ranking_module.unstacked(stacked, proxy) == Genotype.from_dict(block)
    other = Genotype.from_dict({**stacked.to_dict(), "encoder": block["encoder"] + [["glu", "glu"], ["ffn", "conv_7"]]})
    assert ranking_module.unstacked(other, proxy) is None


def test_a_search_that_trained_the_same_supernet_as_another_is_ranked_once(tmp_path):
    """The ``sampled`` variant differs from the base search only in its selection: with the same seed its supernet
    is the base's, weight for weight, and a second column would only repeat its τ."""
    for search, weights in (("search-s0", b"w0"), ("search-s1", b"w1"), ("search-sampled-s0", b"w0")):
        (tmp_path / search / "supernet").mkdir(parents=True)
        (tmp_path / search / "supernet" / "model.safetensors").write_bytes(weights)
    searches = ["search-s0", "search-s1", "search-sampled-s0"]
    assert ranking_module.distinct_supernets(tmp_path, searches) == ["search-s0", "search-s1"]
    (tmp_path / "search-sampled-s0" / "supernet" / "model.safetensors").write_bytes(b"w2")  # another supernet after all
    assert ranking_module.distinct_supernets(tmp_path, searches) == searches


def test_each_supernet_is_named_with_the_recipe_its_search_ran(tmp_path):
    """A reader of the τ table needs to know which supernet is the base search's and which a variant's (the proxy,
    the documented-until-December one): the record says, and a search without a record is refused by name."""
    (tmp_path / "search-s0.json").write_text('{"search_variant": null}')
    (tmp_path / "search-long-s0.json").write_text('{"search_variant": "long"}')
    recipes = ranking_module.search_recipes(tmp_path, ["search-long-s0", "search-s0"])
    assert recipes == {"search-long-s0": "long", "search-s0": "default"}
    assert ranking_module.predictor_recipe("α of search-long-s0", recipes) == "long"
    assert ranking_module.predictor_recipe("parameter count", recipes) == "—"
    with pytest.raises(SystemExit, match="search-s1"):
        ranking_module.search_recipes(tmp_path, ["search-s1"])


def test_a_warm_up_checkpoint_loads_whole_or_is_refused_by_name(tmp_path):
    """The warm-up checkpoint (accelerate's ``model.safetensors``) keeps one name of each tied tensor: loading it
    gives every weight of the supernet that saved it, and a checkpoint of another supernet is refused by name."""
    import torch
    from safetensors.torch import save_model

    from hf_revdarts.search import RevDartsSupernet
    from testing.builders import tiny_search_config

    torch.manual_seed(0)
    saved = RevDartsSupernet(tiny_search_config(vocab_size=60))
    save_model(saved, str(tmp_path / "model.safetensors"))  # drops the tied duplicates, as the checkpoint does
    torch.manual_seed(1)
    fresh = RevDartsSupernet(tiny_search_config(vocab_size=60))
    ranking_module.load_weights(fresh, tmp_path / "model.safetensors")
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in saved.state_dict().items())
    other = RevDartsSupernet(tiny_search_config(layers=3, vocab_size=60))
    with pytest.raises(ValueError, match="model.safetensors: not this supernet's weights"):
        ranking_module.load_weights(other, tmp_path / "model.safetensors")


def test_a_search_without_an_alpha_phase_is_not_ranked_twice(tmp_path):
    """A ``spos`` search's warm-up checkpoint holds its final supernet, and its α never moved from the random
    initialisation: only a search with α steps gets a warm-up column and an α ranking (an older search, whose
    summary predates ``alpha_steps``, keeps both)."""
    assert ranking_module.has_alpha_phase(tmp_path)
    (tmp_path / "warmup" / "checkpoint-001000").mkdir(parents=True)
    (tmp_path / "warmup" / "checkpoint-001000" / "model.safetensors").write_bytes(b"w")
    assert ranking_module.warmup_weights(tmp_path) == tmp_path / "warmup" / "checkpoint-001000" / "model.safetensors"
    (tmp_path / "search_summary.json").write_text('{"alpha_steps": 300}')
    assert ranking_module.warmup_weights(tmp_path) is not None
    (tmp_path / "search_summary.json").write_text('{"alpha_steps": 0}')
    assert ranking_module.warmup_weights(tmp_path) is None and not ranking_module.has_alpha_phase(tmp_path)
