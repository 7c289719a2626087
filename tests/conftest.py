"""Fixtures shared across the test folders.

- ``script_data``: a tiny slice of the bundled sample (120 train, 16 val, 12 test pairs);
- ``script_trained`` / ``script_evaluated``: a model trained on it by training/train.py (6 steps, checkpoints at
  3 and 6) and its evaluation by training/evaluate.py;
- ``recipe_trained`` / ``recipe_evaluated`` / ``recipe_published``: the same with the small-data recipe's flags
  (dropout in attention and ffn, averaging of the last 2 checkpoints), evaluated with beam search and published
  by training/publish.py;
- ``small_tokenizer``: a tokenizer trained on the few sentences of ``testing.builders``.

Each is made once per test module. The scripts are imported inside the fixtures, so that test modules which use
none of them (and the integration tests run on transformers 4.57 without the scripts' dependencies) never load
them. Shared helpers that are not fixtures live in the ``testing`` package at the repository root.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from testing import REPO


@pytest.fixture(scope="module")
def script_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    for split, n in (("train", 120), ("val", 16), ("test", 12)):
        for lang in ("en", "de"):
            lines = (REPO / "samples" / "en-de" / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()[:n]
            (folder / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def script_trained(script_data, tmp_path_factory) -> Path:
    from testing.runs import run_train

    out = tmp_path_factory.mktemp("trained")
    assert run_train(script_data, out, "--max_steps", "6", "--eval_every", "3", "--save_every", "3") == 0
    return out


@pytest.fixture(scope="module")
def script_evaluated(script_trained, script_data) -> Path:
    from testing.runs import evaluate_script

    out = script_trained / "eval_test.json"
    assert evaluate_script.main(["--model", str(script_trained / "best"), "--dataset", str(script_data),
                                 "--split", "test", "--num_beams", "1", "--output", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def recipe_trained(script_data, tmp_path_factory) -> Path:
    from testing.runs import RECIPE, run_recipe_train

    out = tmp_path_factory.mktemp("train")
    assert run_recipe_train(script_data, out, "--max_steps", "6", "--eval_every", "3", "--save_every", "3",
                            "--genotype", "standard", "--encoder_layers", "2", "--decoder_layers", "2", *RECIPE) == 0
    return out


@pytest.fixture(scope="module")
def recipe_evaluated(recipe_trained, script_data) -> Path:
    from testing.runs import evaluate_script

    out = recipe_trained / "eval_test.json"
    assert evaluate_script.main(["--model", str(recipe_trained / "best"), "--dataset", str(script_data), "--split",
                                 "test", "--num_beams", "2", "--length_penalty", "1.2", "--output", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def recipe_published(recipe_trained, recipe_evaluated, tmp_path_factory) -> Path:
    from testing.runs import publish_script

    out = tmp_path_factory.mktemp("pub") / "revdarts-tiny"
    assert publish_script.main(["--model", str(recipe_trained / "best"), "--eval_results", str(recipe_evaluated),
                                "--output_dir", str(out), "--example", "The man sees the ball."]) == 0
    return out


@pytest.fixture(scope="module")
def small_tokenizer():
    from hf_revdarts.training.tokenization import train_tokenizer
    from testing.builders import TEXT_DE, TEXT_EN

    return train_tokenizer(TEXT_EN + TEXT_DE, vocab_size=60, min_frequency=1, model_max_length=32)
