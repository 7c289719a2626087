"""The run record and the protocol config: every committed record reads and re-saves to its own text, a bad one
is refused naming the file and the field, and the recipe is the train and search configs' own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hf_revdarts.model.genotype import Genotype
from hf_revdarts.protocol.recipe import ProtocolConfig, random_genotype
from hf_revdarts.protocol.record import RECORD_FORMAT, RunRecord, find_run, load_runs, replica_pairs

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
PAIRS = ("en-de", "en-fr", "en-cs")
COMMITTED = sorted(p for pair in PAIRS for p in [*(RESULTS / pair).glob("*.json"), *(RESULTS / pair).glob("replicas/*.json"),
                                                 *(RESULTS / pair).glob("zoo/*.json")] if not p.name.startswith("summary"))


def test_the_committed_records_are_all_found():
    assert len(COMMITTED) >= 30 and {p.parent.name for p in COMMITTED} >= {*PAIRS, "replicas", "zoo"}


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.relative_to(RESULTS)))
def test_every_committed_record_loads_and_saves_back_to_its_own_text(path, tmp_path):
    record = RunRecord.load(path)
    assert record.to_json() == path.read_text(encoding="utf-8")
    record.save(tmp_path / path.name)
    assert (tmp_path / path.name).read_text(encoding="utf-8") == path.read_text(encoding="utf-8")
    assert RunRecord.load(tmp_path / path.name) == record
    assert record.kind in ("search", "searched", "standard", "random", "replica")
    assert record.pair == path.relative_to(RESULTS).parts[0]
    if record.kind == "search":
        assert isinstance(record.genotype, Genotype) and record.row.startswith("search")
    else:
        assert record.bleu == record.test["bleu"] and record.val_loss is not None
        assert (REPO / record.hypotheses).is_file()


def test_a_pairs_runs_searches_and_replicas():
    runs, searches = load_runs(RESULTS / "en-de")
    # every search record of the pair's folder, and none of its training runs (the list grows as runs land)
    assert [r.run for r in searches] == sorted(p.stem for p in (RESULTS / "en-de").glob("search-*.json"))
    assert {"search-fast-s0", "search-long-s0", "search-s0", "search-s1", "search-s2"} <= {r.run for r in searches}
    assert {"searched", "searched-fast", "searched-long", "standard", "random"} <= {r.row for r in runs} <= {
        "searched", "standard", "random", *(f"searched-{v}" for v in CONFIG.search_variants)}
    pairs = replica_pairs(RESULTS / "en-de", runs)
    assert sorted((copy.run, original.run, copy.kind) for copy, original in pairs) == [
        ("searched-long-s0-t0-on-cpu", "searched-long-s0-t0", "replica"),
        ("standard-t0-on-cpu", "standard-t0", "replica"), ("standard-t1-on-cpu", "standard-t1", "replica")]
    assert find_run(RESULTS / "en-fr", "searched-long-s0-t0-on-cpu", "the replica").replica_of == "searched-long-s0-t0"
    with pytest.raises(FileNotFoundError, match="the replicated run standard-t9: no standard-t9.json in"):
        find_run(RESULTS / "en-de", "standard-t9", "the replicated run")


def test_a_new_record_states_its_format_and_leaves_out_what_it_does_not_hold():
    record = RunRecord(run="standard-t0", kind="standard", pair="en-de", train_seed=0, search_variant=None,
                       genotype=Genotype.standard(4, 4), commands=["python training/train.py"])
    data = json.loads(record.to_json())
    assert list(data) == ["format", "run", "kind", "pair", "train_seed", "genotype", "commands"]
    assert data["format"] == RECORD_FORMAT
    again = RunRecord.from_dict(data)
    assert again == record and again.to_json() == record.to_json()
    # A null the file held stays (a base search's variant), a field it lacked stays out.
    held = RunRecord.from_dict({"run": "search-s0", "kind": "search", "search_variant": None})
    assert json.loads(held.to_json()) == {"run": "search-s0", "kind": "search", "search_variant": None}
    assert held.format is None and held.row == "search"


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "must hold a JSON object, got list"),
    ("{not json", "is not valid JSON"),
    ('{"run": "x", "bleu": 3}', "unknown field\\(s\\) 'bleu'"),
    ('{"run": "x", "updates": "4000"}', "updates must be int, got str"),
    ('{"run": "x", "updates": true}', "updates must be int, got bool"),
    ('{"run": "x", "wall_seconds": [1]}', "wall_seconds must be int or float"),
    ('{"run": "x", "kind": "baseline"}', "kind 'baseline' is not one of"),
    ('{"run": "x", "genotype": {"encoder": []}}', "genotype: a genotype must hold"),
    ('{"run": "x", "commands": [1]}', "commands must be a list of strings"),
    (f'{{"format": {RECORD_FORMAT + 1}, "run": "x"}}', f"run record format {RECORD_FORMAT + 1}"),
])
def test_a_bad_record_is_refused_naming_the_file_and_the_field(tmp_path, content, message):
    path = tmp_path / "bad-run.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        RunRecord.load(path)
    assert str(path) in str(err.value)


def test_require_names_what_a_reader_needs():
    record = RunRecord.from_dict({"run": "standard-t0", "kind": "standard", "test": {"split": "test"}},
                                 source="results/standard-t0.json")
    with pytest.raises(ValueError, match=r"results/standard-t0.json lacks test.bleu, updates: not a finished run"):
        record.require("test.bleu", "updates")
    with pytest.raises(ValueError, match="lacks test.bleu"):
        record.bleu  # noqa: B018
    assert record.require("test.split") is record and record.test_split == "test"
    with pytest.raises(FileNotFoundError, match="run record .*nowhere.json does not exist"):
        RunRecord.load(REPO / "nowhere.json")


# ---------------------------------------------------------------------- the protocol config ------------------
CONFIG = ProtocolConfig.load(REPO / "configs" / "protocol" / "multi30k.yaml")


def _flags(values: dict) -> list[str]:
    return [x for k, v in values.items() for x in ([k] if v is None else [k, str(v)])]


@pytest.mark.parametrize("pair", ["en-de", "en-fr", "en-cs"])
def test_the_documented_configs_are_the_protocols_recipe(pair):
    """The README's Multi30k commands (configs/multi30k-<pair>-{search,train}.yaml) run exactly the protocol's base
    search and training: every setting the scripts parse is the same (data paths and seeds aside)."""
    from testing.scripts import load_script

    src, tgt = pair.split("-")
    r, here = CONFIG.recipe_for(), ["--dataset", "d", "--output_dir", "o", "--src_lang", src, "--tgt_lang", tgt,
                                    "--train_split", "train", "--eval_split", "val"]
    for script, parse, proto, extra in (("search", "parse_search_args", {**r["model"], **r["search"]}, []),
                                        ("train", "parse_train_args", {**r["model"], **r["train"]}, ["--genotype", "g"])):
        parse = getattr(load_script(script), parse)
        documented = parse([str(REPO / "configs" / f"multi30k-{pair}-{script}.yaml"), *here, *extra])
        protocol = parse([*_flags(proto), *here, *extra])
        assert documented == protocol, script
    assert r["vocab_size"] == 8000 and r["train"]["--max_steps"] == 4000
    assert r["average_last"] == r["train"]["--average_checkpoints"]
    assert list(r["train"])[-1] == "--average_checkpoints"
    assert CONFIG.pairs["en-de"] == {"searches": 3, "seeds": 2, "random": 8}
    assert CONFIG.recipe_for(max_steps=77)["train"]["--max_steps"] == 77 and CONFIG.recipe["train"]["--max_steps"] == 4000


def test_the_variants_are_the_recipes_they_were_run_with():
    """fast (the recipe documented until 2026-12) and long keep the flags their recorded runs had."""
    base = {**CONFIG.recipe_for()["model"], **CONFIG.recipe_for()["search"]}
    fast = {**base, **CONFIG.variant_flags("fast")}
    assert (fast["--max_steps"], fast["--arch_start_step"], fast["--max_tokens"], fast["--lr"]) == (150, 30, 1500, 5e-4)
    assert (fast["--warmup_sampling"], fast["--prune_below"], fast["--selection"]) == ("full", 0.0, "argmax")
    long = {**base, **CONFIG.variant_flags("long")}
    assert (long["--d_model"], long["--encoder_layers"], long["--max_steps"], long["--arch_start_step"]) == (96, 2, 1300, 1000)
    assert (long["--warmup_sampling"], long["--selection"], base["--warmup_sampling"]) == ("full", "argmax", "single_path")
    for name in ("search-fast-s0", "search-long-s0"):  # the recorded commands hold these flags
        command = RunRecord.load(REPO / "benchmarks" / "results" / "en-fr" / f"{name}.json").commands[0]
        variant = {"search-fast-s0": fast, "search-long-s0": long}[name]
        implicit = ("--lr", "--warmup_sampling", "--prune_below", "--memory_mode")  # their defaults then
        assert all(f"{k} {v} " in command + " " for k, v in variant.items() if k not in implicit), name


def test_smoke_scale_and_variants_change_the_recipe():
    smoke = CONFIG.recipe_for(smoke=True)
    assert smoke["model"]["--d_model"] == 48 and smoke["train"]["--max_steps"] == 4 and smoke["train"]["--dropout"] == 0.3
    assert smoke["search"]["--no_figures"] is None and "--selection" not in smoke["search"]  # replaced, not changed
    wide = CONFIG.recipe_for(scale="wide")
    assert list(wide["model"].items()) == [("--d_model", 576), ("--encoder_layers", 6), ("--decoder_layers", 6),
                                           ("--num_heads", 8)]
    assert CONFIG.variant_flags("long")["--d_model"] == 96 and CONFIG.variant_flags("long", scale="wide")["--d_model"] == 288
    assert CONFIG.variant_flags(None) == {} and CONFIG.variant_flags("fast", smoke=True)["--max_steps"] == 3
    drawn = random_genotype(CONFIG.recipe_for(), 3)
    assert drawn == random_genotype(CONFIG.recipe_for(), 3) and len(drawn.encoder) == 4
    assert "zero" not in drawn.to_json() and drawn.encoder[:2] == drawn.encoder[2:]  # a tied block of 2, stacked


def test_a_bad_protocol_config_is_refused_naming_the_file(tmp_path):
    text = (REPO / "configs" / "protocol" / "multi30k.yaml").read_text()
    cases = {
        "lacks": text.replace("evaluate: {num_beams", "evaluation: {num_beams"),
        "neither in": text.replace("save_every, vocab_size, lr,", "save_every, vocab_size, lr, batch_size,"),
        "must give": text.replace("en-fr: {searches: 1, seeds: 1, random: 2}", "en-fr: {searches: 1, seeds: 1}"),
    }
    for message, content in cases.items():
        path = tmp_path / "configs" / "protocol" / "bad.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        for name in ("multi30k-en-de-train.yaml", "multi30k-en-de-search.yaml"):
            (tmp_path / "configs" / name).write_text((REPO / "configs" / name).read_text())
        path.write_text(content)
        with pytest.raises(ValueError, match=message) as err:
            ProtocolConfig.load(path)
        assert str(path) in str(err.value)
    small = yaml.safe_load((REPO / "configs" / "protocol" / "multi30k.yaml").read_text())
    small["smoke"]["train"]["checkpoints_total_limit"] = 1
    path.write_text(yaml.safe_dump(small))
    with pytest.raises(ValueError, match="checkpoints_total_limit must be >= average_last"):
        ProtocolConfig.load(path).recipe_for(smoke=True)
