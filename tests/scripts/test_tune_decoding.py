"""training/tune_decoding.py and ``evaluate.py --decoding``: the beam size and length penalty are chosen on val by
the scores of real translations, the test split is then scored once with that choice and says so, publish.py
puts the choice into the folder's generation settings and card, and every way of scoring a tuned split, or
with another model's tuning, is refused."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from hf_revdarts.evaluation.decoding import choose
from testing.runs import evaluate_script, publish_script, tune_script


def _tune(model, data, out, *extra):
    return tune_script.main(["--model", str(model), "--dataset", str(data), "--output", str(out), "--num_threads", "1",
                             "--num_beams", "1", "2", "--length_penalty", "0.8", "1.2", "--max_new_tokens", "16",
                             *extra])


@pytest.fixture(scope="module")
def tuned(recipe_trained, script_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "decoding.json"
    assert _tune(recipe_trained / "best", script_data, out) == 0
    return out


def test_the_grid_is_scored_on_val_and_the_best_setting_chosen(tuned, recipe_trained, script_data, tmp_path):
    result = json.loads(tuned.read_text())
    grid = result["grid"]
    assert result["split"] == "val" and result["sentences"] == 16
    assert [(g["num_beams"], g["length_penalty"]) for g in grid] == [(1, 1.0), (2, 0.8), (2, 1.2)]  # greedy once
    chosen = result["chosen"]
    assert chosen == {k: choose(grid)[k] for k in ("num_beams", "length_penalty", "bleu")}
    assert chosen["bleu"] >= max(g["bleu"] for g in grid) - 0.01
    # The grid's score of the chosen setting is what evaluate.py gives the same split with it.
    again = tmp_path / "val.json"
    beams = ["--num_beams", str(chosen["num_beams"])]
    if chosen["num_beams"] > 1:
        beams += ["--length_penalty", str(chosen["length_penalty"])]
    assert evaluate_script.main(["--model", str(recipe_trained / "best"), "--dataset", str(script_data), "--split", "val",
                                 "--max_new_tokens", "16", *beams, "--output", str(again)]) == 0
    assert json.loads(again.read_text())["bleu"] == chosen["bleu"]


def test_the_test_split_is_scored_with_the_choice_and_published_with_it(tuned, recipe_trained, script_data, tmp_path):
    chosen = json.loads(tuned.read_text())["chosen"]
    scores = tmp_path / "eval_test.json"
    assert evaluate_script.main(["--model", str(recipe_trained / "best"), "--dataset", str(script_data), "--split",
                                 "test", "--max_new_tokens", "16", "--decoding", str(tuned), "--output", str(scores)]) == 0
    result = json.loads(scores.read_text())
    assert (result["num_beams"], result["length_penalty"]) == (chosen["num_beams"], chosen["length_penalty"])
    assert result["decoding"]["split"] == "val" and result["decoding"]["chosen"] == chosen
    out = tmp_path / "pub"
    assert publish_script.main(["--model", str(recipe_trained / "best"), "--eval_results", str(scores),
                                "--output_dir", str(out), "--example", "The man sees the ball."]) == 0
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["num_beams"] == chosen["num_beams"] and generation["max_new_tokens"] == 16
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "chosen on the val split among 3 settings" in card


def test_tuning_on_a_test_split_or_scoring_the_tuned_split_is_refused(tuned, recipe_trained, script_data, tmp_path):
    model = recipe_trained / "best"
    with pytest.raises(ValueError, match=r"--split test: decoding chosen on a test split"):
        _tune(model, script_data, tmp_path / "d.json", "--split", "test")
    common = ["--model", str(model), "--dataset", str(script_data), "--output", str(tmp_path / "e.json")]
    with pytest.raises(ValueError, match=r"was chosen on val, the split to score"):
        evaluate_script.main([*common, "--split", "val", "--decoding", str(tuned)])
    with pytest.raises(ValueError, match=r"gives the beam size and length penalty: leave out --num_beams 6"):
        evaluate_script.main([*common, "--num_beams", "6", "--decoding", str(tuned)])
    broken = tmp_path / "broken.json"
    broken.write_text('{"chosen": {"num_be')
    with pytest.raises(ValueError, match=r"broken\.json is not valid JSON"):
        evaluate_script.main([*common, "--decoding", str(broken)])
    broken.write_text('{"bleu": 3}')
    with pytest.raises(ValueError, match=r"broken\.json holds no chosen setting"):
        evaluate_script.main([*common, "--decoding", str(broken)])
    other = tmp_path / "other"  # another model: the tuning of the first says nothing about it
    shutil.copytree(model, other)
    weights = load_file(other / "model.safetensors")
    name = next(iter(weights))
    save_file({**weights, name: weights[name] + 1.0}, other / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(Exception, match=r"decoding tuned in --decoding"):
        evaluate_script.main(["--model", str(other), *common[2:], "--decoding", str(tuned)])
    assert not (tmp_path / "e.json").exists()
    notes = tmp_path / "notes.json"  # not a tuning: never overwritten
    notes.write_text('{"mine": 1}')
    with pytest.raises(FileExistsError, match=r"notes\.json exists and is not a result of tune_decoding\.py"):
        _tune(model, script_data, notes)
    with pytest.raises(ValueError, match=r"--max_new_tokens 999 would run the decoder past its position limit"):
        _tune(model, script_data, tmp_path / "d.json", "--max_new_tokens", "999")
    assert notes.read_text() == '{"mine": 1}' and not (tmp_path / "d.json").exists()
