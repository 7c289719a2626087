#!/usr/bin/env python
"""The README's Multi30k commands, run as written: does a user who follows them get the protocol's row?

    python benchmarks/readme_commands.py                   # ../shared/data/multi30k for /path/to/multi30k
    python benchmarks/readme_commands.py --dry_run         # the commands, nothing run

Reads the bash block of the README's "Search and train on Multi30k" section, puts ``--data`` in for
``/path/to/multi30k`` and runs its commands one after another from the repository root (search, train, evaluate),
each logged with its wall and CPU seconds under ``runs/readme/<pair>/``; nothing else is added to them. A stage
that finished is not run again; one that was stopped goes on from its latest checkpoint (``--resume_from_checkpoint
latest``, the same run continued; a stage stopped before its first checkpoint starts again). The seconds add up
over sittings (``timing.json``).

Then the test BLEU meets the protocol's row of the default recipe (``benchmarks/results/<pair>/summary.json``,
row ``searched``): reproduced when it lies within that row's runs (their lowest to highest BLEU, widened by their
standard deviation), and the genotype is set beside the protocol's searches' (the README's search is the protocol's
``search-s0``: same recipe and seed). Writes ``benchmarks/results/readme/<pair>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from hf_revdarts.protocol.execution import restart_flags, run_logged, timing_fields
from hf_revdarts.protocol.record import repo_path
from hf_revdarts.utils.atomic import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Search and train on Multi30k"
PLACEHOLDER = "/path/to/multi30k"
STAGES = {"search.py": "search", "train.py": "train", "evaluate.py": "evaluate"}
logger = logging.getLogger("readme_commands")


def readme_commands(readme: Path, data: str) -> list[list[str]]:
    """The commands of the README's Multi30k block (continued lines joined), ``data`` for the placeholder."""
    text = readme.read_text(encoding="utf-8")
    if SECTION not in text or "```bash" not in text.split(SECTION, 1)[1]:
        raise ValueError(f"{readme}: no bash block under {SECTION!r}")
    block = text.split(SECTION, 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line.replace(PLACEHOLDER, data)) for line in block.replace("\\\n", " ").splitlines()
                if line.strip()]
    scripts = [Path(c[1]).name if len(c) > 1 and c[0] == "python" else None for c in commands]
    if scripts != list(STAGES):
        raise ValueError(f"{readme}: the Multi30k block runs {scripts}, not python training/{{search,train,evaluate}}.py "
                         "in that order; update this benchmark with it")
    return commands


def output_dir(command: list[str]) -> Path:
    """The run folder of a search or train command: its --output_dir, else its config file's."""
    if "--output_dir" in command:
        return REPO / command[command.index("--output_dir") + 1]
    config = next(a for a in command[2:] if a.endswith((".yaml", ".yml", ".json")))
    return REPO / yaml.safe_load((REPO / config).read_text(encoding="utf-8"))["output_dir"]


def scores_file(command: list[str]) -> Path:
    """Where an evaluate command writes its scores: its --output, else evaluate.py's default beside the model."""
    if "--output" in command:
        return REPO / command[command.index("--output") + 1]
    return REPO / command[command.index("--model") + 1] / f"eval_{command[command.index('--split') + 1]}.json"


def finished(stage: str, command: list[str]) -> bool:
    """Whether a stage's result is there: the search's genotype, the training's summary, the test scores."""
    path = {"search": lambda: output_dir(command) / "search_summary.json",
            "train": lambda: output_dir(command) / "train_summary.json", "evaluate": lambda: scores_file(command)}[stage]()
    return path.is_file() and (stage != "search" or "genotype" in json.loads(path.read_text(encoding="utf-8")))


def protocol_row(summary: Path, bleu: float) -> dict[str, Any]:
    """The protocol's default-recipe row and whether ``bleu`` lies within its runs' spread."""
    row = json.loads(summary.read_text(encoding="utf-8"))["kinds"]["searched"]
    runs = row["bleu"]
    low, high = min(runs.values()) - row["bleu_std"], max(runs.values()) + row["bleu_std"]
    return {"summary": repo_path(summary, REPO), "runs": runs, "mean_over_searches": row.get("bleu_search_mean"),
            "std": row["bleu_std"], "spread": [round(low, 2), round(high, 2)],
            "within_seed_spread": bool(low <= bleu <= high)}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/multi30k", help=f"what {PLACEHOLDER} stands for")
    p.add_argument("--readme", default=str(REPO / "README.md"))
    p.add_argument("--results_dir", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--work_dir", default=str(REPO / "runs" / "readme"))
    p.add_argument("--dry_run", action="store_true")
    args = p.parse_args(argv)
    pair = "en-de"  # the README documents En→De; the other pairs' configs differ only in their languages
    commands = readme_commands(Path(args.readme), args.data)
    if args.dry_run:
        print("\n".join(shlex.join(c) for c in commands))
        return 0
    work = Path(args.work_dir) / pair
    work.mkdir(parents=True, exist_ok=True)
    timing_path = work / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {"commands": []}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    before = True  # every stage so far was finished before: a later one that is too stands
    for command in commands:
        stage = STAGES[Path(command[1]).name]
        if before and finished(stage, command):
            logger.info("%s: done before", stage)
            continue
        before = False  # a stage ran now: the ones after it run again on what it made
        ran = command + (restart_flags(output_dir(command)) if stage != "evaluate" else [])
        shown = shlex.join(ran)
        timing["commands"].append(shown)
        logger.info("%s: %s", stage, shown)
        try:
            run_logged([sys.executable, *ran[1:]], shown, work / f"{stage}.log", REPO, env, stage, timing)
        finally:
            atomic_write_json(timing_path, timing)
    search = json.loads((output_dir(commands[0]) / "search_summary.json").read_text(encoding="utf-8"))
    trained = json.loads((output_dir(commands[1]) / "train_summary.json").read_text(encoding="utf-8"))
    test = json.loads(scores_file(commands[2]).read_text(encoding="utf-8"))
    results = Path(args.results_dir)
    searches = {f.stem: json.loads(f.read_text(encoding="utf-8")).get("genotype")  # the base recipe's, no variant
                for f in sorted((results / pair).glob("search-s*.json")) if re.fullmatch(r"search-s\d+", f.stem)}
    record = {
        "pair": pair, "readme_commands": [shlex.join(c) for c in commands], "genotype": search["genotype"],
        "same_genotype_as": [name for name, g in searches.items() if g == search["genotype"]],
        "parameters": trained["parameters"], "updates": trained["steps"],
        "val_averaged": {k: (trained.get("averaged") or {}).get(k) for k in ("steps", "val_loss", "bleu")},
        "test": {k: test.get(k) for k in ("split", "bleu", "bleu_lowercase", "chrf")} | {
            "sentences": len(test.get("hypotheses", []))},
        "protocol_row": protocol_row(results / pair / "summary.json", test["bleu"]),
        **timing_fields(timing),
    }
    (results / "readme").mkdir(parents=True, exist_ok=True)
    atomic_write_json(results / "readme" / f"{pair}.json", record)
    print(json.dumps({k: record[k] for k in ("same_genotype_as", "cpu_seconds")} | {
        "test_bleu": test["bleu"], "within_seed_spread": record["protocol_row"]["within_seed_spread"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
