"""What the tests of the scripts share: the scripts as modules, tiny settings for their runs, and checks of what a
run left behind. The runs themselves are fixtures in tests/conftest.py.

Importing this module imports the four scripts and all they import: import it in the tests of the scripts, not in a
conftest that every test loads."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from testing.scripts import load_script

train_script = load_script("train")
search_script = load_script("search")
evaluate_script = load_script("evaluate")
publish_script = load_script("publish")
rescore_script = load_script("rescore")
tune_script = load_script("tune_decoding")

TINY = ["--d_model", "48", "--num_heads", "2", "--vocab_size", "300", "--max_tokens", "400", "--max_length", "24",
        "--warmup_steps", "4", "--lr", "3e-3", "--bleu_sentences", "8", "--num_threads", "1",
        "--genotype", "standard", "--encoder_layers", "2", "--decoder_layers", "2"]
TINY_SEARCH = ["--d_model", "48", "--num_heads", "2", "--vocab_size", "300", "--max_tokens", "200", "--max_length",
               "16", "--warmup_steps", "2", "--num_threads", "1", "--encoder_layers", "1", "--decoder_layers", "1",
               "--tie_blocks", "0", "--eval_batches", "2", "--no_figures", "--max_train_examples", "120",
               "--stop_share", "1.0", "--stop_argmax_fraction", "1.0",
               # a few steps of the plain DARTS step from the start (the default recipe warms θ up for 1000)
               "--lr", "5e-4", "--eval_every", "25", "--arch_start_step", "0", "--warmup_sampling", "full",
               "--prune_below", "0", "--selection", "argmax"]

# The small-data recipe's extra flags (dropout in attention and ffn, averaging of the last 2 checkpoints), and the
# tiny sizes its runs use (each run names its genotype and depth).
RECIPE = ["--attention_dropout", "0.1", "--activation_dropout", "0.1", "--average_checkpoints", "2"]
RECIPE_SIZES = ["--d_model", "48", "--num_heads", "2", "--vocab_size", "300", "--max_tokens", "400", "--max_length",
                "24", "--warmup_steps", "4", "--lr", "3e-3", "--bleu_sentences", "8", "--num_threads", "1"]


def strict_json(path: Path):
    """The file as JSON, failing on the bare NaN/Infinity Python's json would accept."""
    def refuse(token):
        raise ValueError(f"{path} holds {token}, which is not JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and mtime: equal snapshots mean nothing was touched."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def all_finite(path: Path) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in load_file(path).values() if t.is_floating_point())


def run_train(data: Path, out: Path, *extra: str) -> int:
    return train_script.main(["--dataset", str(data), "--output_dir", str(out), *TINY, *extra])


def run_recipe_train(data: Path, out: Path, *extra: str) -> int:
    return train_script.main(["--dataset", str(data), "--output_dir", str(out), *RECIPE_SIZES, *extra])


def publish_args(model: Path, results: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--eval_results", str(results), "--output_dir", str(out),
            "--example", "The man sees the ball.", *extra]
