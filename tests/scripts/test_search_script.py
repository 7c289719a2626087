"""training/search.py end to end: bad input refused before any work, a run killed with SIGKILL and resumed reaches
the uninterrupted run's α and genotype, two processes keep α identical on every rank (first order, second order,
pruned ops), and benchmarks/rederive.py re-derives the search's genotype from its saved supernet.

The runs read the first lines of Multi30k from shared/data/multi30k beside the repository, and are skipped
without it."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_revdarts import Genotype, RevDartsConfig
from hf_revdarts.search import RevDartsSupernet
from testing import REPO, launch
from testing.builders import write_lines
from testing.scripts import load_script

MULTI30K = REPO.parent / "shared" / "data" / "multi30k"
VOCAB = 200


def _tiny_dataset(tmp_path: Path, n: int = 64) -> Path:
    if not (MULTI30K / "train.en.gz").is_file():
        pytest.skip(f"Multi30k not found at {MULTI30K} (expected shared/data/multi30k beside the repository)")
    folder = tmp_path / "data"
    for split, lo in (("train", 0), ("val", 0)):
        for lang in ("en", "de"):
            with gzip.open(MULTI30K / f"{'train' if split == 'train' else 'val'}.{lang}.gz", "rt", encoding="utf-8") as f:
                lines = [next(f).rstrip("\n") for _ in range(lo + n)][lo:]
            write_lines(folder, f"{split}.{lang}", lines[: n if split == "train" else 16])
    return folder


def _script_args(data: Path, out: Path, steps: int = 6, **extra: str) -> list[str]:
    args = {
        "--dataset": str(data), "--output_dir": str(out), "--max_steps": str(steps), "--eval_every": "3",
        "--save_every": "3", "--d_model": "48", "--num_heads": "2", "--encoder_layers": "1",
        "--decoder_layers": "1", "--tie_blocks": "0", "--vocab_size": str(VOCAB), "--max_length": "12",
        "--max_tokens": "96", "--eval_batches": "2", "--warmup_steps": "2", "--arch_lr": "3e-2",
        "--lr": "1e-3", "--seed": "7", "--no_figures": "", "--num_threads": "1",
        "--stop_share": "1.0", "--stop_argmax_fraction": "1.0", "--arch_start_step": "0", "--warmup_sampling": "full",
        "--prune_below": "0", "--selection": "argmax", "--max_train_examples": "6000",
    }
    args.update(extra)
    out_list = []
    for k, v in args.items():
        out_list += [k] + ([v] if v else [])
    return out_list


def _run(args: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_script_rejects_bad_input_before_work(tmp_path: Path) -> None:
    search_script = load_script("search")
    data = tmp_path / "d"
    write_lines(data, "train.en", ["a", "b"])
    write_lines(data, "train.de", ["x"])
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
    full = _run(script + _script_args(data, tmp_path / "full"), launch.env())
    assert full.returncode == 0, full.stderr[-3000:]
    killer = [sys.executable, launch.program("search_killed_at_step"), "5"]
    killed = _run(killer + _script_args(data, tmp_path / "resumed"), launch.env())
    assert killed.returncode == -9, killed.stderr[-3000:]
    ckpts = sorted(p.name for p in (tmp_path / "resumed").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-000003"], ckpts
    resumed = _run(script + _script_args(data, tmp_path / "resumed", **{"--resume_from_checkpoint": "latest"}), launch.env())
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
    assert cfg.get_genotype() == Genotype.load(tmp_path / "full" / "genotype.json")
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
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(launch.free_port()),
           str(REPO / "training" / "search.py")]
    res = _run(cmd + _script_args(data, tmp_path / "ddp", steps=4, **extra), launch.env(ACCELERATE_USE_CPU="1"))
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


@pytest.mark.parametrize("method", ["perturbation", "sampled"])
def test_rederive_from_a_saved_supernet_matches_the_search(tmp_path: Path, method: str) -> None:
    """benchmarks/rederive.py rebuilds the search's held-out batches: DARTS-PT (or sampled selection, with the
    search's seed) after the fact gives the genotype the search itself derived with that --selection."""
    data = _tiny_dataset(tmp_path)
    out = tmp_path / "search"
    extra = {"--selection": method, **({"--sampled_genotypes": "6"} if method == "sampled" else {})}
    res = _run([sys.executable, str(REPO / "training" / "search.py"), *_script_args(data, out, steps=3, **extra)],
               launch.env())
    assert res.returncode == 0, res.stderr[-3000:]
    again = _run([sys.executable, str(REPO / "benchmarks" / "rederive.py"), str(out), "--dataset", str(data),
                  "--selection", method, "--eval_batches", "2", "--max_tokens", "96", "--max_length", "12",
                  "--sampled_genotypes", "6", "--seed", "7", "--num_threads", "1"], launch.env())
    assert again.returncode == 0, again.stderr[-3000:]
    selections = json.loads((out / "selection.json").read_text())
    searched = selections[method]
    assert set(selections) == {"argmax", method}
    rederived = json.loads((out / f"selection_{method}.json").read_text())
    assert rederived["genotype"] == searched["genotype"]
    assert rederived["base_loss"] == pytest.approx(searched["base_loss"], rel=1e-6)
    if method == "sampled":  # six draws and the argmax genotype, best first, the winner derived
        losses = [s["loss"] for s in searched["scored"]]
        assert 2 <= len(losses) <= 7 and losses == sorted(losses)
        assert searched["scored"][0]["genotype"] == searched["genotype"]
        summary = json.loads((out / "search_summary.json").read_text())
        assert summary["selection"] == "sampled" and summary["genotypes"]["sampled"] == searched["genotype"]


def test_single_path_warm_up_runs_and_alpha_moves_only_after_it(tmp_path: Path) -> None:
    search_script = load_script("search")
    data = _tiny_dataset(tmp_path)
    with pytest.raises(ValueError, match="--arch_start_step is 0"):
        search_script.main(_script_args(data, tmp_path / "refused", **{"--warmup_sampling": "single_path"}))
    assert not (tmp_path / "refused").exists()
    out = tmp_path / "sp"
    args = _script_args(data, out, steps=6, **{"--warmup_sampling": "single_path", "--arch_start_step": "3"})
    assert search_script.main(args) == 0
    history = json.loads((out / "alpha_history.json").read_text())
    assert [h["step"] for h in history] == [0, 3, 6]
    assert history[0]["softmax"] == history[1]["softmax"], "α holds through the warm-up"
    assert history[2]["softmax"] != history[1]["softmax"], "and moves once the α phase starts"
    summary = json.loads((out / "search_summary.json").read_text())
    assert all(v is not None for v in (summary["val_loss_first"], summary["val_loss_last"]))
    Genotype.load(out / "genotype.json").validate(1, 1)


def test_sampled_selection_without_an_alpha_phase_scores_the_warm_up_supernet(tmp_path: Path) -> None:
    """--selection sampled with --arch_start_step = --max_steps (SPOS): θ alone is trained, α never moves, and the
    genotypes are scored on the supernet a longer search of the same seed hands to its α phase; any other
    selection without α steps is refused."""
    search_script = load_script("search")
    data = _tiny_dataset(tmp_path)
    sp = {"--warmup_sampling": "single_path", "--arch_start_step": "3"}
    with pytest.raises(ValueError, match="only --selection sampled selects without α"):
        search_script.main(_script_args(data, tmp_path / "refused", steps=3, **sp))
    longer = tmp_path / "longer"
    assert search_script.main(_script_args(data, longer, steps=6, **sp)) == 0
    spos = tmp_path / "spos"
    extra = {**sp, "--selection": "sampled", "--sampled_genotypes": "6"}
    assert search_script.main(_script_args(data, spos, steps=3, **extra)) == 0

    history = json.loads((spos / "alpha_history.json").read_text())
    assert [h["step"] for h in history] == [0, 3] and history[0]["softmax"] == history[1]["softmax"]
    summary = json.loads((spos / "search_summary.json").read_text())
    assert summary["alpha_steps"] == 0 and summary["steps"] == 3 and summary["selection"] == "sampled"
    selection = json.loads((spos / "selection.json").read_text())["sampled"]
    assert selection["scored"][0]["genotype"] == selection["genotype"] == summary["genotype"]
    ours = load_file(spos / "supernet" / "model.safetensors")
    theirs = load_file(longer / "warmup" / "checkpoint-000003" / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs), (
        "the longer search's warm-up, α included, exactly")


def test_alpha_phase_seeds_share_one_warm_up(tmp_path: Path) -> None:
    """--warmup_from: a second search starts its α phase from the first one's kept warm-up checkpoint. With the
    same seed it sees the same supernet there (same validation loss at the hand-over); with another seed its α
    is its own; a warm-up that ends at another step is refused before any work."""
    search_script = load_script("search")
    data = _tiny_dataset(tmp_path)
    sp = {"--warmup_sampling": "single_path", "--arch_start_step": "3"}
    first = tmp_path / "first"
    assert search_script.main(_script_args(data, first, steps=6, **sp)) == 0
    assert (first / "warmup" / "checkpoint-000003" / "train_state.json").is_file(), "the warm-up is kept"
    history = json.loads((first / "alpha_history.json").read_text())
    at_handover = next(h for h in history if h["step"] == 3)

    same = tmp_path / "same"
    assert search_script.main(_script_args(data, same, steps=6, **sp, **{"--warmup_from": str(first)})) == 0
    shared = json.loads((same / "alpha_history.json").read_text())
    assert [h["step"] for h in shared] == [3, 6], "the α phase only: the warm-up is not repeated"
    assert shared[0]["val_loss"] == pytest.approx(at_handover["val_loss"], abs=1e-6)
    assert shared[0]["softmax"] == at_handover["softmax"]
    summary = json.loads((same / "search_summary.json").read_text())
    assert summary["steps"] == 6 and summary["warmup_from"].endswith("checkpoint-000003")
    assert summary["warmup_seconds"] > 0

    other = tmp_path / "other"
    args = _script_args(data, other, steps=6, **sp, **{"--warmup_from": str(first), "--seed": "8"})
    assert search_script.main(args) == 0
    own = json.loads((other / "alpha_history.json").read_text())
    assert own[0]["softmax"] != at_handover["softmax"], "another seed keeps its own α"
    assert own[0]["val_loss"] != pytest.approx(at_handover["val_loss"], abs=1e-9)

    refused = tmp_path / "refused"
    late = {**sp, "--arch_start_step": "4", "--warmup_from": str(first)}
    with pytest.raises(ValueError, match="ends at step 3"):
        search_script.main(_script_args(data, refused, steps=6, **late))
    with pytest.raises(FileNotFoundError, match="warmup"):
        search_script.main(_script_args(data, refused, steps=6, **sp, **{"--warmup_from": str(tmp_path)}))
    assert not refused.exists()
