"""What the scripts read: every flag checked before work, and every file (config, genotype.json, tokenizer, checkpoint,
model folder, summaries) named in its error. Each test asserts the message or the refusal, and that nothing was lost
or overwritten."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from hf_revdarts.utils.integrity import CheckpointError
from testing.runs import TINY, TINY_SEARCH, evaluate_script, publish_script, search_script, snapshot, train_script
from testing.runs import publish_args as _publish_args
from testing.runs import run_train as _train

# ---------------------------------------------------------------- checkpoints, genotypes, flags and config files


def test_truncated_checkpoint_on_resume_names_the_file_and_the_previous_one(script_trained, script_data, tmp_path):
    out = tmp_path / "resume"
    out.mkdir()
    for name in ("checkpoint-000003", "checkpoint-000006", "tokenizer"):
        shutil.copytree(script_trained / name, out / name)
    weights = out / "checkpoint-000006" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    before = snapshot(out)
    with pytest.raises(CheckpointError) as err:
        _train(script_data, out, "--max_steps", "9", "--eval_every", "3", "--save_every", "3",
               "--resume_from_checkpoint", "latest")
    assert str(weights) in str(err.value) and "truncated" in str(err.value)
    assert f"--resume_from_checkpoint {out / 'checkpoint-000003'}" in str(err.value)
    assert snapshot(out) == before, "a refused resume writes nothing"
    state = out / "checkpoint-000003" / "train_state.json"
    state.write_text(json.dumps({"step": 3}))  # whole JSON, but not this loop's state
    with pytest.raises(CheckpointError, match=r"train_state\.json: it does not hold the loop state"):
        _train(script_data, out, "--max_steps", "9", "--resume_from_checkpoint", str(out / "checkpoint-000003"))


def test_resume_into_another_folder_keeps_the_resumed_runs_tokenizer(script_trained, script_data, tmp_path):
    # The run takes the checkpoint's tokenizer, not a fresh one trained from its own flags (here another
    # --vocab_size): the checkpoint's embedding would not load, or, at the same size, would meet other token ids.
    out = tmp_path / "elsewhere"
    assert _train(script_data, out, "--max_steps", "6", "--eval_every", "3", "--save_every", "3", "--vocab_size", "250",
                  "--resume_from_checkpoint", str(script_trained / "checkpoint-000003")) == 0
    assert (out / "tokenizer" / "tokenizer.json").read_text() == (script_trained / "tokenizer" / "tokenizer.json").read_text()
    a = load_file(script_trained / "checkpoint-000006" / "model.safetensors")
    b = load_file(out / "checkpoint-000006" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_one_op_search_space_gives_a_finite_entropy():
    from hf_revdarts import RevDartsConfig
    from hf_revdarts.search import RevDartsSupernet

    config = RevDartsConfig(vocab_size=50, d_model=48, num_heads=2, encoder_layers=1, decoder_layers=1,
                            search_encoder_ops=["ffn"], max_position_embeddings=32)
    entropy = search_script.mean_entropy(RevDartsSupernet(config))  # a one-op node's entropy is normalised by log(1) = 0
    assert math.isfinite(entropy) and 0 < entropy < 1


def test_resume_refuses_other_data_and_a_checkpoint_past_max_steps(script_trained, script_data, tmp_path):
    out = tmp_path / "resume"
    out.mkdir()
    for name in ("checkpoint-000003", "checkpoint-000006", "tokenizer"):
        shutil.copytree(script_trained / name, out / name)
    with pytest.raises(ValueError, match=r"checkpoint-000006 is at step 6, past --max_steps 4"):
        _train(script_data, out, "--max_steps", "4", "--resume_from_checkpoint", "latest")
    before = snapshot(out / "checkpoint-000006")
    with pytest.raises(CheckpointError, match=r"written with 120 train examples, this run has 100: resume with the same"):
        _train(script_data, out, "--max_steps", "9", "--resume_from_checkpoint", "latest", "--max_train_examples", "100")
    assert snapshot(out / "checkpoint-000006") == before


def test_genotype_files_name_themselves(script_data, tmp_path):
    from hf_revdarts.model.genotype import Genotype

    with pytest.raises(ValueError, match="encoder_genotype is empty"):
        Genotype(encoder=[], decoder=[["ffn", "ffn"]]).stack(4, 4)
    cases = {
        "empty.json": ({"encoder": [], "decoder": [["ffn", "ffn"]]}, "encoder_genotype is empty"),
        "unknown.json": ({"encoder": [["ffn", "conv_4"]], "decoder": [["ffn", "ffn"]]}, "unknown op 'conv_4'"),
        "flat.json": ({"encoder": ["ffn", "ffn"], "decoder": [["ffn", "ffn"]]}, r"encoder_genotype\[0\] must list"),
    }
    for name, (genotype, message) in cases.items():
        (tmp_path / name).write_text(json.dumps(genotype))
        with pytest.raises(ValueError, match=rf"--genotype .*{name}: .*{message}"):
            train_script.main(["--dataset", str(script_data), "--output_dir", str(tmp_path / "out"), "--genotype",
                               str(tmp_path / name)])
    (tmp_path / "latin1.json").write_bytes('{"encoder": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.json is not valid JSON"):
        train_script.main(["--output_dir", str(tmp_path / "out"), "--genotype", str(tmp_path / "latin1.json")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, message", [
    (["--num_beams", "0"], "--num_beams must be >= 1, got 0"),
    (["--max_examples", "0"], "--max_examples must be >= 1"),
    (["--max_new_tokens", "0"], "--max_new_tokens must be >= 1"),
    (["--batch_size", "-1"], "--batch_size must be >= 1"),
])
def test_evaluate_refuses_bad_flags_before_any_work(script_trained, script_data, tmp_path, monkeypatch, flags, message):
    monkeypatch.setattr(evaluate_script, "load_split", lambda *a: pytest.fail("data read before the flags were checked"))
    with pytest.raises(ValueError, match=message):
        evaluate_script.main(["--model", str(script_trained / "best"), "--dataset", str(script_data), "--output",
                              str(tmp_path / "e.json"), *flags])
    assert not (tmp_path / "e.json").exists()


def test_evaluate_names_a_missing_model_folder_and_an_output_folder(script_trained, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--model .*nowhere does not exist"):
        evaluate_script.main(["--model", str(tmp_path / "nowhere")])
    with pytest.raises(IsADirectoryError, match="is a folder"):
        evaluate_script.main(["--model", str(script_trained / "best"), "--output", str(tmp_path)])


@pytest.mark.parametrize("flags, error, message", [
    (["--lr", "0"], ValueError, "--lr must be a finite number > 0"),
    (["--lr", "nan"], ValueError, "--lr must be a finite number > 0, got nan"),
    (["--seed", "-1"], ValueError, r"--seed must be in \[0, 2\*\*32\)"),
    (["--dropout", "1.0"], ValueError, r"--dropout must be a probability in \[0, 1\)"),
    (["--label_smoothing", "-0.1"], ValueError, "--label_smoothing must be a probability"),
    (["--warmup_steps", "-5"], ValueError, "--warmup_steps must be a finite number >= 0"),
    (["--max_grad_norm", "-1"], ValueError, "--max_grad_norm must be"),
    (["--checkpoints_total_limit", "-1"], ValueError, "--checkpoints_total_limit must be"),
    (["--max_non_finite_steps", "-1"], ValueError, "--max_non_finite_steps must be"),
    (["--tgt_lang", "en"], ValueError, "--src_lang and --tgt_lang are both 'en'"),
    (["--max_train_examples", "0"], ValueError, "--max_train_examples must be >= 1"),
    (["--d_model", "0"], ValueError, "--d_model must be >= 1"),
    (["--encoder_layers", "0"], ValueError, "--encoder_layers must be >= 1"),
    (["--bleu_sentences", "0"], ValueError, "--bleu_sentences must be >= 1"),
    (["--time_budget_minutes", "-1"], ValueError, "--time_budget_minutes must be"),
    (["--tokenizer", "/nonexistent/tok"], FileNotFoundError, "--tokenizer /nonexistent/tok does not exist"),
    (["--max_tokens", "10", "--max_length", "24"], ValueError, "--max_tokens 10 < --max_length 24"),
])
def test_train_flags_are_checked_when_parsed(flags, error, message):
    with pytest.raises(error, match=message):
        train_script.parse_train_args(["--output_dir", "o", *flags])


@pytest.mark.parametrize("flags, message", [
    (["--arch_lr", "0"], "--arch_lr must be a finite number > 0"),
    (["--tie_blocks", "-1"], "--tie_blocks must be a finite number >= 0"),
    (["--arch_start_step", "-1"], "--arch_start_step must be"),
    (["--arch_start_step", "1300"], r"--arch_start_step 1300 >= --max_steps 1300: α would never be updated"),
    (["--arch_split", "train"], "--arch_split train is the training split: α would be fit on the data θ trains on"),
])
def test_search_flags_are_checked_before_any_work(script_data, tmp_path, flags, message):
    with pytest.raises(ValueError, match=message):
        search_script.main(["--dataset", str(script_data), "--output_dir", str(tmp_path / "s"), *flags])
    assert not (tmp_path / "s").exists()


def test_model_sizes_that_cannot_hold_the_sentences_are_refused_before_work(script_data, tmp_path):
    with pytest.raises(ValueError, match="--max_position_embeddings 20 < --max_length 24"):
        _train(script_data, tmp_path / "out", "--max_position_embeddings", "20")
    assert not (tmp_path / "out").exists()


def test_genotype_of_an_unfinished_or_failed_search_is_not_trained_silently(script_data, tmp_path):
    search = tmp_path / "search"
    search.mkdir()
    (search / "genotype.json").write_text(json.dumps({"encoder": [["ffn", "glu"]], "decoder": [["ffn", "ffn"]]}))
    with pytest.raises(ValueError, match=r"has not finished \(no search_summary\.json\).*--genotype .*genotype\.json"):
        train_script.main(["--output_dir", str(tmp_path / "out"), "--genotype", str(search)])
    (search / "search_summary.json").write_text(json.dumps({"steps": 4, "error": "diverged"}))
    with pytest.raises(ValueError, match="stopped with an error"):
        train_script.main(["--output_dir", str(tmp_path / "out"), "--genotype", str(search)])
    (search / "search_summary.json").write_text(json.dumps({"steps": 4}))
    from hf_revdarts.training.run_config import load_genotype

    assert load_genotype(str(search))[0]["encoder"] == [["ffn", "glu"]]
    assert load_genotype(str(search / "genotype.json"))[0]["encoder"] == [["ffn", "glu"]]
    assert not (tmp_path / "out").exists()


def test_damaged_tokenizer_folder_is_named_before_any_work(script_data, script_trained, tmp_path):
    tok = tmp_path / "tok"
    shutil.copytree(script_trained / "tokenizer", tok)
    (tok / "tokenizer.json").write_text('{"version": "1.0", "trunc')
    for script, extra in ((train_script, TINY), (search_script, TINY_SEARCH)):
        with pytest.raises(ValueError, match=r"tok/tokenizer\.json is not valid JSON"):
            script.main(["--dataset", str(script_data), "--output_dir", str(tmp_path / "out"), *extra, "--tokenizer",
                         str(tok)])
    assert not (tmp_path / "out").exists()


def test_config_files_name_themselves(tmp_path):
    cases = {
        "broken.yaml": ("output_dir: o\nlr: [1, 2\n", r"broken\.yaml is not valid YAML"),
        "broken.json": ('{"output_dir": "o",}', r"broken\.json is not valid JSON"),
        "type.yaml": ("output_dir: o\nmax_steps: many\n", r"type\.yaml: --max_steps 'many' is not a valid int"),
        "float.yaml": ("output_dir: o\nmax_steps: 2.5\n", r"float\.yaml: --max_steps 2\.5 is not a valid int"),
        "list.yaml": ("output_dir: o\nlr: [1, 2]\n", r"list\.yaml: --lr \[1, 2\] is not a valid float"),
        "bool.yaml": ("output_dir: o\noverwrite_output_dir: maybe\n", r"bool\.yaml: --overwrite_output_dir 'maybe'"),
        "choice.yaml": ("output_dir: o\nmixed_precision: fp8\n", r"choice\.yaml: --mixed_precision 'fp8' is not one"),
        "value.yaml": ("output_dir: o\nlr: -1\n", "--lr must be a finite number > 0"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=message):
            train_script.parse_train_args([str(tmp_path / name)])
    (tmp_path / "latin1.yaml").write_bytes("output_dir: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.yaml is not UTF-8"):
        train_script.parse_train_args([str(tmp_path / "latin1.yaml")])
    (tmp_path / "ok.yaml").write_text("output_dir: o\nlr: 1e-3\nmax_steps: 7\noverwrite_output_dir: true\n")
    args = train_script.parse_train_args([str(tmp_path / "ok.yaml")])
    assert args.run.lr == 1e-3 and args.run.max_steps == 7 and args.run.overwrite_output_dir is True
    with pytest.raises(ValueError, match=r"ok\.yaml\) must be the first argument"):
        train_script.parse_train_args(["--output_dir", "o", str(tmp_path / "ok.yaml")])


def test_a_config_file_extends_another(tmp_path):
    """extends: the other file's values with this one's on top (the per-pair recipes); a loop or a bad value of
    the base is named."""
    (tmp_path / "base.yaml").write_text("output_dir: o\nlr: 1e-3\nmax_steps: 7\n")
    (tmp_path / "pair.yaml").write_text("extends: base.yaml\nmax_steps: 9\n")
    args = train_script.parse_train_args([str(tmp_path / "pair.yaml")])
    assert (args.run.lr, args.run.max_steps, args.run.output_dir) == (1e-3, 9, "o")
    assert train_script.parse_train_args([str(tmp_path / "pair.yaml"), "--max_steps", "3"]).run.max_steps == 3
    (tmp_path / "loop.yaml").write_text("extends: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ValueError, match=r"loop\.yaml extends itself"):
        train_script.parse_train_args([str(tmp_path / "loop.yaml")])
    (tmp_path / "bad.yaml").write_text("output_dir: o\nmax_steps: many\n")
    (tmp_path / "child.yaml").write_text("extends: bad.yaml\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: --max_steps 'many'"):
        train_script.parse_train_args([str(tmp_path / "child.yaml")])
    (tmp_path / "gone.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(FileNotFoundError, match="nowhere.yaml does not exist"):
        train_script.parse_train_args([str(tmp_path / "gone.yaml")])


# ---------------------------------------------------------------- publish and evaluate inputs, Hub-format data


def test_publish_names_missing_and_wrong_inputs(script_trained, script_evaluated, tmp_path):
    best = script_trained / "best"
    cases = [
        (["--train_summary", str(tmp_path / "none.json")], FileNotFoundError, "--train_summary .*none.json does not"),
        (["--search_dir", str(tmp_path / "no_search")], FileNotFoundError, "--search_dir .*no_search is not a folder"),
        (["--search_dir", str(tmp_path)], FileNotFoundError, "has no search_summary.json"),
    ]
    for extra, error, message in cases:
        with pytest.raises(error, match=message):
            publish_script.main(_publish_args(best, script_evaluated, tmp_path / "pub", *extra))
    with pytest.raises(ValueError, match="would replace the folder of --model"):
        publish_script.main(_publish_args(best, script_evaluated, script_trained))
    failed = tmp_path / "failed_search"
    failed.mkdir()
    (failed / "search_summary.json").write_text(json.dumps({"steps": 4, "error": "diverged at step 4"}))
    with pytest.raises(ValueError, match=r"search_summary\.json has no seconds.*the run failed: diverged at step 4"):
        publish_script.main(_publish_args(best, script_evaluated, tmp_path / "pub", "--search_dir", str(failed)))
    as_list = tmp_path / "list.json"
    as_list.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"list\.json must hold a JSON object"):
        publish_script.main(_publish_args(best, as_list, tmp_path / "pub"))
    assert not (tmp_path / "pub").exists()


def test_damaged_model_folder_files_name_themselves(script_trained, script_data, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(script_trained / "best", folder)
    args = ["--model", str(folder), "--dataset", str(script_data), "--max_examples", "2", "--output",
            str(tmp_path / "e.json")]
    (folder / "generation_config.json").write_text('{"bos_token_id": 1, "eos')
    with pytest.raises(ValueError, match=r"model/generation_config\.json is not valid JSON"):
        evaluate_script.main(args)  # transformers alone falls back to default generation settings without a word
    shutil.copy(script_trained / "best" / "generation_config.json", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "d_model": "wide"}))
    with pytest.raises(ValueError, match=r"model/config\.json: d_model='wide' must be a positive integer"):
        evaluate_script.main(args)
    assert not (tmp_path / "e.json").exists()


def test_hub_format_dataset_through_the_scripts(script_data, tmp_path):
    """A ``datasets`` DatasetDict with a ``translation`` column (as wmt14), saved with save_to_disk and given
    to train.py and evaluate.py as --dataset: the path a user with a Hub data set takes."""
    import datasets

    def split(name: str) -> datasets.Dataset:
        en = (script_data / f"{name}.en").read_text(encoding="utf-8").splitlines()
        de = (script_data / f"{name}.de").read_text(encoding="utf-8").splitlines()
        return datasets.Dataset.from_dict({"translation": [{"de": d, "en": e} for e, d in zip(en, de)]})

    hub = tmp_path / "wmt-like"
    datasets.DatasetDict({"train": split("train"), "validation": split("val"), "test": split("test")}).save_to_disk(
        str(hub))
    out = tmp_path / "train"
    assert _train(hub, out, "--max_steps", "2", "--eval_every", "2", "--save_every", "2") == 0
    assert evaluate_script.main(["--model", str(out / "best"), "--dataset", str(hub), "--split", "test",
                                 "--num_beams", "1", "--output", str(out / "eval.json")]) == 0
    assert json.loads((out / "eval.json").read_text())["sentences"] == 12
