"""benchmarks/readme_commands.py runs the README's Multi30k commands as written: the block it reads is the README's
(search, then train on the search's folder, then evaluate the training's averaged model), a README whose block
changed is refused by name, and on the bundled sample the three commands run, a finished stage is not run again,
and the record sets the test BLEU beside the protocol's row."""

from __future__ import annotations

import json

import pytest
import yaml

from testing import REPO
from testing.scripts import load_benchmark

readme_module = load_benchmark("readme_commands")


def test_the_readme_block_is_search_then_train_on_its_folder_then_evaluate_its_model():
    search, train, evaluate = readme_module.readme_commands(REPO / "README.md", "/data/m30k")
    assert search[:3] == ["python", "training/search.py", "configs/multi30k-en-de-search.yaml"]
    assert all(c[c.index("--dataset") + 1] == "/data/m30k" for c in (search, train, evaluate))
    train_config = yaml.safe_load((REPO / train[2]).read_text())
    # the training trains what the search derived, and the evaluation scores the training's averaged model
    assert REPO / train_config["genotype"] == readme_module.output_dir(search) == REPO / "runs/multi30k-en-de-search"
    assert readme_module.scores_file(evaluate) == readme_module.output_dir(train) / "averaged" / \
        "eval_test_2016_flickr.json"


def test_a_readme_whose_block_changed_is_refused_by_name(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n## Search and train on Multi30k\n\n```bash\npython training/train.py c.yaml\n```\n")
    with pytest.raises(ValueError, match=r"runs \['train.py'\], not python training/\{search,train,evaluate\}.py"):
        readme_module.readme_commands(readme, "d")
    readme.write_text("# x\n")
    with pytest.raises(ValueError, match="no bash block under '## Search and train on Multi30k'"):
        readme_module.readme_commands(readme, "d")


def test_the_commands_run_on_the_sample_and_a_finished_stage_is_not_run_again(tmp_path, capsys):
    search, train = tmp_path / "search", tmp_path / "train"
    tiny = "--d_model 48 --encoder_layers 2 --decoder_layers 2 --num_heads 2 --max_tokens 512 --max_length 32"
    block = "\n".join([
        f"python training/search.py --dataset /path/to/multi30k --output_dir {search} {tiny} --tie_blocks 1 "
        "--max_steps 4 --warmup_steps 1 --arch_start_step 2 --eval_every 2 --save_every 2 --vocab_size 300 "
        "--max_eval_examples 8 --eval_batches 1 --no_figures --num_threads 1",
        f"python training/train.py --dataset /path/to/multi30k --genotype {search} --output_dir {train} {tiny} \\",
        "    --max_steps 4 --warmup_steps 2 --eval_every 4 --save_every 2 --max_eval_examples 8 --bleu_sentences 4 "
        "--average_checkpoints 2 --num_threads 1",
        f"python training/evaluate.py --dataset /path/to/multi30k --model {train}/averaged --split test "
        "--num_beams 2 --max_new_tokens 16 --max_examples 8 --num_threads 1"])
    readme = tmp_path / "README.md"
    readme.write_text(f"## Search and train on Multi30k\n\n```bash\n{block}\n```\n")
    results = tmp_path / "results"
    (results / "en-de").mkdir(parents=True)
    (results / "en-de" / "summary.json").write_text(json.dumps({"kinds": {"searched": {
        "bleu": {"searched-s0-t0": 0.0, "searched-s1-t0": 2.0}, "bleu_std": 1.0, "bleu_search_mean": 1.0}}}))
    flags = ["--readme", str(readme), "--data", str(REPO / "samples" / "en-de"), "--results_dir", str(results),
             "--work_dir", str(tmp_path / "work")]
    assert readme_module.main(flags) == 0
    record = json.loads((results / "readme" / "en-de.json").read_text())
    scores = json.loads((train / "averaged" / "eval_test.json").read_text())
    assert record["test"]["bleu"] == scores["bleu"] and record["updates"] == 4 and record["test"]["sentences"] == 8
    assert record["genotype"] == json.loads((search / "search_summary.json").read_text())["genotype"]
    assert record["protocol_row"]["spread"] == [-1.0, 3.0]
    assert record["protocol_row"]["within_seed_spread"] == (-1.0 <= scores["bleu"] <= 3.0)
    assert [c.split()[1] for c in record["commands"]] == ["training/search.py", "training/train.py",
                                                          "training/evaluate.py"]
    assert record["cpu_seconds"] > 0 and set(record["stages"]) == {"search", "train", "evaluate"}
    # Run again: every stage is finished, nothing runs, the record is the same apart from nothing.
    assert readme_module.main(flags) == 0
    again = json.loads((results / "readme" / "en-de.json").read_text())
    assert again["commands"] == record["commands"] and again["cpu_seconds"] == record["cpu_seconds"]
