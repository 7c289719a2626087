"""No silent failures (issue 11, script side): search.py, train.py, evaluate.py and publish.py on bad input and
faults. Each test asserts the message or the refusal, and that nothing was lost or overwritten."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from _helpers import load_script
from hf_revdarts.guards import NonFiniteError
from hf_revdarts.integrity import CheckpointError, FingerprintMismatchError, check_fingerprint

REPO = Path(__file__).resolve().parents[1]
train_script = load_script("train")
search_script = load_script("search")
evaluate_script = load_script("evaluate")
publish_script = load_script("publish")

TINY = ["--d_model", "48", "--num_heads", "2", "--vocab_size", "300", "--max_tokens", "400", "--max_length", "24",
        "--warmup_steps", "4", "--lr", "3e-3", "--bleu_sentences", "8", "--num_threads", "1",
        "--genotype", "standard", "--encoder_layers", "2", "--decoder_layers", "2"]
TINY_SEARCH = ["--d_model", "48", "--num_heads", "2", "--vocab_size", "300", "--max_tokens", "200", "--max_length",
               "16", "--warmup_steps", "2", "--num_threads", "1", "--encoder_layers", "1", "--decoder_layers", "1",
               "--tie_blocks", "0", "--eval_batches", "2", "--no_figures", "--max_train_examples", "120",
               "--stop_share", "1.0", "--stop_argmax_fraction", "1.0"]


def strict_json(path: Path):
    """The file as JSON, failing on the bare NaN/Infinity Python's json would accept."""
    def refuse(token):
        raise ValueError(f"{path} holds {token}, which is not JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and mtime: equal snapshots mean nothing was touched."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def all_finite(path: Path) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in load_file(path).values() if t.is_floating_point())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    for split, n in (("train", 120), ("val", 16), ("test", 12)):
        for lang in ("en", "de"):
            lines = (REPO / "samples" / "en-de" / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()[:n]
            (folder / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def _train(data: Path, out: Path, *extra: str) -> int:
    return train_script.main(["--dataset", str(data), "--output_dir", str(out), *TINY, *extra])


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained")
    assert _train(data, out, "--max_steps", "6", "--eval_every", "3", "--save_every", "3") == 0
    return out


@pytest.fixture(scope="module")
def evaluated(trained, data) -> Path:
    out = trained / "eval_test.json"
    assert evaluate_script.main(["--model", str(trained / "best"), "--dataset", str(data), "--split", "test",
                                 "--num_beams", "1", "--output", str(out)]) == 0
    return out


def _publish_args(model: Path, results: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--eval_results", str(results), "--output_dir", str(out),
            "--example", "The man sees the ball.", *extra]


# ---------------------------------------------------------------- 1. non-finite training


def test_diverging_training_stops_naming_step_loss_and_checkpoint_and_saves_no_nan(data, tmp_path):
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteError) as err:
        _train(data, out, "--lr", "1e3", "--warmup_steps", "1", "--max_steps", "40", "--eval_every", "3",
               "--save_every", "3", "--max_non_finite_steps", "4")
    message = str(err.value)
    assert "training diverged: non-finite" in message and "more than max_skipped=4" in message
    summary = strict_json(out / "train_summary.json")  # valid JSON, written although the run failed
    skipped = summary["non_finite_steps_skipped"]["weights"]
    assert skipped["skipped"] == 5 and f"at step {skipped['skipped_steps'][-1]}" in message
    assert "loss=" in message and summary["error"] == message
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert checkpoints and f"the last good checkpoint is {checkpoints[-1]}" in message
    assert all(all_finite(c / "model.safetensors") for c in checkpoints)
    assert not (out / "best").exists() or all_finite(out / "best" / "model.safetensors")
    for entry in summary["history"]:
        assert entry["val_loss"] is None or math.isfinite(entry["val_loss"])


def test_diverging_search_stops_for_theta_and_alpha_and_writes_valid_json(data, tmp_path):
    out = tmp_path / "search-nan"
    with pytest.raises(NonFiniteError, match=r"the search's .* step diverged: non-finite .* at step \d+ \(loss=") as err:
        search_script.main(["--dataset", str(data), "--output_dir", str(out), *TINY_SEARCH, "--lr", "1e3",
                            "--warmup_steps", "1", "--max_steps", "30", "--eval_every", "3", "--save_every", "3",
                            "--max_non_finite_steps", "3"])
    summary = strict_json(out / "search_summary.json")
    assert summary["error"] == str(err.value) and summary["non_finite_steps_skipped"]["weights"]["skipped"] >= 3
    assert summary["non_finite_steps_skipped"]["arch"]["skipped"] >= 1, "α steps are guarded too"
    history = strict_json(out / "alpha_history.json")
    assert all(all(math.isfinite(p) for ps in h["softmax"].values() for p in ps) for h in history)
    assert not (out / "supernet").exists(), "no final supernet is derived from a diverged search"
    assert all(all_finite(c / "model.safetensors") for c in out.glob("checkpoint-*"))


def test_nan_weights_are_never_checkpointed_over_good_ones(tmp_path):
    from hf_revdarts.guards import NonFiniteGuard
    from hf_revdarts.training_utils import TrainState, check_finite_weights

    model = torch.nn.Linear(3, 3)
    state = TrainState({}, {"weights": NonFiniteGuard(3)})
    state.step = 12
    state.guards["weights"].last_good_checkpoint = "runs/x/checkpoint-000010"
    check_finite_weights(model, state)
    with torch.no_grad():
        model.bias[1] = float("inf")
    with pytest.raises(NonFiniteError, match=r"step 12: 1 weight tensors hold NaN/inf \(bias\).*checkpoint-000010"):
        check_finite_weights(model, state)


def test_search_progress_bar_shows_no_nan_before_alpha_updates(data, tmp_path, capsys):
    assert search_script.main(["--dataset", str(data), "--output_dir", str(tmp_path / "s"), *TINY_SEARCH,
                               "--max_steps", "4", "--eval_every", "4", "--save_every", "4", "--arch_start_step",
                               "2"]) == 0
    bar = capsys.readouterr().err
    assert "=nan" not in bar
    assert "arch_loss=" in bar, "the α loss appears once α steps start"
    assert strict_json(tmp_path / "s" / "search_summary.json")["non_finite_steps_skipped"]["arch"]["skipped"] == 0


# ---------------------------------------------------------------- 2. reused output folders


def test_train_refuses_a_used_output_dir_and_overwrite_starts_afresh(trained, data, tmp_path):
    used = tmp_path / "used"
    shutil.copytree(trained, used)
    before = snapshot(used)
    with pytest.raises(FileExistsError, match=r"--output_dir .*used is not empty.*--overwrite_output_dir"):
        _train(data, used, "--max_steps", "2")
    assert snapshot(used) == before, "the refused run must not touch the old one"
    with pytest.raises(ValueError, match="contradict each other"):
        _train(data, used, "--max_steps", "2", "--overwrite_output_dir", "--resume_from_checkpoint", "latest")
    assert _train(data, used, "--max_steps", "2", "--eval_every", "2", "--save_every", "2",
                  "--overwrite_output_dir") == 0
    assert sorted(p.name for p in used.glob("checkpoint-*")) == ["checkpoint-000002"], "the old run is gone"
    assert strict_json(used / "train_summary.json")["steps"] == 2 and not (used / "eval_test.json").exists()
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        _train(data, tmp_path / "a_file", "--max_steps", "2")


def test_search_refuses_a_used_output_dir(data, tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "genotype.json").write_text('{"encoder": [], "decoder": []}')
    with pytest.raises(FileExistsError, match=r"holds genotype\.json.*--resume_from_checkpoint latest"):
        search_script.main(["--dataset", str(data), "--output_dir", str(out), *TINY_SEARCH, "--max_steps", "2"])
    assert sorted(p.name for p in out.iterdir()) == ["genotype.json"]


def test_main_job_starts_each_step_afresh(monkeypatch, tmp_path):
    main_job = load_script("main_job")
    calls = []
    monkeypatch.setattr(main_job, "run", lambda step, script, *args: calls.append((script, args)))
    monkeypatch.setattr(main_job, "translate_with_pipeline", lambda published: None)
    train_dir = tmp_path / "job" / "train"
    train_dir.mkdir(parents=True)
    (train_dir / "eval_test.json").write_text(json.dumps({"bleu": 1.0, "bleu_signature": "s"}))
    (tmp_path / "job" / "search").mkdir()
    (tmp_path / "job" / "search" / "genotype.json").write_text("{}")
    assert main_job.main(["--output_dir", str(tmp_path / "job")]) == 0
    flags = dict(calls)
    assert "--overwrite_output_dir" in flags["search.py"] and "--overwrite_output_dir" in flags["train.py"]
    assert "--overwrite" in flags["publish.py"]
    # the commands parse as given (config file first, then the flags)
    assert search_script.parse_search_args(list(flags["search.py"])).run.overwrite_output_dir
    assert train_script.parse_train_args(list(flags["train.py"])).run.overwrite_output_dir


# ---------------------------------------------------------------- 3. results bound to their model


def test_evaluation_records_its_model_and_publish_refuses_another(trained, evaluated, tmp_path):
    results = strict_json(evaluated)
    check_fingerprint(trained / "best", results["fingerprint"])
    other = tmp_path / "other"
    shutil.copytree(trained / "best", other)
    weights = load_file(other / "model.safetensors")
    weights = {k: v + 0.01 if v.is_floating_point() else v for k, v in weights.items()}
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "pub"
    with pytest.raises(FingerprintMismatchError, match=r"model\.safetensors differs") as err:
        publish_script.main(_publish_args(other, evaluated, out))
    assert str(evaluated) in str(err.value) and str(other) in str(err.value)
    no_fingerprint = tmp_path / "old_eval.json"
    no_fingerprint.write_text(json.dumps({k: v for k, v in results.items() if k != "fingerprint"}))
    with pytest.raises(FingerprintMismatchError, match="record no fingerprint"):
        publish_script.main(_publish_args(trained / "best", no_fingerprint, out))
    assert not out.exists(), "nothing is published from refused results"
    assert publish_script.main(_publish_args(trained / "best", evaluated, out)) == 0
    published = strict_json(out / "eval_results.json")
    assert published["bleu"] == results["bleu"]
    check_fingerprint(out, published["fingerprint"])  # the published scores are tied to the published folder
    umask = os.umask(0o022)
    os.umask(umask)
    for folder in (out, trained / "best"):  # readable by others as the umask allows (was 0700/0600)
        assert folder.stat().st_mode & 0o777 == 0o777 & ~umask
        assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask for p in folder.iterdir() if p.is_file())


def test_publish_refuses_a_nan_model_even_with_matching_results(trained, evaluated, tmp_path):
    from hf_revdarts.integrity import fingerprint_model_folder

    broken = tmp_path / "broken"
    shutil.copytree(trained / "best", broken)
    weights = load_file(broken / "model.safetensors")
    weights = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in weights.items()}
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    results = tmp_path / "eval.json"
    results.write_text(json.dumps({**strict_json(evaluated), "fingerprint": fingerprint_model_folder(broken)}))
    with pytest.raises(NonFiniteError, match="refusing to save the published model"):
        publish_script.main(_publish_args(broken, results, tmp_path / "pub"))
    assert not (tmp_path / "pub").exists()


# ---------------------------------------------------------------- 4. modes


@pytest.mark.parametrize("umask, dirs, files", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_atomic_outputs_get_the_umask_modes(tmp_path, umask, dirs, files):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hf_revdarts.training_utils import atomic_folder, atomic_savefig, atomic_write_json

    previous = os.umask(umask)
    try:
        with atomic_folder(tmp_path / "best") as tmp:
            (tmp / "weights.bin").write_bytes(b"x")
            atomic_write_json(tmp / "config.json", {"a": 1})
        atomic_write_json(tmp_path / "summary.json", {"a": 1})
        fig = plt.figure()
        atomic_savefig(fig, tmp_path / "plot.png")
        plt.close(fig)
    finally:
        os.umask(previous)
    assert (tmp_path / "best").stat().st_mode & 0o777 == dirs
    for path in (tmp_path / "best" / "weights.bin", tmp_path / "best" / "config.json", tmp_path / "summary.json",
                 tmp_path / "plot.png"):
        assert path.stat().st_mode & 0o777 == files, path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "plot.png", "summary.json"], "no temporaries"


# ---------------------------------------------------------------- 5. messages


def test_truncated_checkpoint_on_resume_names_the_file_and_the_previous_one(trained, data, tmp_path):
    out = tmp_path / "resume"
    out.mkdir()
    for name in ("checkpoint-000003", "checkpoint-000006", "tokenizer"):
        shutil.copytree(trained / name, out / name)
    weights = out / "checkpoint-000006" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    before = snapshot(out)
    with pytest.raises(CheckpointError) as err:
        _train(data, out, "--max_steps", "9", "--eval_every", "3", "--save_every", "3",
               "--resume_from_checkpoint", "latest")
    assert str(weights) in str(err.value) and "truncated" in str(err.value)
    assert f"--resume_from_checkpoint {out / 'checkpoint-000003'}" in str(err.value)
    assert snapshot(out) == before, "a refused resume writes nothing"
    state = out / "checkpoint-000003" / "train_state.json"
    state.write_text(json.dumps({"step": 3}))  # whole JSON, but not this loop's state
    with pytest.raises(CheckpointError, match=r"train_state\.json does not hold the loop state"):
        _train(data, out, "--max_steps", "9", "--resume_from_checkpoint", str(out / "checkpoint-000003"))


def test_genotype_files_name_themselves(data, tmp_path):
    from hf_revdarts.arguments import stack_genotype

    with pytest.raises(ValueError, match="encoder list is empty"):
        stack_genotype([], 4, "encoder")
    cases = {
        "empty.json": ({"encoder": [], "decoder": [["ffn", "ffn"]]}, "encoder_genotype is empty"),
        "unknown.json": ({"encoder": [["ffn", "conv_4"]], "decoder": [["ffn", "ffn"]]}, "unknown op 'conv_4'"),
        "flat.json": ({"encoder": ["ffn", "ffn"], "decoder": [["ffn", "ffn"]]}, r"encoder_genotype\[0\] must list"),
    }
    for name, (genotype, message) in cases.items():
        (tmp_path / name).write_text(json.dumps(genotype))
        with pytest.raises(ValueError, match=rf"--genotype .*{name}: .*{message}"):
            train_script.main(["--dataset", str(data), "--output_dir", str(tmp_path / "out"), "--genotype",
                               str(tmp_path / name)])
    (tmp_path / "latin1.json").write_bytes('{"encoder": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.json is not valid JSON"):
        train_script.main(["--output_dir", str(tmp_path / "out"), "--genotype", str(tmp_path / "latin1.json")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, message", [
    (["--num_beams", "0"], "--num_beams must be >= 1, got 0"),
    (["--max_examples", "0"], "--max_examples must be >= 1"),
    (["--max_new_tokens", "0"], "--max_new_tokens must be >= 1"),
    (["--batch_size", "-1"], "--batch_size must be >= 1"),
])
def test_evaluate_refuses_bad_flags_before_any_work(trained, data, tmp_path, monkeypatch, flags, message):
    monkeypatch.setattr(evaluate_script, "load_split", lambda *a: pytest.fail("data read before the flags were checked"))
    with pytest.raises(ValueError, match=message):
        evaluate_script.main(["--model", str(trained / "best"), "--dataset", str(data), "--output",
                              str(tmp_path / "e.json"), *flags])
    assert not (tmp_path / "e.json").exists()


def test_evaluate_names_a_missing_model_folder_and_an_output_folder(trained, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--model .*nowhere does not exist"):
        evaluate_script.main(["--model", str(tmp_path / "nowhere")])
    with pytest.raises(IsADirectoryError, match="is a folder"):
        evaluate_script.main(["--model", str(trained / "best"), "--output", str(tmp_path)])


@pytest.mark.parametrize("flags, error, message", [
    (["--lr", "0"], ValueError, "--lr must be a finite number > 0"),
    (["--lr", "nan"], ValueError, "--lr must be a finite number > 0, got nan"),
    (["--seed", "-1"], ValueError, r"--seed must be in \[0, 2\*\*32\)"),
    (["--dropout", "1.0"], ValueError, r"--dropout must be a probability in \[0, 1\)"),
    (["--label_smoothing", "-0.1"], ValueError, "--label_smoothing must be a probability"),
    (["--warmup_steps", "-5"], ValueError, "--warmup_steps must be a finite number >= 0"),
    (["--max_grad_norm", "-1"], ValueError, "--max_grad_norm must be"),
    (["--checkpoints_total_limit", "-1"], ValueError, "--checkpoints_total_limit must be"),
    (["--max_non_finite_steps", "-1"], ValueError, "--max_non_finite_steps must be"),
    (["--tgt_lang", "en"], ValueError, "--src_lang and --tgt_lang are both 'en'"),
    (["--max_train_examples", "0"], ValueError, "--max_train_examples must be >= 1"),
    (["--d_model", "0"], ValueError, "--d_model must be >= 1"),
    (["--encoder_layers", "0"], ValueError, "--encoder_layers must be >= 1"),
    (["--bleu_sentences", "0"], ValueError, "--bleu_sentences must be >= 1"),
    (["--time_budget_minutes", "-1"], ValueError, "--time_budget_minutes must be"),
    (["--tokenizer", "/nonexistent/tok"], FileNotFoundError, "--tokenizer /nonexistent/tok does not exist"),
])
def test_train_flags_are_checked_when_parsed(flags, error, message):
    with pytest.raises(error, match=message):
        train_script.parse_train_args(["--output_dir", "o", *flags])


@pytest.mark.parametrize("flags, message", [
    (["--arch_lr", "0"], "--arch_lr must be a finite number > 0"),
    (["--tie_blocks", "-1"], "--tie_blocks must be a finite number >= 0"),
    (["--arch_start_step", "-1"], "--arch_start_step must be"),
    (["--arch_start_step", "150"], r"--arch_start_step 150 >= --max_steps 150: α would never be updated"),
])
def test_search_flags_are_checked_before_any_work(data, tmp_path, flags, message):
    with pytest.raises(ValueError, match=message):
        search_script.main(["--dataset", str(data), "--output_dir", str(tmp_path / "s"), *flags])
    assert not (tmp_path / "s").exists()


def test_damaged_tokenizer_folder_is_named_before_any_work(data, trained, tmp_path):
    tok = tmp_path / "tok"
    shutil.copytree(trained / "tokenizer", tok)
    (tok / "tokenizer.json").write_text('{"version": "1.0", "trunc')
    for script, extra in ((train_script, TINY), (search_script, TINY_SEARCH)):
        with pytest.raises(ValueError, match=r"tok/tokenizer\.json is not valid JSON"):
            script.main(["--dataset", str(data), "--output_dir", str(tmp_path / "out"), *extra, "--tokenizer",
                         str(tok)])
    assert not (tmp_path / "out").exists()


def test_config_files_name_themselves(tmp_path):
    cases = {
        "broken.yaml": ("output_dir: o\nlr: [1, 2\n", r"broken\.yaml is not valid YAML"),
        "broken.json": ('{"output_dir": "o",}', r"broken\.json is not valid JSON"),
        "type.yaml": ("output_dir: o\nmax_steps: many\n", r"type\.yaml: --max_steps 'many' is not a valid int"),
        "float.yaml": ("output_dir: o\nmax_steps: 2.5\n", r"float\.yaml: --max_steps 2\.5 is not a valid int"),
        "list.yaml": ("output_dir: o\nlr: [1, 2]\n", r"list\.yaml: --lr \[1, 2\] is not a valid float"),
        "bool.yaml": ("output_dir: o\noverwrite_output_dir: maybe\n", r"bool\.yaml: --overwrite_output_dir 'maybe'"),
        "choice.yaml": ("output_dir: o\nmixed_precision: fp8\n", r"choice\.yaml: --mixed_precision 'fp8' is not one"),
        "value.yaml": ("output_dir: o\nlr: -1\n", "--lr must be a finite number > 0"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=message):
            train_script.parse_train_args([str(tmp_path / name)])
    (tmp_path / "latin1.yaml").write_bytes("output_dir: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.yaml is not UTF-8"):
        train_script.parse_train_args([str(tmp_path / "latin1.yaml")])
    (tmp_path / "ok.yaml").write_text("output_dir: o\nlr: 1e-3\nmax_steps: 7\noverwrite_output_dir: true\n")
    args = train_script.parse_train_args([str(tmp_path / "ok.yaml")])
    assert args.run.lr == 1e-3 and args.run.max_steps == 7 and args.run.overwrite_output_dir is True
    with pytest.raises(ValueError, match=r"ok\.yaml\) must be the first argument"):
        train_script.parse_train_args(["--output_dir", "o", str(tmp_path / "ok.yaml")])


# ---------------------------------------------------------------- temporaries of a killed publish

_KILLED_PUBLISH = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, sys.argv.pop(1))
    from _helpers import load_script
    publish = load_script("publish")
    save = publish.save_tokenizer

    def save_then_die(tokenizer, folder):
        save(tokenizer, folder)
        os.kill(os.getpid(), signal.SIGKILL)  # killed while the new folder is half written

    publish.save_tokenizer = save_then_die
    publish.main()
    """
)


def test_a_killed_publish_leaves_nothing_the_next_one_keeps(trained, evaluated, tmp_path):
    out = tmp_path / "pub" / "revdarts-tiny"
    script = tmp_path / "killed_publish.py"
    script.write_text(_KILLED_PUBLISH)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    killed = subprocess.run([sys.executable, str(script), str(REPO / "tests"),
                             *_publish_args(trained / "best", evaluated, out)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-3000:]
    left = [p.name for p in out.parent.iterdir()]
    assert not out.exists() and len(left) == 1 and left[0].startswith(".tmp-revdarts-tiny-"), left
    neighbour = out.parent / ".tmp-something-else-1234"  # another folder's temporary is not ours to delete
    neighbour.mkdir()
    assert publish_script.main(_publish_args(trained / "best", evaluated, out)) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == [".tmp-something-else-1234", "revdarts-tiny"]


def test_a_folder_killed_between_its_two_renames_is_put_back(tmp_path):
    from hf_revdarts.training_utils import remove_stale_temporaries

    (tmp_path / ".old-best-4242").mkdir()
    (tmp_path / ".old-best-4242" / "model.safetensors").write_text("previous best")
    (tmp_path / ".tmp-best-0a1b2c3d").mkdir()
    (tmp_path / ".old-published-77").mkdir()
    (tmp_path / "published").mkdir()
    remove_stale_temporaries(tmp_path, "best")
    assert (tmp_path / "best" / "model.safetensors").read_text() == "previous best"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".old-published-77", "best", "published"]
    remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "published"]


# ---------------------------------------------------------------- 7. push_to_hub against a stub


class RecordingHfApi:
    """Stands in for huggingface_hub.HfApi: records what would be sent, sends nothing."""

    calls: list[dict] = []
    fail: Exception | None = None

    def create_repo(self, repo_id, private=False, exist_ok=False, **kw):
        self.calls.append({"create_repo": repo_id, "private": private, "exist_ok": exist_ok})

    def upload_folder(self, folder_path, repo_id, commit_message, **kw):
        if self.fail is not None:
            raise self.fail
        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        self.calls.append({"upload_folder": repo_id, "files": files, "commit_message": commit_message})


def test_push_to_hub_sends_the_published_folder(trained, evaluated, tmp_path, monkeypatch):
    monkeypatch.setattr(RecordingHfApi, "calls", [])
    monkeypatch.setattr(publish_script, "HfApi", RecordingHfApi)
    out = tmp_path / "pub"
    assert publish_script.main(_publish_args(trained / "best", evaluated, out, "--push_to_hub", "--hub_model_id",
                                             "someone/revdarts-tiny", "--private")) == 0
    create, upload = RecordingHfApi.calls
    assert create == {"create_repo": "someone/revdarts-tiny", "private": True, "exist_ok": True}
    assert upload["upload_folder"] == "someone/revdarts-tiny"
    assert upload["files"] == sorted(p.name for p in out.iterdir())
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "eval_results.json"} <= set(upload["files"])
    bleu = strict_json(evaluated)["bleu"]
    assert upload["commit_message"] == f"Upload RevDarts model (BLEU {bleu:.2f} on test)"


def test_push_failures_and_bad_hub_ids_are_named(trained, evaluated, tmp_path, monkeypatch):
    monkeypatch.setattr(RecordingHfApi, "calls", [])
    monkeypatch.setattr(RecordingHfApi, "fail", ConnectionError("no route to host"))
    monkeypatch.setattr(publish_script, "HfApi", RecordingHfApi)
    out = tmp_path / "pub"
    args = _publish_args(trained / "best", evaluated, out, "--push_to_hub", "--hub_model_id", "someone/revdarts-tiny")
    with pytest.raises(RuntimeError, match=r"pub was written, but pushing it to someone/revdarts-tiny failed .*"
                                           r"no route to host.*hf upload someone/revdarts-tiny"):
        publish_script.main(args)
    assert (out / "model.safetensors").is_file(), "the local folder stays when the upload fails"
    with pytest.raises(ValueError, match="--push_to_hub needs --hub_model_id"):
        publish_script.main(_publish_args(trained / "best", evaluated, out, "--push_to_hub"))
    with pytest.raises(ValueError, match="--hub_model_id 'a/b/c' is not a Hub repository id"):
        publish_script.main(_publish_args(trained / "best", evaluated, out, "--hub_model_id", "a/b/c"))


# ---------------------------------------------------------------- more bad input found in the scripts


def test_publish_names_missing_and_wrong_inputs(trained, evaluated, tmp_path):
    best = trained / "best"
    cases = [
        (["--train_summary", str(tmp_path / "none.json")], FileNotFoundError, "--train_summary .*none.json does not"),
        (["--search_dir", str(tmp_path / "no_search")], FileNotFoundError, "--search_dir .*no_search is not a folder"),
        (["--search_dir", str(tmp_path)], FileNotFoundError, "has no search_summary.json"),
    ]
    for extra, error, message in cases:
        with pytest.raises(error, match=message):
            publish_script.main(_publish_args(best, evaluated, tmp_path / "pub", *extra))
    with pytest.raises(ValueError, match="would replace the folder of --model"):
        publish_script.main(_publish_args(best, evaluated, trained))
    failed = tmp_path / "failed_search"
    failed.mkdir()
    (failed / "search_summary.json").write_text(json.dumps({"steps": 4, "error": "diverged at step 4"}))
    with pytest.raises(ValueError, match=r"search_summary\.json has no seconds.*the run failed: diverged at step 4"):
        publish_script.main(_publish_args(best, evaluated, tmp_path / "pub", "--search_dir", str(failed)))
    as_list = tmp_path / "list.json"
    as_list.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"list\.json must hold a JSON object"):
        publish_script.main(_publish_args(best, as_list, tmp_path / "pub"))
    assert not (tmp_path / "pub").exists()
