"""The protocol runner's bookkeeping between sittings (benchmarks/search_quality.py): --status says where each run
stands, a live run included, and a stage stopped midway keeps its seconds for the record of the sitting that
resumes it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hf_revdarts.model.genotype import Genotype
from testing.scripts import load_benchmark

REPO = Path(__file__).resolve().parents[2]


def test_status_says_where_each_run_stands_and_writes_nothing(tmp_path, capsys):
    sq = load_benchmark("search_quality")
    results, work = tmp_path / "results" / "en-de-smoke", tmp_path / "work" / "en-de-smoke"
    results.mkdir(parents=True)
    (results / "search-s0.json").write_text(json.dumps({"run": "search-s0", "kind": "search",
                                                        "genotype": Genotype.standard(2, 2).to_dict()}))
    (results / "standard-t0.json").write_text(json.dumps({"run": "standard-t0", "kind": "standard", "updates": 4,
                                                          "cpu_seconds": 7.2, "device": "CPU: 2 cores",
                                                          "test": {"bleu": 12.345}}))
    (work / "searched-s0-t0" / "checkpoint-000002").mkdir(parents=True)
    (work / "searched-s0-t0" / "checkpoint-000002" / "train_state.json").write_text("{}")
    # random-r0 runs now, in another process holding its folder's lock, before its first checkpoint
    lock = work / "random-r0" / ".revdarts-run.lock"
    lock.parent.mkdir()
    lock.write_text(json.dumps({"pid": 4321, "host": "vm", "script": "train.py", "started": "2026-12-07 13:48:03"}))
    holder = subprocess.Popen([sys.executable, "-c", f"import fcntl, sys, time; f = open({str(lock)!r}); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = sorted(p for p in tmp_path.rglob("*"))
        assert sq.main(["--smoke", "--status", "--work_dir", str(tmp_path / "work"),
                        "--results_dir", str(tmp_path / "results")]) == 0
    finally:
        holder.kill()
        holder.wait()
    lines = [line.split(None, 1) for line in capsys.readouterr().out.splitlines()]
    assert lines[:4] == [["search-s0", "done"], ["searched-s0-t0", "stopped at 2 of 4 updates"],
                         ["standard-t0", "done, BLEU 12.35"],
                         ["random-r0", "running (process 4321 on vm, train.py started 2026-12-07 13:48:03), no "
                          "checkpoint yet of 4 updates"]]
    assert lines[4][0] == "6" and "0.0 CPU-hours at the 1.80 CPU-seconds per update" in lines[4][1]  # 2 + 4 left
    assert sorted(p for p in tmp_path.rglob("*")) == before  # no genotype drawn, no folder made
    # the lock of a run that ended is no longer held: the run is where its checkpoints left it
    assert sq.main(["--smoke", "--status", "--work_dir", str(tmp_path / "work"),
                    "--results_dir", str(tmp_path / "results")]) == 0
    assert [line.split(None, 1) for line in capsys.readouterr().out.splitlines()][3] == ["random-r0", "not started"]


def test_a_training_stopped_midway_keeps_its_seconds_for_the_next_sitting(tmp_path, monkeypatch):
    """A sitting that ends mid-training (the process stopped) saves the stage's time beside the run, so the
    record of the sitting that resumes it counts both."""
    sq = load_benchmark("search_quality")
    args = sq.parse_args(["--pair", "en-de", "--work_dir", str(tmp_path / "work"), "--results_dir", str(tmp_path / "r")])
    protocol = sq.Protocol(args)

    def stopped(repo, script, flags, log, timing, stage, dry_run=False):
        timing.setdefault("commands", []).append(f"python training/{script}")
        timing[stage] = {"wall_seconds": 60.0, "cpu_seconds": 55.0}  # what run_logged counts before it raises
        raise RuntimeError(f"{stage} failed (exit -15)")

    monkeypatch.setattr(sq, "run_script", stopped)
    (tmp_path / "work" / "en-de").mkdir(parents=True)  # run_logged makes it for the log
    with pytest.raises(RuntimeError, match="exit -15"):
        protocol.train("random-r5", "random", "g.json", 0, {})
    saved = json.loads((tmp_path / "work" / "en-de" / "random-r5.timing.json").read_text())
    assert saved["train"] == {"wall_seconds": 60.0, "cpu_seconds": 55.0}
    assert saved["commands"] == ["python training/train.py"]
