"""What the scripts write when things go wrong: diverging training and search, reused output folders, evaluation
results bound to their model (and the modes of the files a run publishes), a killed publish, pushing to the Hub.
Each test asserts the message or the refusal, and that nothing was lost or overwritten."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_revdarts.utils.guards import NonFiniteError
from hf_revdarts.utils.integrity import FingerprintMismatchError, check_fingerprint
from testing import launch
from testing.runs import TINY_SEARCH, all_finite, publish_script, search_script, snapshot, strict_json, train_script
from testing.runs import publish_args as _publish_args
from testing.runs import run_train as _train
from testing.scripts import load_script

# ---------------------------------------------------------------- non-finite training


def test_diverging_training_stops_naming_step_loss_and_checkpoint_and_saves_no_nan(script_data, tmp_path):
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteError) as err:
        _train(script_data, out, "--lr", "1e3", "--warmup_steps", "1", "--max_steps", "40", "--eval_every", "3",
               "--save_every", "3", "--max_non_finite_steps", "4", "--divergence_factor", "0")  # NaN guard alone
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


def test_diverging_search_stops_for_theta_and_alpha_and_writes_valid_json(script_data, tmp_path):
    out = tmp_path / "search-nan"
    with pytest.raises(NonFiniteError, match=r"the search's .* step diverged: non-finite .* at step \d+ \(loss=") as err:
        search_script.main(["--dataset", str(script_data), "--output_dir", str(out), *TINY_SEARCH, "--lr", "1e3",
                            "--warmup_steps", "1", "--max_steps", "30", "--eval_every", "3", "--save_every", "3",
                            "--max_non_finite_steps", "3", "--divergence_factor", "0"])  # the NaN guards alone
    summary = strict_json(out / "search_summary.json")
    assert summary["error"] == str(err.value) and summary["non_finite_steps_skipped"]["weights"]["skipped"] >= 3
    assert summary["non_finite_steps_skipped"]["arch"]["skipped"] >= 1, "α steps are guarded too"
    history = strict_json(out / "alpha_history.json")
    assert all(all(math.isfinite(p) for ps in h["softmax"].values() for p in ps) for h in history)
    assert not (out / "supernet").exists(), "no final supernet is derived from a diverged search"
    assert all(all_finite(c / "model.safetensors") for c in out.glob("checkpoint-*"))


def test_search_progress_bar_shows_no_nan_before_alpha_updates(script_data, tmp_path, capsys):
    assert search_script.main(["--dataset", str(script_data), "--output_dir", str(tmp_path / "s"), *TINY_SEARCH,
                               "--max_steps", "4", "--eval_every", "4", "--save_every", "4", "--arch_start_step",
                               "2"]) == 0
    bar = capsys.readouterr().err
    assert "=nan" not in bar
    assert "arch_loss=" in bar, "the α loss appears once α steps start"
    assert strict_json(tmp_path / "s" / "search_summary.json")["non_finite_steps_skipped"]["arch"]["skipped"] == 0


# ---------------------------------------------------------------- reused output folders


def test_train_refuses_a_used_output_dir_and_overwrite_starts_afresh(script_trained, script_data, tmp_path):
    used = tmp_path / "used"
    shutil.copytree(script_trained, used)
    before = snapshot(used)
    with pytest.raises(FileExistsError, match=r"--output_dir .*used is not empty.*--overwrite_output_dir"):
        _train(script_data, used, "--max_steps", "2")
    assert snapshot(used) == before, "the refused run must not touch the old one"
    with pytest.raises(ValueError, match="contradict each other"):
        _train(script_data, used, "--max_steps", "2", "--overwrite_output_dir", "--resume_from_checkpoint", "latest")
    assert _train(script_data, used, "--max_steps", "2", "--eval_every", "2", "--save_every", "2",
                  "--overwrite_output_dir") == 0
    assert sorted(p.name for p in used.glob("checkpoint-*")) == ["checkpoint-000002"], "the old run is gone"
    summary = strict_json(used / "train_summary.json")
    assert summary["steps"] == 2 and not (used / "eval_test.json").exists()
    # where and how it computed, so figures from different machines are not compared blind
    assert (summary["device"], summary["mixed_precision"], summary["processes"]) == ("cpu", "no", 1)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        _train(script_data, tmp_path / "a_file", "--max_steps", "2")


def test_search_refuses_a_used_output_dir(script_data, tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "genotype.json").write_text('{"encoder": [], "decoder": []}')
    with pytest.raises(FileExistsError, match=r"holds genotype\.json.*--resume_from_checkpoint latest"):
        search_script.main(["--dataset", str(script_data), "--output_dir", str(out), *TINY_SEARCH, "--max_steps", "2"])
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


# ---------------------------------------------------------------- results bound to their model


def test_evaluation_records_its_model_and_publish_refuses_another(script_trained, script_evaluated, tmp_path):
    results = strict_json(script_evaluated)
    check_fingerprint(script_trained / "best", results["fingerprint"])
    other = tmp_path / "other"
    shutil.copytree(script_trained / "best", other)
    weights = load_file(other / "model.safetensors")
    weights = {k: v + 0.01 if v.is_floating_point() else v for k, v in weights.items()}
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "pub"
    with pytest.raises(FingerprintMismatchError, match=r"model\.safetensors differs") as err:
        publish_script.main(_publish_args(other, script_evaluated, out))
    assert str(script_evaluated) in str(err.value) and str(other) in str(err.value)
    no_fingerprint = tmp_path / "old_eval.json"
    no_fingerprint.write_text(json.dumps({k: v for k, v in results.items() if k != "fingerprint"}))
    with pytest.raises(FingerprintMismatchError, match="record no fingerprint"):
        publish_script.main(_publish_args(script_trained / "best", no_fingerprint, out))
    assert not out.exists(), "nothing is published from refused results"
    assert publish_script.main(_publish_args(script_trained / "best", script_evaluated, out)) == 0
    published = strict_json(out / "eval_results.json")
    assert published["bleu"] == results["bleu"]
    check_fingerprint(out, published["fingerprint"])  # the published scores are tied to the published folder
    umask = os.umask(0o022)
    os.umask(umask)
    # readable by others as the umask allows (temporary files and folders start private: 0600/0700)
    for folder in (out, script_trained / "best"):
        assert folder.stat().st_mode & 0o777 == 0o777 & ~umask
        assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask for p in folder.iterdir() if p.is_file())


def test_publish_shows_the_protocol_comparison_of_its_own_run_only(script_trained, script_evaluated, tmp_path):
    results = strict_json(script_evaluated)
    protocol = tmp_path / "results" / "en-de"
    protocol.mkdir(parents=True)
    train_cmd = "python training/train.py --genotype runs/protocol/en-de/search-long-s0 --seed 0"
    run = {"run": "searched-long-s0-t0", "kind": "searched", "search_variant": "long", "search": "search-long-s0",
           "pair": "en-de", "test": {"split": "test", "bleu": results["bleu"]},
           "commands": [train_cmd, train_cmd + " --resume_from_checkpoint latest"]}  # two sittings
    (protocol / "searched-long-s0-t0.json").write_text(json.dumps(run))
    (protocol / "search-long-s0.json").write_text(json.dumps({"commands": ["python training/search.py --seed 0"]}))
    kinds = {"searched-long": {"runs": 1, "bleu_mean": results["bleu"], "bleu_std": 0.0, "parameters_mean": 2e6,
                               "bleu": {"searched-long-s0-t0": results["bleu"]}},
             "standard": {"runs": 2, "bleu_mean": 31.33, "bleu_std": 0.26, "parameters_mean": 2.32e6,
                          "bleu": {"standard-t0": 31.14, "standard-t1": 31.51}},
             "search-long": {"runs": 1, "genotypes": {}}}
    summary = {"recipe_short": "d_model=192, max_steps=4000", "test_split": "test", "kinds": kinds,
               "devices": {"searched-long-s0-t0": "CPU: 2 cores", "standard-t0": "GPU: H200", "standard-t1": "GPU: H200"},
               "significance_variants": {"searched-long": {"pooled": {"pairs": 1, "delta": 0.5, "p_value": 0.04}}},
               "minus_random_mean": {"searched-long": 0.3}, "minus_random_mean_se": {"searched-long": 0.15}}
    (protocol / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "pub"
    args = _publish_args(script_trained / "best", script_evaluated, out, "--protocol_run",
                         str(protocol / "searched-long-s0-t0.json"))
    assert publish_script.main(args) == 0
    card = (out / "README.md").read_text()
    assert "## How it compares" in card and "run `searched-long-s0-t0`" in card
    assert f"| **searched-long** (this model's kind) | 1 | {results['bleu']:.2f} ± 0.00 |" in card
    assert "| standard | 2 | 31.33 ± 0.26 | 31.14, 31.51 | 2.32M | GPU: H200 |" in card
    assert "Δ = +0.50 BLEU, p = 0.0400" in card and "minus the random genotypes' mean: +0.30 BLEU (+2.0 standard errors" in card
    assert "different machines" in card
    assert "python training/search.py --seed 0\n" + train_cmd + "\n```" in card  # the search, then one training
    assert "train.py --genotype runs/protocol/en-de/search-long-s0 --seed 0 --resume" not in card
    assert "| search-long |" not in card  # searches have no BLEU of their own

    # A run that reports another score is another model: refused, and the published folder stays as it was.
    before = snapshot(out)
    run["test"]["bleu"] = results["bleu"] + 1
    (protocol / "searched-long-s0-t0.json").write_text(json.dumps(run))
    with pytest.raises(ValueError, match="describe different models"):
        publish_script.main([*args, "--overwrite"])
    run["test"]["bleu"], run["pair"] = results["bleu"], "en-fr"
    (protocol / "searched-long-s0-t0.json").write_text(json.dumps(run))
    with pytest.raises(ValueError, match="is a en-fr run"):
        publish_script.main([*args, "--overwrite"])
    assert snapshot(out) == before
    without = publish_script.main(_publish_args(script_trained / "best", script_evaluated, out, "--overwrite"))
    assert without == 0 and "How it compares" not in (out / "README.md").read_text()

    # The table's run trained on a lent GPU that kept its weights, and the same command trained again here
    # (--replicate; a replica record that names neither its search nor its summary, as older records do not): the
    # card sits in the row of the run it repeats, names both, and gives the search and the replica's own command.
    (protocol / "searched-long-s0-t0.json").write_text(json.dumps({**run, "pair": "en-de", "device": "GPU: NVIDIA H200",
                                                                    "test": {"split": "test", "bleu": 35.0}}))
    same = {"standard-t0-on-cpu": {"device": "CPU: 2 cores", "rows": {
        "searched-long": {"per_seed": [{"run": "searched-long-s0-t0-on-cpu", "standard": "standard-t0-on-cpu",
                                        "delta": 2.5, "p_value": 0.001}]},
        "random": {"per_seed": [{"run": "random-r0", "standard": "standard-t0-on-cpu", "delta": 1.9, "p_value": 0.002}]}}}}
    (protocol / "summary.json").write_text(json.dumps({**summary, "scale": "wide",  # a protocol at --scale wide
                                                       "significance_same_machine": same}))
    replica_cmd = train_cmd.replace("--seed 0", "--output_dir runs/protocol/en-de/searched-long-s0-t0-on-cpu --seed 0")
    (protocol / "replicas").mkdir()
    (protocol / "replicas" / "searched-long-s0-t0-on-cpu.json").write_text(json.dumps({
        "run": "searched-long-s0-t0-on-cpu", "kind": "replica", "replica_of": "searched-long-s0-t0",
        "replica_of_kind": "searched", "pair": "en-de", "device": "CPU: 2 cores", "commands": [replica_cmd],
        "test": {"split": "test", "bleu": results["bleu"]}}))
    assert publish_script.main(_publish_args(script_trained / "best", script_evaluated, out, "--overwrite", "--protocol_run",
                                             str(protocol / "replicas" / "searched-long-s0-t0-on-cpu.json"))) == 0
    card = (out / "README.md").read_text()
    assert (f"run `searched-long-s0-t0` of the hf_revdarts protocol trained again with the same command on CPU: 2 cores "
            f"(as `searched-long-s0-t0-on-cpu`: {results['bleu']:.2f} BLEU; the table's run, trained on GPU: NVIDIA H200, "
            "scored 35.00)") in card
    assert "`python benchmarks/search_quality.py --pair en-de --search_variant long --scale wide`" in card
    assert "| **searched-long** (this model's kind) |" in card
    assert ("On one machine (CPU: 2 cores), `searched-long-s0-t0-on-cpu` against the standard Transformer "
            "`standard-t0-on-cpu` trained there: Δ = +2.50 BLEU, p = 0.0010.") in card
    assert "`random-r0` against" not in card  # this model's rows only
    assert "python training/search.py --seed 0\n" + replica_cmd + "\n```" in card


def test_publish_refuses_a_nan_model_even_with_matching_results(script_trained, script_evaluated, tmp_path):
    from hf_revdarts.utils.integrity import fingerprint_model_folder

    broken = tmp_path / "broken"
    shutil.copytree(script_trained / "best", broken)
    weights = load_file(broken / "model.safetensors")
    weights = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in weights.items()}
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    results = tmp_path / "eval.json"
    results.write_text(json.dumps({**strict_json(script_evaluated), "fingerprint": fingerprint_model_folder(broken)}))
    with pytest.raises(NonFiniteError, match="refusing to save the published model"):
        publish_script.main(_publish_args(broken, results, tmp_path / "pub"))
    assert not (tmp_path / "pub").exists()


# ---------------------------------------------------------------- temporaries of a killed publish


def test_a_killed_publish_leaves_nothing_the_next_one_keeps(script_trained, script_evaluated, tmp_path):
    out = tmp_path / "pub" / "revdarts-tiny"
    killed = subprocess.run([sys.executable, launch.program("publish_killed_mid_write"),
                             *_publish_args(script_trained / "best", script_evaluated, out)],
                            env=launch.env(), capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-3000:]
    left = [p.name for p in out.parent.iterdir()]
    assert not out.exists() and len(left) == 1 and left[0].startswith(".tmp-revdarts-tiny-"), left
    neighbour = out.parent / ".tmp-something-else-1234"  # another folder's temporary is not ours to delete
    neighbour.mkdir()
    assert publish_script.main(_publish_args(script_trained / "best", script_evaluated, out)) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == [".tmp-something-else-1234", "revdarts-tiny"]


# ---------------------------------------------------------------- push_to_hub against a stub


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


def test_push_to_hub_sends_the_published_folder(script_trained, script_evaluated, tmp_path, monkeypatch):
    monkeypatch.setattr(RecordingHfApi, "calls", [])
    monkeypatch.setattr(publish_script, "HfApi", RecordingHfApi)
    out = tmp_path / "pub"
    assert publish_script.main(_publish_args(script_trained / "best", script_evaluated, out, "--push_to_hub", "--hub_model_id",
                                             "someone/revdarts-tiny", "--private")) == 0
    create, upload = RecordingHfApi.calls
    assert create == {"create_repo": "someone/revdarts-tiny", "private": True, "exist_ok": True}
    assert upload["upload_folder"] == "someone/revdarts-tiny"
    assert upload["files"] == sorted(p.name for p in out.iterdir())
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "eval_results.json"} <= set(upload["files"])
    bleu = strict_json(script_evaluated)["bleu"]
    assert upload["commit_message"] == f"Upload RevDarts model (BLEU {bleu:.2f} on test)"


def test_push_failures_and_bad_hub_ids_are_named(script_trained, script_evaluated, tmp_path, monkeypatch):
    monkeypatch.setattr(RecordingHfApi, "calls", [])
    monkeypatch.setattr(RecordingHfApi, "fail", ConnectionError("no route to host"))
    monkeypatch.setattr(publish_script, "HfApi", RecordingHfApi)
    out = tmp_path / "pub"
    args = _publish_args(script_trained / "best", script_evaluated, out, "--push_to_hub", "--hub_model_id", "someone/revdarts-tiny")
    with pytest.raises(RuntimeError, match=r"pub was written, but pushing it to someone/revdarts-tiny failed .*"
                                           r"no route to host.*hf upload someone/revdarts-tiny"):
        publish_script.main(args)
    assert (out / "model.safetensors").is_file(), "the local folder stays when the upload fails"
    with pytest.raises(ValueError, match="--push_to_hub needs --hub_model_id"):
        publish_script.main(_publish_args(script_trained / "best", script_evaluated, out, "--push_to_hub"))
    with pytest.raises(ValueError, match="--hub_model_id 'a/b/c' is not a Hub repository id"):
        publish_script.main(_publish_args(script_trained / "best", script_evaluated, out, "--hub_model_id", "a/b/c"))
