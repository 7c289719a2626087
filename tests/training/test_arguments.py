"""The training arguments: a config file, then flags that override it (a typo named with its likely meaning, a
file's value checked like a flag's), and the model config built from them with a searched genotype stacked as a
block."""

from __future__ import annotations

import json

import pytest

from hf_revdarts.training.arguments import ModelArguments
from hf_revdarts.training.run_config import build_config, load_genotype
from testing.scripts import load_script

train_script = load_script("train")


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


def test_genotype_is_stacked_as_a_block(tmp_path):
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
