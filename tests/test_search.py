"""Search: supernet gradients (reversible = ordinary autograd), architect, data loading, the search script
(one process, two processes, SIGKILL + resume) and its input checks."""

from __future__ import annotations

import functools
import gzip
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _helpers import (  # noqa: E402
    grad_errors,
    load_script,
    padded_batch,
    supernet_grads_reversible_vs_ordinary,
    tiny_search_config,
)
from hf_revdarts import RevDartsConfig, RevDartsForConditionalGeneration  # noqa: E402
from hf_revdarts.configuration_revdarts import DECODER_OPS, ENCODER_OPS  # noqa: E402
from hf_revdarts.data import (  # noqa: E402
    BatchStream,
    load_parallel_text,
    pairs_from_dataset,
    shard,
    token_batches,
)
from hf_revdarts.reversible import _unique_params  # noqa: E402
from hf_revdarts.search import Architect, CollapseGuard, RevDartsSupernet  # noqa: E402
from hf_revdarts.search.architect import make_arch_optimizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MULTI30K = Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k"
VOCAB = 200


tiny = functools.partial(tiny_search_config, vocab_size=VOCAB)


# ---------------------------------------------------------------- supernet -----------------------------
@pytest.mark.parametrize("tie_blocks", [0, 1, 2])
def test_reversible_gradients_equal_ordinary_autograd(tie_blocks: int) -> None:
    """α and weight gradients through backprop-with-reconstruction equal ordinary autograd (dropout on).
    tie_blocks=1 with 2 layers shares each α across both layers: the tied case that breaks if α is not
    registered below the reversible stack."""
    torch.manual_seed(0)
    model = RevDartsSupernet(tiny(), tie_blocks=tie_blocks)
    model.train()
    batch = padded_batch(VOCAB)
    rev, ref, arch = supernet_grads_reversible_vs_ordinary(model, batch)
    total, worst = grad_errors(rev, ref)
    a_total, a_worst = grad_errors({n: rev[n] for n in arch}, {n: ref[n] for n in arch})
    assert total <= 1e-5 and worst <= 1e-5, (total, worst)
    assert a_total <= 1e-5 and a_worst <= 1e-5, (a_total, a_worst)


def test_tied_alpha_is_one_parameter_inside_each_stack() -> None:
    model = RevDartsSupernet(tiny(), tie_blocks=1)
    assert len(model.arch_parameters()) == 2 + 2  # (encoder 2 splits + decoder 2 searched) × 1 position
    for stack in (model.model.encoder.stack, model.model.decoder.stack):
        ids = [id(p) for p in _unique_params(stack)]
        assert len(ids) == len(set(ids))
        in_stack = [a for a in model.arch_parameters() if id(a) in set(ids)]
        assert len(in_stack) == 2  # the α the reversible Function returns gradients for
    # the tied layers really share the object
    enc = model.model.encoder.stack.layers
    assert enc[0].functions[0].alpha is enc[1].functions[0].alpha


def test_contract_parameters_genotype_derive_config(tmp_path: Path) -> None:
    model = RevDartsSupernet(tiny(layers=2, dropout=0.0))
    arch, weights = model.arch_parameters(), model.weight_parameters()
    assert len(arch) == 2 * 2 + 2 * 2
    assert all(isinstance(a, torch.nn.Parameter) and a.requires_grad for a in arch)
    assert {id(p) for p in arch}.isdisjoint({id(p) for p in weights})
    assert len(arch) + len(weights) == len(list(model.parameters()))
    assert all(a.shape == (len(ENCODER_OPS),) for a in arch[:4]) and all(a.shape == (len(DECODER_OPS),) for a in arch[4:])
    # α are in the state dict (checkpoints) and set argmax picks
    keys = [k for k in model.state_dict() if k.endswith(".alpha")]
    assert len(keys) == 8
    with torch.no_grad():
        model.alpha_for("encoder", 1, 0)[ENCODER_OPS.index("glu")] = 5.0
        model.alpha_for("decoder", 0, 1)[DECODER_OPS.index("cross_attn")] = 5.0
    geno = model.genotype()
    assert len(geno["encoder"]) == 2 and all(len(r) == 2 for r in geno["encoder"])
    assert len(geno["decoder"]) == 2 and all(len(r) == 2 for r in geno["decoder"])
    assert geno["encoder"][1][0] == "glu" and geno["decoder"][0][1] == "cross_attn"
    out = model(**padded_batch(VOCAB))
    assert out.loss.isfinite() and out.logits.shape[-1] == VOCAB
    cfg = model.derive_config()
    assert cfg.get_genotype() == geno and cfg.d_model == 48
    cfg.save_pretrained(tmp_path)
    derived = RevDartsForConditionalGeneration(RevDartsConfig.from_pretrained(tmp_path))
    assert derived(**padded_batch(VOCAB)).loss.isfinite()


def test_return_dict_false_gives_the_same_values_as_a_tuple() -> None:
    """forward honours return_dict (the argument, else config.return_dict), supernet and derived model alike."""
    batch = padded_batch(VOCAB)
    for model in (RevDartsSupernet(tiny(layers=1, dropout=0.0)), RevDartsForConditionalGeneration(tiny(dropout=0.0))):
        out = model(**batch)
        as_tuple = model(**batch, return_dict=False)
        assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], out.loss) and torch.equal(as_tuple[1], out.logits)
        model.config.return_dict = False
        assert isinstance(model(**batch), tuple) and not isinstance(model(**batch, return_dict=True), tuple)


def test_custom_search_space_and_errors() -> None:
    model = RevDartsSupernet(tiny(layers=1), encoder_ops=["ffn", "identity"], decoder_ops=["self_attn", "zero"])
    assert [tuple(a.shape) for a in model.arch_parameters()] == [(2,), (2,), (2,), (2,)]
    assert model.genotype()["encoder"][0][0] in ("ffn", "identity")
    with pytest.raises(ValueError, match="conv_4"):
        RevDartsSupernet(tiny(layers=1), encoder_ops=["ffn", "conv_4"])
    with pytest.raises(ValueError, match="cross_attn"):
        RevDartsSupernet(tiny(layers=1), encoder_ops=["cross_attn"])
    with pytest.raises(ValueError, match="empty"):
        RevDartsSupernet(tiny(layers=1), decoder_ops=[])


@pytest.mark.parametrize("tie_blocks", [0, 2])
def test_supernet_from_config_alone_round_trips_as_a_folder(tmp_path: Path, tie_blocks: int) -> None:
    """The search settings live in the config: RevDartsSupernet(config) rebuilds the same search space, and
    save_pretrained/from_pretrained keep every weight and α (a tied α is one tensor in several modules)."""
    config = tiny(layers=4, search_encoder_ops=["ffn", "glu", "zero"], tie_blocks=tie_blocks, alpha_init_std=0.5)
    torch.manual_seed(0)
    model = RevDartsSupernet(config)
    assert model.op_names("encoder") == ("ffn", "glu", "zero") and model.op_names("decoder") == DECODER_OPS
    assert len(model.arch_parameters()) == 2 * (2 * (tie_blocks or 4)), "one α per block position and split"
    assert max(float(a.detach().abs().max()) for a in model.arch_parameters()) > 0.1, "alpha_init_std is read"
    model.save_pretrained(tmp_path)
    loaded = RevDartsSupernet.from_pretrained(tmp_path)
    assert loaded.config.tie_blocks == tie_blocks and loaded.config.search_encoder_ops == ["ffn", "glu", "zero"]
    for (name, a), (name2, b) in zip(model.named_arch_parameters(), loaded.named_arch_parameters()):
        assert name == name2 and torch.equal(a, b)
    registered = {id(p) for p in loaded.parameters()}
    assert all(id(a) in registered for a in loaded.arch_parameters()), "α must be the loaded, trained tensors"
    if tie_blocks:
        layers = loaded.model.encoder.stack.layers
        assert layers[0].functions[0].alpha is layers[tie_blocks].functions[0].alpha
    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert loaded.genotype() == model.genotype()


def test_keyword_overrides_are_written_into_a_copy_of_the_config() -> None:
    config = tiny(layers=2)
    model = RevDartsSupernet(config, tie_blocks=1, encoder_ops=["ffn", "identity"], alpha_init_std=0.0)
    assert model.config.tie_blocks == 1 and model.config.search_encoder_ops == ["ffn", "identity"]
    assert config.tie_blocks == 0 and config.search_encoder_ops is None, "the caller's config is left alone"
    assert all(torch.equal(a, torch.zeros_like(a)) for a in model.arch_parameters())
    with pytest.raises(ValueError, match="tie_blocks"):
        RevDartsSupernet(config, tie_blocks=-1)
    with pytest.raises(ValueError, match="search_decoder_ops"):
        tiny(search_decoder_ops=["conv_4"])


def test_alpha_figures_from_a_history(tmp_path: Path) -> None:
    from hf_revdarts.search.visualize import normalised_entropy, plot_decisiveness, plot_heatmap

    assert normalised_entropy([0.25] * 4) == pytest.approx(1.0)
    assert normalised_entropy([1.0, 0.0, 0.0]) == pytest.approx(0.0, abs=1e-9)
    ops = {"encoder": ("ffn", "glu", "zero"), "decoder": ("ffn", "cross_attn")}
    history = [
        {"step": 0, "softmax": {"encoder.p0.s0": [1 / 3] * 3, "decoder.p0.s0": [0.5, 0.5]}},
        {"step": 5, "softmax": {"encoder.p0.s0": [0.6, 0.3, 0.1], "decoder.p0.s0": [0.9, 0.1]}},
    ]
    plot_heatmap(history, ops, tmp_path / "heatmap.png")
    plot_decisiveness(history, tmp_path / "entropy.png")
    assert (tmp_path / "heatmap.png").stat().st_size > 1000 and (tmp_path / "entropy.png").stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entropy.png", "heatmap.png"], "no temporaries left"


# ---------------------------------------------------------------- architect ----------------------------
def test_first_order_step_moves_only_alpha() -> None:
    torch.manual_seed(0)
    model = RevDartsSupernet(tiny(layers=1))
    arch = Architect(model, model, make_arch_optimizer(model, lr=1e-2))
    w_before = [p.detach().clone() for p in model.weight_parameters()]
    a_before = [a.detach().clone() for a in model.arch_parameters()]
    loss = arch.step([padded_batch(VOCAB, seed=1), padded_batch(VOCAB, seed=2)])
    assert loss > 0
    assert all(torch.equal(a, b) for a, b in zip(w_before, model.weight_parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(a_before, model.arch_parameters()))
    assert all(p.grad is None for p in model.parameters())


def test_second_order_with_zero_xi_equals_first_order_and_restores_weights() -> None:
    torch.manual_seed(0)
    model = RevDartsSupernet(tiny(layers=1, dropout=0.0))
    val, train = [padded_batch(VOCAB, seed=1)], [padded_batch(VOCAB, seed=2)]
    w_before = [p.detach().clone() for p in model.weight_parameters()]
    got = {}
    for second in (False, True):
        opt = torch.optim.SGD(model.arch_parameters(), lr=0.0)  # lr 0: inspect the gradient, keep α
        captured = []
        opt.step = lambda: captured.append([a.grad.clone() for a in model.arch_parameters()])  # type: ignore
        Architect(model, model, opt, second_order=second).step(val, train, unrolled_lr=0.0)
        got[second] = captured[0]
    for a, b in zip(got[False], got[True]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-9)
    assert all(torch.equal(a, b) for a, b in zip(w_before, model.weight_parameters()))
    # with ξ > 0 the implicit term changes the gradient but it stays finite
    opt = make_arch_optimizer(model)
    Architect(model, model, opt, second_order=True).step(val, train, unrolled_lr=1e-2)
    assert all(a.isfinite().all() for a in model.arch_parameters())


def test_collapse_guard_stops_on_identity() -> None:
    model = RevDartsSupernet(tiny(layers=1))
    guard = CollapseGuard(warn_share=0.3, stop_share=0.6, stop_argmax_fraction=0.5)
    stats, stop = guard.check(model, 0)
    assert not stop and abs(stats["param_free_share"] - 2 / 13.5) < 0.02
    with torch.no_grad():
        for name, a in model.named_arch_parameters():
            a[model.op_names(name.split(".")[0]).index("identity")] = 10.0
    stats, stop = guard.check(model, 1)
    assert stop and stats["op_counts"] == {"identity": 4} and stats["param_free_share"] > 0.99
    with pytest.raises(ValueError, match="stop_share"):
        CollapseGuard(stop_share=2.0)


# ---------------------------------------------------------------- data ---------------------------------
def _write(folder: Path, name: str, lines: list[str], gz: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = "".join(line + "\n" for line in lines)
    if gz:
        with gzip.open(folder / (name + ".gz"), "wt", encoding="utf-8") as f:
            f.write(data)
    else:
        (folder / name).write_text(data, encoding="utf-8")


def test_local_folder_loading_and_errors(tmp_path: Path) -> None:
    _write(tmp_path / "d", "train.en", ["a b", "c d", "e"], gz=True)
    _write(tmp_path / "d", "train.de", ["x y", "z w", "v"])
    _write(tmp_path / "d", "val.en", ["a"])
    _write(tmp_path / "d", "val.de", ["x", "y"])
    _write(tmp_path / "d", "test.en", [])
    _write(tmp_path / "d", "test.de", [])
    src, tgt = load_parallel_text(tmp_path / "d", "en", "de", "train")
    assert src == ["a b", "c d", "e"] and tgt == ["x y", "z w", "v"]
    with pytest.raises(ValueError, match="2 lines|1 lines"):
        load_parallel_text(tmp_path / "d", "en", "de", "validation")
    with pytest.raises(ValueError, match="'fr'.*available"):
        load_parallel_text(tmp_path / "d", "en", "fr", "train")
    with pytest.raises(ValueError, match="empty"):
        load_parallel_text(tmp_path / "d", "en", "de", "test")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_parallel_text(tmp_path / "missing" / "folder", "en", "de", "train")
    with pytest.raises(FileNotFoundError, match="no files for split"):
        load_parallel_text(tmp_path / "d", "en", "de", "dev2")


def test_hub_formats() -> None:
    import datasets

    ds = datasets.Dataset.from_dict({"translation": [{"de": "hallo", "en": "hello"}, {"de": "welt", "en": "world"}]})
    assert pairs_from_dataset(ds, "en", "de") == (["hello", "world"], ["hallo", "welt"])
    with pytest.raises(ValueError, match="'fr'"):
        pairs_from_dataset(ds, "en", "fr")
    flat = datasets.Dataset.from_dict({"en": ["a"], "de": ["b"]})
    assert pairs_from_dataset(flat, "de", "en") == (["b"], ["a"])
    with pytest.raises(ValueError, match="empty"):
        pairs_from_dataset(datasets.Dataset.from_dict({"en": [], "de": []}), "en", "de")


def test_token_batches_and_stream() -> None:
    lengths = [3, 10, 4, 9, 5, 5, 2, 8, 7, 6] * 5
    batches = token_batches(lengths, max_tokens=40, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(max(lengths[i] for i in b) * len(b) <= 40 for b in batches)
    assert batches == token_batches(lengths, max_tokens=40, seed=1)
    assert batches != token_batches(lengths, max_tokens=40, seed=1, epoch=1)
    a, b = shard(batches, 0, 2), shard(batches, 1, 2)
    assert len(a) == len(b) and not {tuple(x) for x in a} & {tuple(x) for x in b}
    examples = [([5] * n, [6] * (n + 1)) for n in lengths]
    s = BatchStream(examples, 40, seed=0)
    first = [s.next()["input_ids"].shape for _ in range(3)]
    state = s.state_dict()
    nxt = s.next()
    s2 = BatchStream(examples, 40, seed=0)
    s2.load_state_dict(state)
    assert torch.equal(s2.next()["labels"], nxt["labels"]) and len(first) == 3
    with pytest.raises(ValueError, match="max_tokens"):
        token_batches(lengths, max_tokens=5)


# ---------------------------------------------------------------- the search script --------------------
def _tiny_dataset(tmp_path: Path, n: int = 64) -> Path:
    if not (MULTI30K / "train.en.gz").is_file():
        pytest.skip(f"Multi30k not found at {MULTI30K} (expected shared/data/multi30k beside the repository)")
    folder = tmp_path / "data"
    for split, lo in (("train", 0), ("val", 0)):
        for lang in ("en", "de"):
            with gzip.open(MULTI30K / f"{'train' if split == 'train' else 'val'}.{lang}.gz", "rt", encoding="utf-8") as f:
                lines = [next(f).rstrip("\n") for _ in range(lo + n)][lo:]
            _write(folder, f"{split}.{lang}", lines[: n if split == "train" else 16])
    return folder


def _script_args(data: Path, out: Path, steps: int = 6, **extra: str) -> list[str]:
    args = {
        "--dataset": str(data), "--output_dir": str(out), "--max_steps": str(steps), "--eval_every": "3",
        "--save_every": "3", "--d_model": "48", "--num_heads": "2", "--encoder_layers": "1",
        "--decoder_layers": "1", "--tie_blocks": "0", "--vocab_size": str(VOCAB), "--max_length": "12",
        "--max_tokens": "96", "--eval_batches": "2", "--warmup_steps": "2", "--arch_lr": "3e-2",
        "--lr": "1e-3", "--seed": "7", "--no_figures": "", "--num_threads": "1",
        "--stop_share": "1.0", "--stop_argmax_fraction": "1.0",
    }
    args.update(extra)
    out_list = []
    for k, v in args.items():
        out_list += [k] + ([v] if v else [])
    return out_list


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(args: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_script_rejects_bad_input_before_work(tmp_path: Path) -> None:
    search_script = load_script("search")
    data = tmp_path / "d"
    _write(data, "train.en", ["a", "b"])
    _write(data, "train.de", ["x"])
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="conv_9"):
        search_script.main(["--dataset", str(data), "--output_dir", str(out), "--encoder_ops", "ffn,conv_9"])
    with pytest.raises(ValueError, match="lines"):
        search_script.main(["--dataset", str(data), "--output_dir", str(out)])
    with pytest.raises(ValueError, match="'xx'"):
        search_script.main(["--dataset", str(data), "--output_dir", str(out), "--tgt_lang", "xx"])
    with pytest.raises(FileNotFoundError):
        search_script.main(["--dataset", str(tmp_path / "nope" / "x"), "--output_dir", str(out)])
    assert not out.exists(), "nothing may be written before the inputs are checked"


def test_sigkill_and_resume_reaches_same_alpha_and_genotype(tmp_path: Path) -> None:
    data = _tiny_dataset(tmp_path)
    script = [sys.executable, str(REPO / "training" / "search.py")]
    full = _run(script + _script_args(data, tmp_path / "full"), _env())
    assert full.returncode == 0, full.stderr[-3000:]
    killer = [sys.executable, str(REPO / "tests" / "search_killed_at_step.py"), "5"]
    killed = _run(killer + _script_args(data, tmp_path / "resumed"), _env())
    assert killed.returncode == -9, killed.stderr[-3000:]
    ckpts = sorted(p.name for p in (tmp_path / "resumed").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-000003"], ckpts
    resumed = _run(script + _script_args(data, tmp_path / "resumed", **{"--resume_from_checkpoint": "latest"}), _env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = json.loads((tmp_path / "full" / "arch_parameters.json").read_text())
    b = json.loads((tmp_path / "resumed" / "arch_parameters.json").read_text())
    assert a == b, "α after kill + resume must equal the uninterrupted run's exactly"
    for name in ("genotype.json",):
        assert (tmp_path / "full" / name).read_text() == (tmp_path / "resumed" / name).read_text()
    hist = json.loads((tmp_path / "full" / "alpha_history.json").read_text())
    assert [h["step"] for h in hist] == [0, 3, 6]
    assert hist[-1]["entropy"] < hist[0]["entropy"], "α must move away from uniform"
    cfg = RevDartsConfig.from_pretrained(tmp_path / "full" / "derived_config")
    assert cfg.get_genotype() == json.loads((tmp_path / "full" / "genotype.json").read_text())
    supernet = RevDartsSupernet.from_pretrained(tmp_path / "resumed" / "supernet")
    assert {n: a.tolist() for n, a in supernet.named_arch_parameters()} == b, "the supernet folder holds the final α"
    assert not list((tmp_path / "resumed").glob(".tmp-*"))


@pytest.mark.parametrize("order", ["first", "second", "pruned"])
def test_two_process_run_has_identical_alpha_on_every_rank(tmp_path: Path, order: str) -> None:
    data = _tiny_dataset(tmp_path)
    # pruning starts once α has moved; a large α step moves some ops below 0.03 within the 4 steps
    extra = {"second": {"--second_order": ""}, "pruned": {"--prune_below": "0.03", "--arch_lr": "1.0"}}.get(order, {})
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           str(REPO / "training" / "search.py")]
    res = _run(cmd + _script_args(data, tmp_path / "ddp", steps=4, **extra), _env(ACCELERATE_USE_CPU="1"))
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-4000:])
    r0 = json.loads((tmp_path / "ddp" / "arch_parameters.rank0.json").read_text())
    r1 = json.loads((tmp_path / "ddp" / "arch_parameters.rank1.json").read_text())
    assert r0 == r1
    summary = json.loads((tmp_path / "ddp" / "search_summary.json").read_text())
    assert summary["processes"] == 2 and summary["alpha_max_abs_diff_across_ranks"] == 0.0
    assert (summary["pruned_ops_at_end"] > 0) == (order == "pruned")  # DDP with skipped ops, not only flags
    init = json.loads((tmp_path / "ddp" / "alpha_history.json").read_text())[0]["softmax"]
    final = json.loads((tmp_path / "ddp" / "alpha_history.json").read_text())[-1]["softmax"]
    assert init != final


def test_rederive_from_a_saved_supernet_matches_the_search(tmp_path: Path) -> None:
    """benchmarks/rederive.py rebuilds the search's held-out batches: DARTS-PT after the fact gives the genotype
    the search itself derived with --selection perturbation."""
    data = _tiny_dataset(tmp_path)
    out = tmp_path / "search"
    res = _run([sys.executable, str(REPO / "training" / "search.py"),
                *_script_args(data, out, steps=3, **{"--selection": "perturbation"})], _env())
    assert res.returncode == 0, res.stderr[-3000:]
    again = _run([sys.executable, str(REPO / "benchmarks" / "rederive.py"), str(out), "--dataset", str(data),
                  "--selection", "perturbation", "--eval_batches", "2", "--max_tokens", "96", "--max_length", "12",
                  "--num_threads", "1"], _env())
    assert again.returncode == 0, again.stderr[-3000:]
    searched = json.loads((out / "selection.json").read_text())["perturbation"]
    rederived = json.loads((out / "selection_perturbation.json").read_text())
    assert rederived["genotype"] == searched["genotype"]
    assert rederived["base_loss"] == pytest.approx(searched["base_loss"], rel=1e-6)
