"""The run record: what the protocol keeps of one search or training run, one ``<run>.json`` per run.

Every table, comparison and model card of the protocol is built from these files alone (the runs' checkpoints
stay on the machine that trained them), so the record is a documented, versioned type: ``RunRecord.load``
checks a file's fields and their types and names the file in every error; ``RunRecord.save`` writes it back
with its fields in one fixed order. A record re-saves to the very text it was read from.

A pair's results folder holds its table's runs (``<run>.json``), the copies trained again on another machine
(``replicas/<run>-on-<cpu|gpu>.json``) and the runs trained longer for the zoo (``zoo/zoo-<run>.json``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..model.genotype import Genotype
from ..utils.atomic import atomic_write_json

RECORD_FORMAT = 1  # a record without a ``format`` key is format 1
TRAINING_KINDS = ("searched", "standard", "random")
KINDS = ("search", *TRAINING_KINDS, "replica")

# The JSON type each field holds (a genotype: its JSON object, read into a ``Genotype``).
_NUMBER = (int, float)
_TYPES: dict[str, Any] = {
    "format": int, "run": str, "kind": str, "pair": str, "seed": int, "train_seed": int, "search": str,
    "search_genotype": Genotype, "search_variant": str, "variant_flags": dict, "random_seed": int,
    "drawn_genotype": Genotype, "replica_of": str, "replica_of_kind": str, "replica_of_device": str,
    "continues": str, "rebuilt_from": str, "protocol_summary": str, "genotype": Genotype, "search_steps": int, "stopped_early": bool,
    "search_summary": dict, "arch_parameters": dict, "parameters": int, "updates": int, "train_seconds": _NUMBER, "val_best": dict,
    "val_history": list, "val_averaged": dict, "test": dict, "dataset": str, "work_dir": str, "device": str,
    "wall_seconds": _NUMBER, "cpu_seconds": _NUMBER, "stages": dict, "timing_note": str, "commands": list,
    "flags_not_supported": list, "note": str,
}


@dataclass
class RunRecord:
    """One run of the protocol. Every field is optional in the type, since which ones a record holds depends on
    its ``kind``; ``require`` states what a reader needs and names the file when a field is missing.

    Identity: ``run`` (its name, e.g. ``searched-long-s0-t1``), ``kind`` (``search``; a training run:
    ``searched``, ``standard``, ``random``; ``replica``: a training run trained again), ``pair`` (``en-de``).

    Search runs: ``seed``, ``search_variant`` and its ``variant_flags`` (the flags it changed), the derived
    ``genotype``, ``search_steps``, ``stopped_early``, training/search.py's ``search_summary`` (with the genotype
    each selection derived) and ``arch_parameters``, the final α logits per node (``{"encoder.p0.s0": [...]}``),
    so that a search is judged and derived again from its record alone.

    Training runs: ``train_seed``; a searched run's ``search`` (the search run it trains), ``search_genotype``
    (that search's block) and ``search_variant``; a random run's ``random_seed`` and ``drawn_genotype``; the
    trained (stacked) ``genotype``, ``parameters``, ``updates``, ``train_seconds`` (train.py's own clock),
    the validation scores ``val_best``, ``val_history`` and ``val_averaged`` (``steps``, ``val_loss``,
    ``bleu`` of the averaged model) and ``test``: the averaged model's test scores (``split``, ``bleu``,
    ``bleu_lowercase``, ``chrf`` with their signatures, ``num_beams``, ``length_penalty``, ``sentences``
    and ``hypotheses``, the file of its translations).

    A replica names the run it repeats (``replica_of``, ``replica_of_kind``, ``replica_of_device``); a zoo run
    the run it continues (``continues``); both name their protocol's summary (``protocol_summary``).

    Every run: ``dataset`` and ``work_dir`` (paths relative to the repository), the ``device`` it ran on,
    ``wall_seconds``/``cpu_seconds`` of its finished stages (``stages``, ``timing_note``), the exact
    ``commands`` it ran (one per sitting), ``note``; ``flags_not_supported`` lists recipe flags a script did
    not accept and that its commands therefore left out.
    """

    format: int | None = RECORD_FORMAT
    run: str | None = None
    kind: str | None = None
    pair: str | None = None
    seed: int | None = None
    train_seed: int | None = None
    search: str | None = None
    search_genotype: Genotype | None = None
    search_variant: str | None = None
    variant_flags: dict[str, Any] | None = None
    random_seed: int | None = None
    drawn_genotype: Genotype | None = None
    replica_of: str | None = None
    replica_of_kind: str | None = None
    replica_of_device: str | None = None
    continues: str | None = None
    rebuilt_from: str | None = None
    protocol_summary: str | None = None
    genotype: Genotype | None = None
    search_steps: int | None = None
    stopped_early: bool | None = None
    search_summary: dict[str, Any] | None = None
    arch_parameters: dict[str, list[float]] | None = None
    parameters: int | None = None
    updates: int | None = None
    train_seconds: float | None = None
    val_best: dict[str, Any] | None = None
    val_history: list[dict[str, Any]] | None = None
    val_averaged: dict[str, Any] | None = None
    test: dict[str, Any] | None = None
    dataset: str | None = None
    work_dir: str | None = None
    device: str | None = None
    wall_seconds: float | None = None
    cpu_seconds: float | None = None
    stages: dict[str, Any] | None = None
    timing_note: str | None = None
    commands: list[str] | None = None
    flags_not_supported: list[str] | None = None
    note: str | None = None
    # Not written: the file it was read from (for messages), and the keys that file held, so that a field the
    # file held as null is written back as null while a field it lacked stays out.
    source: Path | None = field(default=None, compare=False, repr=False)
    held: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    # ------------------------------------------------------------------ reading and writing ------------------
    @classmethod
    def from_dict(cls, data: Any, source: str | os.PathLike | None = None) -> RunRecord:
        """The record of a ``<run>.json`` object; a ``ValueError`` names ``source`` and the field at fault."""
        where = str(source) if source is not None else "run record"
        if not isinstance(data, dict):
            raise ValueError(f"{where} must hold a JSON object, got {type(data).__name__}")
        unknown = [k for k in data if k not in _TYPES]
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))} in a run record "
                             f"(format {RECORD_FORMAT} has {', '.join(_TYPES)})")
        version = data.get("format", 1)
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= RECORD_FORMAT:
            raise ValueError(f"{where}: run record format {version!r}; this hf_revdarts reads formats 1 to "
                             f"{RECORD_FORMAT} (a newer hf_revdarts wrote it?)")
        values: dict[str, Any] = {"format": data.get("format")}
        for key, value in data.items():
            if key != "format":
                values[key] = _checked(key, value, where)
        if values.get("kind") is not None and values["kind"] not in KINDS:
            raise ValueError(f"{where}: kind {values['kind']!r} is not one of {', '.join(KINDS)}")
        return cls(**values, source=Path(source) if source is not None else None, held=frozenset(data))

    @classmethod
    def from_json(cls, text: str, source: str | os.PathLike | None = None) -> RunRecord:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source or 'run record'} is not valid JSON: {e}") from e
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: str | os.PathLike) -> RunRecord:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"run record {path} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 text: {e}") from e
        return cls.from_json(text, path)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: every field that holds a value, and the nulls of the file it was read from."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _TYPES and (value is not None or f.name in self.held):
                out[f.name] = value.to_dict() if isinstance(value, Genotype) else value
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n"

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (readers see the old record or the new one, never half)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, self.to_dict())

    # ------------------------------------------------------------------ reading a record ---------------------
    @property
    def where(self) -> str:
        return str(self.source) if self.source is not None else f"run record {self.run or '(unnamed)'}"

    def require(self, *names: str, what: str = "a finished run of the protocol") -> RunRecord:
        """This record, checked to hold ``names`` (``test.bleu``: a key of a field's object)."""
        missing = []
        for name in names:
            top, _, sub = name.partition(".")
            value = getattr(self, top)
            if value is None or (sub and value.get(sub) is None):
                missing.append(name)
        if missing:
            raise ValueError(f"{self.where} lacks {', '.join(missing)}: not {what}")
        return self

    @property
    def row(self) -> str:
        """Its row of the protocol's table: the kind, with the search variant of a searched run or a search."""
        variant = self.search_variant
        return f"{self.kind}-{variant}" if variant and self.kind in ("searched", "search") else str(self.kind)

    @property
    def bleu(self) -> float:
        return self.require("test.bleu").test["bleu"]

    @property
    def bleu_lowercase(self) -> float:
        return self.require("test.bleu_lowercase").test["bleu_lowercase"]

    @property
    def test_split(self) -> str | None:
        return (self.test or {}).get("split")

    @property
    def hypotheses(self) -> str:
        """Its test translations' file, relative to the repository."""
        return self.require("test.hypotheses").test["hypotheses"]

    @property
    def val_loss(self) -> float | None:
        """The validation loss of its final (averaged) model: what picks the zoo's run, never the test score."""
        return (self.val_averaged or {}).get("val_loss")

    @property
    def best_val_loss(self) -> float | None:
        return (self.val_best or {}).get("val_loss")

    def with_search_of(self, original: RunRecord) -> RunRecord:
        """A replica with the search fields of the run it repeats where it lacks them."""
        return replace(self, **{k: getattr(original, k) for k in ("search", "search_genotype", "search_variant")
                                if getattr(self, k) is None})


def _checked(key: str, value: Any, where: str) -> Any:
    kind = _TYPES[key]
    if value is None:
        return None
    if kind is Genotype:
        try:
            return Genotype.from_dict(value)
        except ValueError as e:
            raise ValueError(f"{where}: {key}: {e}") from e
    wrong = isinstance(value, bool) and kind is not bool or not isinstance(value, kind)
    if wrong:
        names = " or ".join(t.__name__ for t in (kind if isinstance(kind, tuple) else (kind,)))
        raise ValueError(f"{where}: {key} must be {names}, got {type(value).__name__} {value!r:.80}")
    if key == "commands" and not all(isinstance(c, str) for c in value):
        raise ValueError(f"{where}: commands must be a list of strings")
    return value


# ---------------------------------------------------------------------- a pair's records --------------------
def load_runs(results: str | os.PathLike) -> tuple[list[RunRecord], list[RunRecord]]:
    """(training runs, searches) of a pair's results folder, sorted by name (its subfolders and summaries not)."""
    runs, searches = [], []
    for path in sorted(Path(results).glob("*.json")):
        if path.name.startswith("summary"):
            continue
        record = RunRecord.load(path)
        if record.kind == "search":
            searches.append(record)
        elif record.kind in TRAINING_KINDS:
            runs.append(record)
    return runs, searches


HALVING_KINDS = ("random_search", "supernet_halving")


def load_random_searches(results: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a pair's successive-halving runs (``random_search/*.json``), by name: random searches at the
    same compute, and halvings of a search's best-scored genotypes (``--candidates_from``)."""
    out = []
    for path in sorted((Path(results) / "random_search").glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        missing = [k for k in ("run", "survivor", "parameters", "candidates", "schedule", "updates_total",
                               "cpu_seconds", "test") if k not in record]
        if record.get("kind") == "supernet_halving" and not record.get("candidates_from"):
            missing.append("candidates_from")
        if record.get("kind") not in HALVING_KINDS or missing or "hypotheses" not in record.get("test", {}):
            raise ValueError(f"{path}: not a finished successive-halving record (kind {record.get('kind')!r}, "
                             f"missing {missing or ['test.hypotheses']})")
        out.append(record)
    return out


def replica_pairs(results: str | os.PathLike, runs: list[RunRecord]) -> list[tuple[RunRecord, RunRecord]]:
    """(copy, the run of ``runs`` it repeats) for each ``--replicate`` run in ``results/replicas``."""
    by_name = {r.run: r for r in runs}
    out = []
    for path in sorted((Path(results) / "replicas").glob("*.json")):
        again = RunRecord.load(path)
        if again.replica_of in by_name:
            out.append((again, by_name[again.replica_of]))
    return out


def find_run(results: str | os.PathLike, name: str, what: str) -> RunRecord:
    """A run of a pair by name: a run of its table (``<name>.json``) or a replica (``replicas/<name>.json``)."""
    for path in (Path(results) / f"{name}.json", Path(results) / "replicas" / f"{name}.json"):
        if path.is_file():
            return RunRecord.load(path)
    raise FileNotFoundError(f"{what} {name}: no {name}.json in {results} or in its replicas/")


def rebuilt_run(results: str | os.PathLike, name: str) -> RunRecord | None:
    """Run ``name`` of a pair trained again from its record on this machine (``--rebuild``: ``rebuilt/<name>.json``),
    whose model is the one here; None when it was not."""
    path = Path(results) / "rebuilt" / f"{name}.json"
    return RunRecord.load(path) if path.is_file() else None


def repo_path(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """A path as records hold it: relative to the repository ``root``, never absolute."""
    return os.path.relpath(Path(path).resolve(), Path(root).resolve())
