"""The zoo (model_cards/): every entry is a complete Hub folder that loads, as a transformers user loads it, in a
process without hf_revdarts, and translates as the protocol run it was published from did.

Runs on transformers 5.x and 4.57.x (.ci/integration_457.sh). The translations are compared with the test
translations committed with the entry's protocol run, on a few of the batches ``training/evaluate.py`` translated
(the same sentences padded together, so the same beams); ``training/rescore.py`` re-scores the whole split."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hf_revdarts.evaluation.translation import translation_batches
from hf_revdarts.model import REMOTE_CODE_FILES
from testing import REPO

ZOO = sorted(p for p in (REPO / "model_cards").iterdir() if p.is_dir())
PROGRAM = REPO / "testing" / "programs" / "zoo_check.py"
FILES = ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
         "README.md", "genotype.png", "eval_results.json", *REMOTE_CODE_FILES)
CHECKED_BATCHES = 3  # the first, a middle and the last batch of the split, as evaluate.py sorted it


def _card(folder: Path) -> dict:
    return json.loads((folder / "eval_results.json").read_text(encoding="utf-8"))


def _lines(path: Path) -> list[str]:
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def test_the_zoo_has_models():
    assert ZOO, "model_cards/ holds no model folder"


@pytest.mark.parametrize("folder", ZOO, ids=[p.name for p in ZOO])
def test_zoo_entry_is_a_complete_hub_folder(folder):
    missing = [name for name in FILES if not (folder / name).is_file()]
    assert not missing, f"{folder.name} lacks {missing}: a card without its model"
    card = _card(folder)
    for name, digest in card["fingerprint"]["files"].items():  # the scored files are the ones shipped
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "revdarts" and "AutoModelForSeq2SeqLM" in config["auto_map"]
    assert {"encoder": config["encoder_genotype"], "decoder": config["decoder_genotype"]} == card["fingerprint"]["genotype"]
    assert (folder / "model.safetensors").stat().st_size < 20 * 2**20  # the zoo stays a few tens of MB in git
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert f"{card['bleu']:.2f}" in text and card["bleu_signature"] in text
    assert card["example"]["translation"] in text.replace("\\'", "'")
    assert (REPO / card["protocol_run"]).is_file() and (REPO / card["protocol_hypotheses"]).is_file()


@pytest.mark.slow
@pytest.mark.parametrize("folder", ZOO, ids=[p.name for p in ZOO])
def test_zoo_entry_loads_without_hf_revdarts_and_translates_as_its_run(folder, tmp_path):
    card = _card(folder)
    data = Path(os.environ.get("HF_REVDARTS_DATA", REPO.parent / "shared" / "data" / card["dataset"]))
    split = data / f"{card['split']}.{card['src_lang']}.gz"
    if not split.is_file():
        pytest.skip(f"the scored split is not at {split}")
    sources = _lines(split)
    committed = _lines(REPO / card["protocol_hypotheses"])
    assert len(committed) == len(sources)
    batches = translation_batches(sources, card.get("batch_size", 32))
    chosen = [batches[0], batches[len(batches) // 2], batches[-1]][:CHECKED_BATCHES]
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"batches": [[sources[i] for i in batch] for batch in chosen]}))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, str(PROGRAM), str(folder), str(REPO), str(request)], cwd=tmp_path, env=env,
                         capture_output=True, stdin=subprocess.DEVNULL, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    got = json.loads(next(line for line in run.stdout.splitlines()[::-1] if line.startswith("RESULT "))[7:])
    assert got["importable"] is False and got["module"].startswith("transformers_modules."), got["module"]
    assert got["model_type"] == "revdarts" and got["genotype"] == card["fingerprint"]["genotype"]
    example = card["example"]
    assert got["round_trip"] == example["source"] and got["unknown_tokens"] == 0
    assert got["example_generate"] == example["translation"]
    assert got["example_pipeline"] == example["translation"]
    for batch, translations in zip(chosen, got["translations"]):
        assert translations == [committed[i] for i in batch]
