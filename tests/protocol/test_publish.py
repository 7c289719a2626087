"""The zoo side of the protocol's runner (benchmarks/search_quality.py --publish): which run is "here" to be
published, and that publishing starts none of the plan's missing runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from testing.scripts import load_benchmark


def test_a_zoo_record_of_a_run_continued_elsewhere_does_not_put_its_model_here(tmp_path):
    """With --zoo_steps a run counts as here when its checkpoints are (to continue them) or its continuation's model
    is; the zoo record of a continuation trained on a lent GPU is neither, and publishing it would fail late."""
    sq = load_benchmark("search_quality")
    args = sq.parse_args(["--publish", "--zoo_steps", "8000", "--work_dir", str(tmp_path / "work"),
                          "--results_dir", str(tmp_path / "results")])
    protocol = sq.Protocol(args)
    (protocol.results / "zoo").mkdir(parents=True)

    def run(name: str, val_loss: float) -> dict[str, Any]:
        return {"run": name, "kind": "searched", "search": "search-s0", "train_seed": 0, "updates": 4000,
                "val_averaged": {"val_loss": val_loss}, "work_dir": str(tmp_path / "work" / name)}

    for record in (run("searched-s0-t0", 2.90), run("searched-s1-t0", 2.80)):
        (protocol.results / f"{record['run']}.json").write_text(json.dumps(record))
    (protocol.results / "zoo" / "zoo-searched-s1-t0.json").write_text("{}")  # continued on another machine
    checkpoint = tmp_path / "work" / "searched-s0-t0" / "checkpoint-004000"
    checkpoint.mkdir(parents=True)
    (checkpoint / "train_state.json").write_text("{}")  # written last: a complete checkpoint
    assert protocol.zoo_candidate().run == "searched-s0-t0"  # s1 ranks first, but nothing of it is here
    averaged = protocol.work / "zoo-searched-s1-t0" / "averaged"  # its continuation's model, here after all
    averaged.mkdir(parents=True)
    (averaged / "config.json").write_text("{}")
    assert protocol.zoo_candidate().run == "searched-s1-t0"


def test_publish_starts_none_of_the_plans_missing_runs(tmp_path, monkeypatch):
    """The zoo is made of finished runs: with a search seed or a training of the plan still missing (en-de plans S=3,
    T=2), --publish publishes what has finished instead of first starting hours of other runs."""
    sq = load_benchmark("search_quality")
    args = sq.parse_args(["--pair", "en-de", "--publish", "--work_dir", str(tmp_path / "work"),
                          "--results_dir", str(tmp_path / "results")])
    protocol = sq.Protocol(args)
    published = []
    monkeypatch.setattr(sq.Protocol, "tokenizer", lambda self: tmp_path / "tok")
    monkeypatch.setattr(sq.Protocol, "search", lambda *a: pytest.fail("--publish started a search"))
    monkeypatch.setattr(sq.Protocol, "train", lambda *a, **k: pytest.fail("--publish started a training"))
    monkeypatch.setattr(sq.Protocol, "summarize", lambda self: {"kinds": {}})
    monkeypatch.setattr(sq.Protocol, "publish", lambda self: published.append(self.pair))
    protocol.execute()
    assert published == ["en-de"]


def test_setting_a_zoo_model_aside_keeps_its_figures_and_survives_a_kill(tmp_path, monkeypatch):
    """Before a zoo run trains on to a larger --zoo_steps, its record, scores, tuned decoding and measuring stages
    move to <run>.at-<updates>/, the training commands stay; a sitting killed before the record moved sets the
    rest aside when it starts again, without losing what was moved the first time."""
    from hf_revdarts.protocol import execution

    source = Path(__file__).resolve().parents[2] / "benchmarks/results/en-de/zoo/zoo-searched-long-s0-t0-on-cpu.json"
    record, out = tmp_path / "zoo" / "zoo-run.json", tmp_path / "work" / "zoo-run"
    record.parent.mkdir()
    record.write_text(source.read_text())
    out.mkdir(parents=True)
    for name in ("eval_test.json", "decoding.json", "train_summary.json"):
        (out / name).write_text(json.dumps({"name": name}))
    commands = ["python training/train.py --max_steps 8000", "python training/tune_decoding.py --split val",
                "python training/evaluate.py --split test"]
    timing = {"train": {"wall_seconds": 1.0}, "tune": {"wall_seconds": 2.0}, "evaluate": {"wall_seconds": 3.0},
              "commands": commands}
    (tmp_path / "work" / "zoo-run.timing.json").write_text(json.dumps(timing))
    real_replace = execution.os.replace

    def killed_at_the_record(src, dst):
        if Path(src) == record:
            raise KeyboardInterrupt  # the sitting dies just before the record moves
        real_replace(src, dst)

    monkeypatch.setattr(execution.os, "replace", killed_at_the_record)
    with pytest.raises(KeyboardInterrupt):
        execution.set_aside_evaluation(out, record)
    monkeypatch.setattr(execution.os, "replace", real_replace)
    kept = execution.set_aside_evaluation(out, record)  # the next sitting

    assert kept == tmp_path / "work" / "zoo-run.at-8000" and not record.exists()
    assert (kept / "record.json").read_text() == source.read_text()
    assert {p.name for p in kept.iterdir()} == {"record.json", "timing.json", "eval_test.json", "decoding.json",
                                                "train_summary.json"} and not list(out.iterdir())
    assert json.loads((kept / "timing.json").read_text()) == {
        "tune": {"wall_seconds": 2.0}, "evaluate": {"wall_seconds": 3.0}, "commands": commands[1:]}
    assert json.loads((tmp_path / "work" / "zoo-run.timing.json").read_text()) == {
        "train": {"wall_seconds": 1.0}, "commands": commands[:1]}
