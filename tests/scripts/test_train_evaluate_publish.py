"""Derived models: training/train.py, evaluate.py and publish.py on a tiny slice of the bundled sample."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from _helpers import load_script
from hf_revdarts.evaluation.translation import load_model_folder
from hf_revdarts.training.arguments import ModelArguments
from hf_revdarts.training.run_config import build_config, load_genotype

REPO = Path(__file__).resolve().parents[1]
evaluate_script = load_script("evaluate")
publish_script = load_script("publish")
train_script = load_script("train")

# The small-data recipe's extra flags (dropout in attention and ffn, averaging of the last 2 checkpoints).
RECIPE = ["--attention_dropout", "0.1", "--activation_dropout", "0.1", "--average_checkpoints", "2"]
TINY = ["--d_model", "48", "--num_heads", "2", "--vocab_size", "300", "--max_tokens", "400", "--max_length", "24",
        "--warmup_steps", "4", "--lr", "3e-3", "--bleu_sentences", "8", "--num_threads", "1"]


@pytest.fixture(scope="module")
def data(script_data: Path) -> Path:
    """The small sample folder of tests/conftest.py (120 train, 16 val, 12 test pairs)."""
    return script_data


def _train(data: Path, out: Path, *extra: str) -> None:
    assert train_script.main(["--dataset", str(data), "--output_dir", str(out), *TINY, *extra]) == 0


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train")
    _train(data, out, "--max_steps", "6", "--eval_every", "3", "--save_every", "3", "--genotype", "standard",
           "--encoder_layers", "2", "--decoder_layers", "2", *RECIPE)
    return out


@pytest.fixture(scope="module")
def evaluated(trained, data) -> Path:
    out = trained / "eval_test.json"
    assert evaluate_script.main(["--model", str(trained / "best"), "--dataset", str(data), "--split", "test",
                                 "--num_beams", "2", "--length_penalty", "1.2", "--output", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def published(trained, evaluated, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pub") / "revdarts-tiny"
    assert publish_script.main(["--model", str(trained / "best"), "--eval_results", str(evaluated),
                                "--output_dir", str(out), "--example", "The man sees the ball."]) == 0
    return out


def test_train_writes_best_folder_history_and_checkpoints(trained):
    summary = json.loads((trained / "train_summary.json").read_text())
    assert summary["steps"] == 6 and [h["step"] for h in summary["history"]] == [3, 6]
    assert {"bleu", "chrf", "bleu_signature", "val_loss"} <= set(summary["history"][-1])
    assert summary["genotype"]["encoder"] == [["self_attn", "ffn"]] * 2
    best = trained / "best"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "modeling_revdarts.py"):
        assert (best / name).is_file(), name
    assert sorted(p.name for p in trained.glob("checkpoint-*")) == ["checkpoint-000003", "checkpoint-000006"]
    assert not list(trained.glob(".tmp-*"))


def test_resume_reaches_the_uninterrupted_weights(trained, data, tmp_path):
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(trained / "checkpoint-000003", resumed / "checkpoint-000003")
    shutil.copytree(trained / "tokenizer", resumed / "tokenizer")
    _train(data, resumed, "--max_steps", "6", "--eval_every", "3", "--save_every", "3", "--genotype", "standard",
           "--encoder_layers", "2", "--decoder_layers", "2", *RECIPE, "--resume_from_checkpoint", "latest")
    from safetensors.torch import load_file

    assert not list(trained.glob("checkpoint-*/pytorch_model.bin")), "checkpoints hold safetensors, not pickle"
    a = load_file(trained / "checkpoint-000006" / "model.safetensors")
    b = load_file(resumed / "checkpoint-000006" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_genotype_is_stacked_as_a_block(data, tmp_path):
    geno = {"encoder": [["conv_3", "glu"]], "decoder": [["dynconv_3", "ffn"]]}
    (tmp_path / "genotype.json").write_text(json.dumps(geno))
    args = train_script.parse_train_args(["--output_dir", "x", "--encoder_layers", "4", "--decoder_layers", "2"])
    tok = type("Tok", (), {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "__len__": lambda s: 50})()
    cfg = build_config(args.model, tok, args.data.max_length, load_genotype(str(tmp_path / "genotype.json"))[0])
    assert cfg.encoder_genotype == [["conv_3", "glu"]] * 4 and cfg.decoder_genotype == [["dynconv_3", "ffn"]] * 2
    assert cfg.vocab_size == 50 and cfg.max_position_embeddings == 128 and cfg.reversible
    geno["encoder"] = [["conv_3", "glu"], ["ffn", "ffn"]]
    with pytest.raises(ValueError, match="not a multiple"):
        build_config(ModelArguments(encoder_layers=3), tok, 64, geno)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_genotype(str(tmp_path / "bad.json"))


def test_evaluate_reports_sacrebleu_with_signature(evaluated):
    res = json.loads(evaluated.read_text())
    assert res["sentences"] == 12 and len(res["hypotheses"]) == 12
    assert res["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert res["bleu_lowercase_signature"].startswith("nrefs:1|case:lc|eff:no|tok:13a")
    assert 0.0 <= res["bleu"] <= res["bleu_lowercase"] <= 100.0 and 0.0 <= res["chrf"] <= 100.0
    assert res["num_beams"] == 2 and res["length_penalty"] == 1.2


def test_translate_passes_length_penalty_to_beam_search(trained):
    from hf_revdarts.evaluation.translation import translate

    model, tok = load_model_folder(trained / "best")
    seen = []
    generate = model.generate
    model.generate = lambda **kw: seen.append(kw) or generate(**kw)
    translate(model, tok, ["The man sees the ball."], num_beams=3, max_new_tokens=4, length_penalty=0.6)
    translate(model, tok, ["The man sees the ball."], num_beams=1, max_new_tokens=4, length_penalty=0.6)
    assert seen[0]["num_beams"] == 3 and seen[0]["length_penalty"] == 0.6
    assert "length_penalty" not in seen[1], "a beam-only setting is not passed to greedy decoding"


def test_average_checkpoints_writes_the_mean_of_the_last_checkpoints(trained):
    from hf_revdarts import RevDartsForConditionalGeneration

    summary = json.loads((trained / "train_summary.json").read_text())
    averaged = summary["averaged"]
    assert averaged["checkpoints"] == ["checkpoint-000003", "checkpoint-000006"] and averaged["steps"] == [3, 6]
    assert {"val_loss", "bleu", "bleu_lowercase", "chrf"} <= set(averaged) and averaged["val_loss"] > 0
    model = RevDartsForConditionalGeneration.from_pretrained(trained / "averaged")
    assert model.config.attention_dropout == 0.1 and model.config.activation_dropout == 0.1
    from safetensors.torch import load_file

    a, b = (load_file(trained / c / "model.safetensors") for c in averaged["checkpoints"])
    state = model.state_dict()
    assert set(a) <= set(state) and set(state) - set(a) <= {"lm_head.weight"}  # the tied head is stored once
    for key in a:
        expected = (a[key].float() + b[key].float()) / 2 if a[key].is_floating_point() else a[key]
        torch.testing.assert_close(state[key], expected.to(a[key].dtype), rtol=0, atol=0, msg=key)
    assert any(not torch.equal(state[k], a[k]) for k in a if a[k].is_floating_point()), "the two checkpoints differ"
    assert json.loads((trained / "averaged" / "training_state.json").read_text())["averaged"]["steps"] == [3, 6]
    assert (trained / "averaged" / "tokenizer.json").is_file()


def test_averaging_flags_are_refused_before_any_work(data, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="--checkpoints_total_limit 2 keeps fewer"):
        _train(data, out, "--max_steps", "6", "--save_every", "2", "--average_checkpoints", "3")
    with pytest.raises(ValueError, match="writes only 2 checkpoint"):
        _train(data, out, "--max_steps", "6", "--save_every", "3", "--average_checkpoints", "3",
               "--checkpoints_total_limit", "0")
    assert not out.exists()
    assert train_script.checkpoints_written(6, 4) == 2 and train_script.checkpoints_written(8, 4) == 2


def test_time_budget_alone_is_not_capped_by_the_default_steps(monkeypatch):
    from hf_revdarts.training import training_utils

    parse = train_script.parse_train_args
    assert parse(["--output_dir", "o"]).run.max_steps == train_script.DEFAULT_MAX_STEPS == 1000
    assert parse(["--output_dir", "o", "--time_budget_minutes", "5"]).run.max_steps is None
    both = parse(["--output_dir", "o", "--time_budget_minutes", "5", "--max_steps", "20"])
    assert both.run.max_steps == 20 and "whichever comes first" in train_script.budget_text(both)

    # The loop with no step limit runs until step() reports the budget spent, far past 1000 steps.
    saved = []
    monkeypatch.setattr(training_utils, "save_checkpoint", lambda acc, out, state, limit: saved.append(state.step))
    accelerator = type("Acc", (), {"is_local_main_process": False, "log": lambda self, *a, **k: None})()
    state = training_utils.TrainState({})

    def step():
        state.step += 1
        state.stopped_early = state.step == 2500  # what train_step does once the time is spent
        return {}

    run_args = parse(["--output_dir", "o", "--time_budget_minutes", "5", "--save_every", "1000",
                      "--eval_every", "5000"]).run
    training_utils.run_steps(accelerator, state, run_args, Path("o"), step, lambda: False, "train")
    assert state.step == 2500 and saved == [1000, 2000, 2500]


def test_model_card_parses_and_carries_the_measured_bleu(published, evaluated):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    card = ModelCard.load(published / "README.md")
    data = card.data.to_dict()
    assert data["pipeline_tag"] == "translation" and data["language"] == ["en", "de"]
    assert data["license"] == "apache-2.0" and set(data["metrics"]) == {"bleu", "chrf"}
    name, results = model_index_to_eval_results(data["model-index"])
    bleu = [r for r in results if r.metric_type == "bleu"][0]
    measured = json.loads(evaluated.read_text())
    assert bleu.metric_value == measured["bleu"] and bleu.metric_config == measured["bleu_signature"]
    assert (published / "genotype.png").stat().st_size > 1000
    assert "![genotype](genotype.png)" in card.text


_FRESH = textwrap.dedent(
    """
    import json, sys
    repo = sys.argv[2]
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


def test_published_folder_works_without_hf_revdarts(published, tmp_path):
    from transformers import AutoTokenizer

    import hf_revdarts  # noqa: F401
    from hf_revdarts import RevDartsForConditionalGeneration

    model = RevDartsForConditionalGeneration.from_pretrained(published).eval()
    tok = AutoTokenizer.from_pretrained(published)
    enc = tok(["The man sees the ball.", "The dog sleeps."], text_target=["Der Mann.", "Der Hund."],
              return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                    decoder_input_ids=enc["labels"]).logits
    pythons = [sys.executable] + [str(p) for p in [REPO / ".venv-457" / "bin" / "python"] if p.exists()]
    for python in pythons:
        got = _fresh(python, published, tmp_path)
        torch.testing.assert_close(torch.tensor(got["logits"]), ref, rtol=0, atol=1e-5)
        assert isinstance(got["pipeline"][0]["translation_text"], str)


def test_publish_refuses_to_overwrite_and_failures_keep_the_old_folder(published, trained, evaluated, monkeypatch):
    args = ["--model", str(trained / "best"), "--eval_results", str(evaluated), "--output_dir", str(published),
            "--example", "The man sees the ball."]
    with pytest.raises(FileExistsError, match="--overwrite"):
        publish_script.main(args)
    before = {p.name: p.stat().st_mtime_ns for p in published.iterdir()}

    def crash(*a, **k):  # dies after the weights were written into the new folder
        raise RuntimeError("simulated crash while writing the tokenizer")

    monkeypatch.setattr(publish_script, "save_tokenizer", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        publish_script.main([*args, "--overwrite"])
    assert {p.name: p.stat().st_mtime_ns for p in published.iterdir()} == before
    assert not [p for p in published.parent.iterdir() if p.name.startswith((".tmp-", ".old-"))]


def test_bad_model_folders_are_clear_errors(trained, tmp_path):
    best = trained / "best"
    no_tok = tmp_path / "no_tok"
    shutil.copytree(best, no_tok)
    (no_tok / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        load_model_folder(no_tok)
    no_weights = tmp_path / "no_weights"
    shutil.copytree(best, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_model_folder(no_weights)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(best, corrupt)
    data = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_model_folder(corrupt)
    mismatch = tmp_path / "mismatch"
    shutil.copytree(best, mismatch)
    from hf_revdarts.training.tokenization import save_tokenizer, train_tokenizer

    other = train_tokenizer((REPO / "samples" / "en-de" / "train.en").read_text().splitlines(), vocab_size=120)
    save_tokenizer(other, mismatch)
    with pytest.raises(ValueError, match="vocab_size"):
        load_model_folder(mismatch)


def test_config_file_then_flags(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("output_dir: runs/x\nlr: 5e-4\nmemory_mode: checkpoint\nencoder_layers: 2\n")
    args = train_script.parse_train_args([str(config), "--lr", "1e-2", "--genotype", "g.json"])
    assert args.run.output_dir == "runs/x" and args.model.encoder_layers == 2 and args.model.memory_mode == "checkpoint"
    assert args.run.lr == 1e-2 and args.train.genotype == "g.json", "flags override the file"
    assert args.run.max_steps == 1000 and args.data.vocab_size == 8000, "the rest keeps the defaults"
    typo = tmp_path / "train.json"
    typo.write_text(json.dumps({"output_dir": "o", "max_stepz": 3}))
    with pytest.raises(ValueError, match="'max_stepz' \\(did you mean 'max_steps'\\?\\)"):
        train_script.parse_train_args([str(typo)])
    bad = tmp_path / "bad.yaml"
    bad.write_text("output_dir: o\nmemory_mode: fast\n")  # a file's value is checked like a flag's
    with pytest.raises(ValueError, match="--memory_mode 'fast'"):
        train_script.parse_train_args([str(bad)])


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_committed_configs_parse(config):
    script = load_script("search" if "search" in config.name else "train")
    args = script.parse_search_args([str(config)]) if "search" in config.name else script.parse_train_args([str(config)])
    assert args.run.output_dir and not Path(args.run.output_dir).is_absolute()
    assert args.model.memory_mode in ("reversible", "ordinary")
    if "train" in config.name:
        script.check_averaging(args)  # the averaged checkpoints are written and kept


@pytest.mark.parametrize("mode", ["reversible", "checkpoint", "hybrid"])
def test_memory_modes_give_ordinary_autograd_gradients(mode):
    from _helpers import grad_errors, padded_batch, param_grads
    from hf_revdarts import RevDartsForConditionalGeneration
    from hf_revdarts.memory import apply_memory_mode

    tok = type("Tok", (), {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "__len__": lambda s: 60})()

    def build(memory_mode):
        args = ModelArguments(d_model=48, num_heads=2, encoder_layers=2, decoder_layers=2, memory_mode=memory_mode)
        torch.manual_seed(0)
        model = RevDartsForConditionalGeneration(build_config(args, tok, 16))
        apply_memory_mode(model, memory_mode, keep_layers=1)
        return model.train()

    model, reference = build(mode), build("ordinary")
    stacks = [model.model.encoder.stack, model.model.decoder.stack]
    assert model.config.reversible == (mode != "checkpoint") and not reference.config.reversible
    assert model.config.reversible_keep_layers == (1 if mode == "hybrid" else 0)
    assert all(s.gradient_checkpointing == (mode == "checkpoint") for s in stacks)
    total, worst = grad_errors(param_grads(model, padded_batch(60)), param_grads(reference, padded_batch(60)))
    assert total < 1e-5 and worst < 1e-4, (total, worst)


def test_committed_json_has_no_absolute_paths():
    """Published and committed results name models and data, never this machine's folders."""
    listed = subprocess.run(["git", "ls-files", "*.json"], cwd=REPO, capture_output=True, text=True)
    files = listed.stdout.split() if listed.returncode == 0 else []
    if not files:
        pytest.skip("not a git checkout")

    def strings(value):
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for v in value.values():
                yield from strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)

    for name in files:
        absolute = [s for s in strings(json.loads((REPO / name).read_text())) if Path(s).is_absolute()]
        assert not absolute, f"{name} holds absolute paths: {absolute}"
