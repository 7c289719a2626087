"""Decoding chosen on a validation split (``training/tune_decoding.py``) and read back by ``training/evaluate.py
--decoding``: the choice rule and the file's reader, in one place."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
