"""Decoding settings: the checks every script that translates a split makes before any work
(``training/evaluate.py``, ``training/tune_decoding.py``), and a decoding chosen on a validation split
(``tune_decoding.py``) and read back by ``evaluate.py --decoding``: the choice rule and the file's reader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def check_translation_settings(model: str, max_new_tokens: int, batch_size: int, max_examples: int | None,
                               num_threads: int, output: str | None) -> None:
    """Refuse, before any data is read or any model loaded (generate and sacreBLEU fail deep inside otherwise),
    lengths, batch sizes and thread counts that cannot work, a folder that is not a model, an output that is a
    folder, and a translation length past the model's position limit."""
    for name, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"--max_examples must be >= 1 (or left out for all), got {max_examples}")
    if num_threads < 0:
        raise ValueError(f"--num_threads must be >= 0, got {num_threads}")
    config = Path(model) / "config.json"
    if not config.is_file():
        what = "does not exist" if not Path(model).exists() else "is not a model folder (no config.json)"
        raise FileNotFoundError(f"--model {model} {what}")
    if output is not None and Path(output).is_dir():
        raise IsADirectoryError(f"--output {output} is a folder; give the path of the JSON file to write")
    try:
        limit = json.loads(config.read_text(encoding="utf-8")).get("max_position_embeddings")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        limit = None  # named with its error when the model is loaded
    if isinstance(limit, int) and max_new_tokens > limit:
        raise ValueError(
            f"--max_new_tokens {max_new_tokens} would run the decoder past its position limit "
            f"(max_position_embeddings={limit} in {config}): give at most {limit}"
        )


def is_result_file(path: str | Path, key: str) -> bool:
    """Whether ``path`` holds a JSON object with ``key``: a result the script that writes ``key`` may replace."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and key in data


TIE = 0.01  # BLEU: differences below sacreBLEU's printed precision do not pick a costlier setting


def choose(grid: list[dict[str, Any]]) -> dict[str, Any]:
    """The setting of ``grid`` with the highest BLEU; within ``TIE`` of it, the fewest beams, then the length
    penalty closest to 1.0 (the cheaper, plainer setting)."""
    if not grid:
        raise ValueError("no decoding setting was scored: the grid is empty")
    top = max(g["bleu"] for g in grid)
    near = [g for g in grid if g["bleu"] >= top - TIE]
    return min(near, key=lambda g: (g["num_beams"], abs(g["length_penalty"] - 1.0), g["length_penalty"]))


def read_decoding(path: str | Path) -> dict[str, Any]:
    """A ``tune_decoding.py`` result, with an error that names what is wrong with it."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--decoding {path} does not exist: write it with training/tune_decoding.py") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"--decoding {path} is not valid JSON ({e}): the file is damaged") from e
    chosen = data.get("chosen") if isinstance(data, dict) else None
    if not isinstance(chosen, dict) or not {"num_beams", "length_penalty"} <= set(chosen) or "split" not in data:
        raise ValueError(f"--decoding {path} holds no chosen setting: it was not written by training/tune_decoding.py")
    return data
