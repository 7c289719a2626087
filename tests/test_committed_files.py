"""What the repository commits: every config file parses as the scripts read it, and committed JSON (results,
model cards' data) names models and data, never this machine's folders."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from testing import REPO
from testing.scripts import load_script


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_committed_configs_parse(config):
    script = load_script("search" if "search" in config.name else "train")
    args = script.parse_search_args([str(config)]) if "search" in config.name else script.parse_train_args([str(config)])
    assert args.run.output_dir and not Path(args.run.output_dir).is_absolute()
    assert args.model.memory_mode in ("reversible", "ordinary")
    if "train" in config.name:
        script.check_averaging(args)  # the averaged checkpoints are written and kept


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
