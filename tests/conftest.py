"""Fixtures of the scripts' tests (test_script_failures.py, test_script_inputs.py, test_training.py): a tiny slice
of the bundled sample, a model trained on it (6 steps, checkpoints at 3 and 6) and its evaluation, made once
per test module. The scripts are imported inside the fixtures, so other test modules do not load them."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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
    from _script_helpers import run_train

    out = tmp_path_factory.mktemp("trained")
    assert run_train(script_data, out, "--max_steps", "6", "--eval_every", "3", "--save_every", "3") == 0
    return out


@pytest.fixture(scope="module")
def script_evaluated(script_trained, script_data) -> Path:
    from _script_helpers import evaluate_script

    out = script_trained / "eval_test.json"
    assert evaluate_script.main(["--model", str(script_trained / "best"), "--dataset", str(script_data),
                                 "--split", "test", "--num_beams", "1", "--output", str(out)]) == 0
    return out
