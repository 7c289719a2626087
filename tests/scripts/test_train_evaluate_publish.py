"""training/train.py, evaluate.py and publish.py end to end with the small-data recipe, on a tiny slice of the
bundled sample: what training writes (best folder, history, checkpoints, the averaged model), resume, sacreBLEU
results, the model card, the publish script's folder used without hf_revdarts, and a failed publish that keeps
the old folder. The runs are fixtures of tests/conftest.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from testing import REPO
from testing.runs import RECIPE, publish_script, run_recipe_train, train_script


def _train(data: Path, out: Path, *extra: str) -> None:
    assert run_recipe_train(data, out, *extra) == 0


def test_train_writes_best_folder_history_and_checkpoints(recipe_trained):
    summary = json.loads((recipe_trained / "train_summary.json").read_text())
    assert summary["steps"] == 6 and [h["step"] for h in summary["history"]] == [3, 6]
    assert {"bleu", "chrf", "bleu_signature", "val_loss"} <= set(summary["history"][-1])
    assert summary["genotype"]["encoder"] == [["self_attn", "ffn"]] * 2
    best = recipe_trained / "best"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "modeling_revdarts.py"):
        assert (best / name).is_file(), name
    assert sorted(p.name for p in recipe_trained.glob("checkpoint-*")) == ["checkpoint-000003", "checkpoint-000006"]
    assert not list(recipe_trained.glob(".tmp-*"))


def test_resume_reaches_the_uninterrupted_weights(recipe_trained, script_data, tmp_path):
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(recipe_trained / "checkpoint-000003", resumed / "checkpoint-000003")
    shutil.copytree(recipe_trained / "tokenizer", resumed / "tokenizer")
    _train(script_data, resumed, "--max_steps", "6", "--eval_every", "3", "--save_every", "3", "--genotype", "standard",
           "--encoder_layers", "2", "--decoder_layers", "2", *RECIPE, "--resume_from_checkpoint", "latest")
    from safetensors.torch import load_file

    assert not list(recipe_trained.glob("checkpoint-*/pytorch_model.bin")), "checkpoints hold safetensors, not pickle"
    a = load_file(recipe_trained / "checkpoint-000006" / "model.safetensors")
    b = load_file(resumed / "checkpoint-000006" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_evaluate_reports_sacrebleu_with_signature(recipe_evaluated):
    res = json.loads(recipe_evaluated.read_text())
    assert res["sentences"] == 12 and len(res["hypotheses"]) == 12
    assert res["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert res["bleu_lowercase_signature"].startswith("nrefs:1|case:lc|eff:no|tok:13a")
    assert 0.0 <= res["bleu"] <= res["bleu_lowercase"] <= 100.0 and 0.0 <= res["chrf"] <= 100.0
    assert res["num_beams"] == 2 and res["length_penalty"] == 1.2


def test_average_checkpoints_writes_the_mean_of_the_last_checkpoints(recipe_trained):
    from hf_revdarts import RevDartsForConditionalGeneration

    summary = json.loads((recipe_trained / "train_summary.json").read_text())
    averaged = summary["averaged"]
    assert averaged["checkpoints"] == ["checkpoint-000003", "checkpoint-000006"] and averaged["steps"] == [3, 6]
    assert {"val_loss", "bleu", "bleu_lowercase", "chrf"} <= set(averaged) and averaged["val_loss"] > 0
    model = RevDartsForConditionalGeneration.from_pretrained(recipe_trained / "averaged")
    assert model.config.attention_dropout == 0.1 and model.config.activation_dropout == 0.1
    from safetensors.torch import load_file

    a, b = (load_file(recipe_trained / c / "model.safetensors") for c in averaged["checkpoints"])
    state = model.state_dict()
    assert set(a) <= set(state) and set(state) - set(a) <= {"lm_head.weight"}  # the tied head is stored once
    for key in a:
        expected = (a[key].float() + b[key].float()) / 2 if a[key].is_floating_point() else a[key]
        torch.testing.assert_close(state[key], expected.to(a[key].dtype), rtol=0, atol=0, msg=key)
    assert any(not torch.equal(state[k], a[k]) for k in a if a[k].is_floating_point()), "the two checkpoints differ"
    assert json.loads((recipe_trained / "averaged" / "training_state.json").read_text())["averaged"]["steps"] == [3, 6]
    assert (recipe_trained / "averaged" / "tokenizer.json").is_file()


def test_averaging_flags_are_refused_before_any_work(script_data, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="--checkpoints_total_limit 2 keeps fewer"):
        _train(script_data, out, "--max_steps", "6", "--save_every", "2", "--average_checkpoints", "3")
    with pytest.raises(ValueError, match="writes only 2 checkpoint"):
        _train(script_data, out, "--max_steps", "6", "--save_every", "3", "--average_checkpoints", "3",
               "--checkpoints_total_limit", "0")
    assert not out.exists()
    assert train_script.checkpoints_written(6, 4) == 2 and train_script.checkpoints_written(8, 4) == 2


def test_model_card_parses_and_carries_the_measured_bleu(recipe_published, recipe_evaluated):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    card = ModelCard.load(recipe_published / "README.md")
    data = card.data.to_dict()
    assert data["pipeline_tag"] == "translation" and data["language"] == ["en", "de"]
    assert data["license"] == "apache-2.0" and set(data["metrics"]) == {"bleu", "chrf"}
    name, results = model_index_to_eval_results(data["model-index"])
    bleu = [r for r in results if r.metric_type == "bleu"][0]
    measured = json.loads(recipe_evaluated.read_text())
    assert bleu.metric_value == measured["bleu"] and bleu.metric_config == measured["bleu_signature"]
    assert (recipe_published / "genotype.png").stat().st_size > 1000
    assert "![genotype](genotype.png)" in card.text


def test_rescore_reproduces_the_card_and_refuses_what_is_not_it(recipe_published, script_data, tmp_path, capsys):
    from testing.runs import rescore_script

    scores = json.loads((recipe_published / "eval_results.json").read_text())
    assert scores["example"]["source"] == "The man sees the ball." and scores["batch_size"] == 32
    assert rescore_script.main(["--model", str(recipe_published), "--dataset", str(script_data)]) == 0
    shown = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert shown["agrees"] and shown["bleu"] == scores["bleu"] and shown["sentences"] == 12
    # A card whose figure is not the folder's fails with both figures named.
    folder = tmp_path / "card"
    shutil.copytree(recipe_published, folder)
    (folder / "eval_results.json").write_text(json.dumps({**scores, "bleu": scores["bleu"] + 1.0}))
    assert rescore_script.main(["--model", str(folder), "--dataset", str(script_data)]) == 1
    assert not json.loads(capsys.readouterr().out.strip().splitlines()[-1])["agrees"]
    # Weights that are not the scored ones are refused before anything is translated.
    (folder / "eval_results.json").write_text(json.dumps(scores))
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + bytes(8))
    with pytest.raises(ValueError, match="model.safetensors differs"):
        rescore_script.main(["--model", str(folder), "--dataset", str(script_data)])


_FRESH = textwrap.dedent(
    """
    import json, sys
    repo = sys.argv[2]
    # neither the checkout nor the working folder on sys.path: the folder's own code must be all that loads
    sys.path[:] = [p for p in sys.path if p not in ("", ".") and p.rstrip("/") != repo.rstrip("/")]
    sys.modules["hf_revdarts"] = None  # hides an editable install too
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, pipeline
    folder = sys.argv[1]
    model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    enc = tok(["The man sees the ball.", "The dog sleeps."], text_target=["Der Mann.", "Der Hund."],
              return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                       decoder_input_ids=enc["labels"]).logits
    out = pipeline("translation", model=folder, trust_remote_code=True)(["The man sees the ball."], num_beams=2,
                                                                        max_length=16)
    print("RESULT " + json.dumps({"logits": logits.tolist(), "pipeline": out}))
    """
)


def _fresh(python: str, folder: Path, tmp_path: Path) -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    script = tmp_path / "fresh.py"
    script.write_text(_FRESH)
    run = subprocess.run([python, str(script), str(folder), str(REPO)], cwd=tmp_path, env=env, text=True,
                         capture_output=True, stdin=subprocess.DEVNULL, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads([line for line in run.stdout.splitlines() if line.startswith("RESULT ")][-1][7:])


def test_published_folder_works_without_hf_revdarts(recipe_published, tmp_path):
    from transformers import AutoTokenizer

    import hf_revdarts  # noqa: F401
    from hf_revdarts import RevDartsForConditionalGeneration

    model = RevDartsForConditionalGeneration.from_pretrained(recipe_published).eval()
    tok = AutoTokenizer.from_pretrained(recipe_published)
    enc = tok(["The man sees the ball.", "The dog sleeps."], text_target=["Der Mann.", "Der Hund."],
              return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                    decoder_input_ids=enc["labels"]).logits
    pythons = [sys.executable] + [str(p) for p in [REPO / ".venv-457" / "bin" / "python"] if p.exists()]
    for python in pythons:
        got = _fresh(python, recipe_published, tmp_path)
        torch.testing.assert_close(torch.tensor(got["logits"]), ref, rtol=0, atol=1e-5)
        assert isinstance(got["pipeline"][0]["translation_text"], str)


def test_publish_refuses_to_overwrite_and_failures_keep_the_old_folder(recipe_published, recipe_trained, recipe_evaluated, monkeypatch):
    args = ["--model", str(recipe_trained / "best"), "--eval_results", str(recipe_evaluated), "--output_dir", str(recipe_published),
            "--example", "The man sees the ball."]
    with pytest.raises(FileExistsError, match="--overwrite"):
        publish_script.main(args)
    before = {p.name: p.stat().st_mtime_ns for p in recipe_published.iterdir()}

    def crash(*a, **k):  # dies after the weights were written into the new folder
        raise RuntimeError("simulated crash while writing the tokenizer")

    monkeypatch.setattr(publish_script, "save_tokenizer", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        publish_script.main([*args, "--overwrite"])
    assert {p.name: p.stat().st_mtime_ns for p in recipe_published.iterdir()} == before
    assert not [p for p in recipe_published.parent.iterdir() if p.name.startswith((".tmp-", ".old-"))]
