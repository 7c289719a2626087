"""What a model card says of a protocol run (``training/publish.py --protocol_run <run>.json``): the protocol's
table with the model's row marked, its paired bootstrap against the standard Transformer and the random
genotypes, where each kind was trained, the commands that made the model, and its training cost when it was
trained in two sittings (a zoo run continues a run that may have trained on another machine)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..utils.atomic import read_json_object
from .record import RunRecord, find_run, rebuilt_run


def _read_summary(path: Path) -> dict[str, Any]:
    data = read_json_object(path, "the protocol summary")
    if not isinstance(data.get("kinds"), dict):
        raise ValueError(f"the protocol summary {path} holds no table ('kinds'): not a summary.json of the protocol")
    return data


@dataclass(frozen=True)
class ProtocolRun:
    """A protocol run as a card shows it: its record, its protocol's summary (``summary.json``), the search it
    trained the genotype of, the run it continues (a zoo run) and the run it repeats (a replica)."""

    run: RunRecord
    summary: dict[str, Any]
    search: RunRecord | None = None
    continued: RunRecord | None = None
    original: RunRecord | None = None
    rebuilt: RunRecord | None = None

    @classmethod
    def load(cls, path: str | os.PathLike, root: str | os.PathLike) -> ProtocolRun:
        """The run of ``path`` with its summary: the one it names (relative to the repository ``root``: a zoo run
        or a replica), else the one beside it (a replica that names none: one folder up)."""
        path = Path(path)
        run = RunRecord.load(path).require("run", "kind", "pair", "test", "commands",
                                           what="a training run of benchmarks/search_quality.py")
        if run.protocol_summary:
            summary_path = Path(root) / run.protocol_summary
        else:
            summary_path = path.parent.parent / "summary.json" if run.replica_of else path.parent / "summary.json"
        results = summary_path.parent
        continued = find_run(results, run.continues, "the continued run") if run.continues else None
        if continued is not None:
            # Trained again here from its record (--rebuild) before it was continued: that sitting is the first part.
            continued = rebuilt_run(results, continued.run) or continued
        copied = run.replica_of or (continued.replica_of if continued else None)
        original = find_run(results, copied, "the replicated run") if copied else None
        search_name = run.search or (original.search if original else None)
        search_path = results / f"{search_name}.json" if search_name else None
        search = RunRecord.load(search_path) if search_path and search_path.is_file() else None
        rebuilt = RunRecord.load(Path(root) / run.rebuilt_from) if run.rebuilt_from else None
        return cls(run, _read_summary(summary_path), search, continued, original, rebuilt)

    def check_describes(self, pair: str, split: str, bleu: float, evaluation: str) -> None:
        """Refuse to show this run on the card of another model: the pair, test split and BLEU of the
        ``evaluation`` (its name in messages) must be this run's."""
        run = self.run
        if run.pair != pair or run.test_split != split:
            raise ValueError(f"{run.where} is a {run.pair} run tested on {run.test_split}, {evaluation} a {pair} "
                             f"evaluation on {split}")
        if abs(run.bleu - bleu) > 0.005:
            raise ValueError(f"{run.where} reports test BLEU {run.bleu}, {evaluation} {bleu}: they describe "
                             "different models")

    def comparison(self) -> tuple[str, str]:
        """(comparison, commands): the protocol's table with this model's row marked, its paired bootstrap
        against the standard Transformer and the random genotypes, where each kind was trained; the run's
        commands (its search's, the continued run's, its own)."""
        run, summary, original, continues = self.run, self.summary, self.original, self.run.continues
        # The row whose runs hold this one (a zoo run: the run it continues; a replica: the run it repeats).
        row_run = original.run if original else (continues or run.run)
        this = next((k for k, v in summary["kinds"].items() if row_run in v.get("bleu", {})), None)
        devices = summary.get("devices", {})
        search_variant = run.search_variant or (original.search_variant if original else None)
        variant = f" --search_variant {search_variant}" if search_variant else ""
        variant += f" --scale {summary['scale']}" if summary.get("scale") else ""
        which = (f"run `{continues}` of the hf_revdarts protocol trained longer, to {run.updates} updates from its "
                 f"last checkpoint with the same recipe (as `{run.run}`)" if continues
                 else f"run `{run.run}` of the hf_revdarts protocol")
        if self.rebuilt is not None:  # the same command again from the record, where the record's model is not
            which = (f"run `{run.run}` of the hf_revdarts protocol trained again from its record "
                     f"(`--rebuild`) on {run.device or 'an unrecorded device'}: {run.bleu:.2f} BLEU, the record "
                     f"{self.rebuilt.bleu:.2f} (trained on {self.rebuilt.device or 'an unrecorded device'})")
        elif original and not continues:
            which = (f"run `{original.run}` of the hf_revdarts protocol trained again with the same command on "
                     f"{run.device or 'an unrecorded device'} (as `{run.run}`: {run.bleu:.2f} BLEU; the table's run, "
                     f"trained on {original.device or 'an unrecorded device'}, scored {original.bleu:.2f})")
        lines = [
            f"This model is {which} (`python benchmarks/search_quality.py "
            f"--pair {run.pair}{variant}`), which trains every kind with the same size, recipe and number of updates "
            f"({summary['recipe_short']}) and translates {summary['test_split']} once per run (cased sacreBLEU). "
            "Searched: the genotype a search derived; standard: the `self_attn`/`ffn` Transformer; random: genotypes "
            "drawn uniformly from the same search space.",
            "",
            "| kind | runs | BLEU mean ± std | runs' BLEU | parameters | trained on |",
            "|---|---|---|---|---|---|",
        ]
        for kind in [k for k, v in summary["kinds"].items() if "bleu_mean" in v]:
            r = summary["kinds"][kind]
            on = sorted({devices.get(name, "unrecorded") for name in r["bleu"]})
            name = f"**{kind}** (this model's kind)" if kind == this else kind
            lines.append(f"| {name} | {r['runs']} | {r['bleu_mean']:.2f} ± {r['bleu_std']:.2f} | "
                         f"{', '.join(f'{b:.2f}' for b in r['bleu'].values())} | {r['parameters_mean'] / 1e6:.2f}M | "
                         f"{'; '.join(on)} |")
        lines.append("")
        sig = summary.get("significance", {}) if this == "searched" else summary.get("significance_variants", {}).get(this, {})
        if "pooled" in sig:
            p = sig["pooled"]
            lines += [f"Paired bootstrap against the standard Transformer with the same training seed (pooled over "
                      f"{p['pairs']} pair(s)): Δ = {p['delta']:+.2f} BLEU, p = {p['p_value']:.4f}."]
        if this in summary.get("minus_random_mean", {}):
            delta, se = summary["minus_random_mean"][this], summary.get("minus_random_mean_se", {}).get(this)
            lines.append(f"Its kind's mean minus the random genotypes' mean: {delta:+.2f} BLEU"
                         + (f" ({delta / se:+.1f} standard errors between runs)." if se else "."))
        if len(set(devices.values())) > 1:
            lines.append("The kinds were trained on different machines (last column): compare within one machine.")
        # ... which the protocol did wherever a run was trained again (--replicate): this run's rows of it.
        for standard, same in summary.get("significance_same_machine", {}).items():
            lines += [f"On one machine ({same['device']}), `{s['run']}` against the standard Transformer `{standard}` "
                      f"trained there: Δ = {s['delta']:+.2f} BLEU, p = {s['p_value']:.4f}."
                      for sig in same["rows"].values() for s in sig["per_seed"] if s["run"] in (run.run, continues)]
        commands = [*((self.search.commands or []) if self.search else []),
                    *((self.continued.commands or []) if self.continued else []), *run.commands]
        # A run spread over sittings recorded its command once per sitting, the later ones resuming: the card gives
        # the command of one uninterrupted run (a zoo run's explicit checkpoint to continue from is kept).
        fresh = [c.replace(" --resume_from_checkpoint latest", "").replace(" --overwrite_output_dir", "") for c in commands]
        return "\n".join(lines), "\n".join(dict.fromkeys(fresh))


def training_cost(train: dict[str, Any] | None, protocol: ProtocolRun | None = None) -> str:
    """The card's training line, from train.py's ``train_summary.json``. A zoo run continues a protocol run that
    may have trained on another machine: its summary's time is the sum of both sittings and its device the last
    one, so each part is named."""
    if not train:
        return "not recorded"
    total = f"{train['steps']} steps, {train['train_seconds'] / 60:.1f} min on {train.get('processes', 1)} process(es)"
    first, run = (protocol.continued, protocol.run) if protocol else (None, None)
    if first is None or first.train_seconds is None or run.train_seconds is None:
        return total
    more = run.updates - first.updates
    return (f"{total}: the first {first.updates} on {first.device or 'an unrecorded device'} "
            f"({first.train_seconds / 60:.1f} min), the {more} more on {run.device or 'an unrecorded device'} "
            f"({(run.train_seconds - first.train_seconds) / 60:.1f} min)")
