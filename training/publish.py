#!/usr/bin/env python
"""Write a complete, self-contained model folder with its model card, and push it to the Hub if asked.

    python training/publish.py --model runs/train/best --eval_results runs/train/eval_test.json \
        --search_dir runs/search --output_dir published/revdarts-en-de [--overwrite] \
        [--push_to_hub --hub_model_id user/revdarts-en-de]

The folder holds: model.safetensors, config.json (genotype, ``auto_map``, ``custom_pipelines``), the
modeling code for ``trust_remote_code`` (loadable where hf_revdarts is not installed), the translation
pipeline, the tokenizer, generation_config.json, genotype.png, eval_results.json and README.md, a model
card built with ``huggingface_hub.ModelCard`` (languages, license, datasets, metrics,
``pipeline_tag: translation``, ``model-index`` with the measured BLEU and its sacreBLEU signature). It is
built in a temporary folder and renamed into place: an interrupted publish leaves the previous folder intact.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi

from hf_revdarts.evaluation.translation import load_model_folder, translate
from hf_revdarts.protocol.card import ProtocolRun, training_cost
from hf_revdarts.protocol.record import repo_path
from hf_revdarts.search.visualize import plot_genotype
from hf_revdarts.training.arguments import parse_args
from hf_revdarts.training.cli import run_script
from hf_revdarts.training.data import load_parallel_text
from hf_revdarts.training.model_health import check_model_health
from hf_revdarts.training.run_folder import check_replaceable
from hf_revdarts.training.tokenization import save_tokenizer
from hf_revdarts.training.training_utils import atomic_folder, atomic_write_json, remove_stale_temporaries
from hf_revdarts.utils.atomic import read_json_object
from hf_revdarts.utils.guards import assert_finite_state
from hf_revdarts.utils.integrity import check_fingerprint, fingerprint_model_folder

logger = logging.getLogger("revdarts.publish")
REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "model_cards" / "template.md"
LANGUAGE_NAMES = {"en": "English", "de": "German", "fr": "French", "cs": "Czech"}
EVAL_KEYS = ("bleu", "chrf", "bleu_signature", "chrf_signature", "split", "src_lang", "tgt_lang", "hypotheses")


@dataclass
class PublishArguments:
    model: str = field(metadata={"help": "trained model folder (e.g. runs/train/best)"})
    eval_results: str = field(metadata={"help": "JSON written by training/evaluate.py"})
    output_dir: str = field(metadata={"help": "the folder to publish"})
    search_dir: str | None = field(default=None, metadata={"help": "search output (genotype.png, search_summary.json)"})
    train_summary: str | None = field(default=None, metadata={"help": "train_summary.json (default: next to --model)"})
    model_name: str | None = field(default=None, metadata={"help": "title of the card (default: the folder name)"})
    license: str = field(default="apache-2.0", metadata={"help": "license in the card metadata"})
    dataset_id: str | None = field(default=None, metadata={"help": "Hub id of the training data for the card"})
    dataset_description: str | None = field(default=None, metadata={"help": "training data in words, for the card"})
    example: str | None = field(default=None, metadata={"help": "source sentence in the card (default: first test one)"})
    protocol_run: str | None = field(default=None, metadata={
        "help": "the <run>.json benchmarks/search_quality.py wrote for this model: the card then shows the protocol's "
                "comparison table (its summary.json: beside the run, or the one a zoo run names) and the run's exact commands"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing non-empty --output_dir"})
    push_to_hub: bool = field(default=False, metadata={"help": "upload the folder (needs --hub_model_id)"})
    hub_model_id: str | None = field(default=None, metadata={"help": "user/name of the Hub repository"})
    private: bool = field(default=False, metadata={"help": "create the Hub repository private"})

    def __post_init__(self) -> None:
        if self.private and not self.push_to_hub:
            raise ValueError("--private makes the Hub repository private, and only --push_to_hub creates one: add "
                             "--push_to_hub --hub_model_id user/name, or leave --private out")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id (e.g. your-name/revdarts-en-de)")
        if self.hub_model_id is not None:
            from huggingface_hub.utils import HFValidationError, validate_repo_id

            try:
                validate_repo_id(self.hub_model_id)
            except HFValidationError as e:
                raise ValueError(f"--hub_model_id {self.hub_model_id!r} is not a Hub repository id: {e}") from None
        if not (Path(self.model) / "config.json").is_file():
            what = "does not exist" if not Path(self.model).exists() else "is not a model folder (no config.json)"
            raise FileNotFoundError(f"--model {self.model} {what}")
        for flag, path in (("eval_results", self.eval_results), ("train_summary", self.train_summary),
                           ("protocol_run", self.protocol_run)):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"--{flag} {path} does not exist")
        if self.search_dir is not None and not Path(self.search_dir).is_dir():
            raise FileNotFoundError(f"--search_dir {self.search_dir} is not a folder")
        if Path(self.output_dir).resolve() in (Path(self.model).resolve(), *Path(self.model).resolve().parents):
            raise ValueError(f"--output_dir {self.output_dir} would replace the folder of --model {self.model}")
        if self.example is not None and not self.example.strip():
            raise ValueError("--example is empty: give a source sentence for the card, or leave it out to use the "
                             "first sentence of the evaluated split")


def _genotype_rows(genotype: list[list[str]]) -> str:
    # Consecutive identical layers are shown once with a count, as the stacked block they are.
    rows: list[tuple[list[str], int]] = []
    for layer in genotype:
        if rows and rows[-1][0] == layer:
            rows[-1] = (layer, rows[-1][1] + 1)
        else:
            rows.append((layer, 1))
    return "; ".join(f"{'/'.join(layer)}" + (f" ×{n}" if n > 1 else "") for layer, n in rows)


def _names(results: dict[str, Any], args: PublishArguments) -> tuple[str, str]:
    """(model name, dataset name) as the card shows them: names, never a local path."""
    return args.model_name or Path(args.output_dir).name, args.dataset_id or Path(results["dataset"]).name


def decoding_line(results: dict[str, Any]) -> str:
    """How the card's figures were decoded, and where that setting was chosen (``evaluate.py --decoding``)."""
    beams, penalty = results.get("num_beams"), results.get("length_penalty", 1.0)
    line = (f"beam search with {beams} beams, length penalty {penalty:g}" if beams and beams > 1 else "greedy search"
            ) + f", at most {results.get('max_new_tokens', 64)} new tokens"
    tuned = results.get("decoding")
    if tuned:
        grid = tuned.get("grid") or []
        recipe = next((g for g in grid if (g["num_beams"], g["length_penalty"]) == (4, 1.0)), None)
        line += (f"; chosen on the {tuned['split']} split among {len(grid)} settings (beams "
                 f"{'/'.join(str(b) for b in sorted({g['num_beams'] for g in grid}))}, length penalties "
                 f"{'/'.join(f'{p:g}' for p in sorted({g['length_penalty'] for g in grid}))}) by its BLEU")
        chosen = (tuned.get("chosen") or {}).get("bleu")
        if recipe is not None and chosen is not None:
            line += f": {chosen:.2f} there, against {recipe['bleu']:.2f} with 4 beams and length penalty 1"
    return line + ". The folder's `generation_config.json` holds this setting, so a plain `generate` decodes so."


def build_card(model: Any, results: dict[str, Any], args: PublishArguments, extra: dict[str, Any]) -> Any:
    """The model card (``huggingface_hub.ModelCard``) from the template in model_cards/."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    cfg = model.config
    src, tgt = results["src_lang"], results["tgt_lang"]
    name, dataset_name = _names(results, args)
    sig = results["bleu_signature"]
    eval_results = [
        EvalResult(
            task_type="translation", task_name=f"Translation {src}-{tgt}", dataset_type=dataset_name,
            dataset_name=dataset_name, dataset_split=results["split"], dataset_config=results.get("dataset_config"),
            metric_type="bleu", metric_name="sacreBLEU", metric_value=results["bleu"],
            metric_config=sig, metric_args={"signature": sig, "num_beams": results["num_beams"]},
        ),
        EvalResult(
            task_type="translation", task_name=f"Translation {src}-{tgt}", dataset_type=dataset_name,
            dataset_name=dataset_name, dataset_split=results["split"], dataset_config=results.get("dataset_config"),
            metric_type="chrf", metric_name="chrF", metric_value=results["chrf"],
            metric_config=results["chrf_signature"],
        ),
    ]
    card_data = ModelCardData(
        language=[src, tgt],
        license=args.license,
        library_name="transformers",
        pipeline_tag="translation",
        tags=["revdarts", "neural-architecture-search", "darts", "reversible", "translation"],
        datasets=[args.dataset_id] if args.dataset_id else None,
        metrics=["bleu", "chrf"],
        model_name=name,
        eval_results=eval_results,
    )
    n_params = sum(p.numel() for p in model.parameters())
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=name,
        repo_id=args.hub_model_id or str(args.output_dir),
        src_lang_name=LANGUAGE_NAMES.get(src, src),
        tgt_lang_name=LANGUAGE_NAMES.get(tgt, tgt),
        example_source=extra["example_source"].replace('"', '\\"'),
        example_translation=extra["example_translation"].replace("'", "\\'"),
        encoder_layers=cfg.encoder_layers,
        decoder_layers=cfg.decoder_layers,
        encoder_splits=cfg.encoder_splits,
        decoder_splits=cfg.decoder_splits,
        encoder_genotype=_genotype_rows(cfg.encoder_genotype),
        decoder_genotype=_genotype_rows(cfg.decoder_genotype) + " (+ cross_attn)",
        d_model=cfg.d_model,
        embedding_dim=cfg.embedding_dim or cfg.d_model,
        num_heads=cfg.num_heads,
        num_parameters=f"{n_params / 1e6:.2f}M",
        vocab_size=cfg.vocab_size,
        eval_dataset=dataset_name,
        eval_split=results["split"],
        bleu=f"{results['bleu']:.2f}",
        chrf=f"{results['chrf']:.2f}",
        bleu_signature=sig,
        decoding=decoding_line(results),
        dataset_description=args.dataset_description or f"{dataset_name} ({src}→{tgt})",
        search_cost=extra["search_cost"],
        train_cost=extra["train_cost"],
        limitations=extra["limitations"],
        comparison=extra.get("comparison", ""),
        commands=extra.get("commands", ""),
    )


def read_inputs(args: PublishArguments) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(evaluation results, train summary or {}, search summary or {}); checks before any work: the results
    must have been made with this very model folder (``check_fingerprint``)."""
    out = Path(args.output_dir)
    remove_stale_temporaries(out.parent, out.name)  # what a publish killed mid-write left (or the old folder)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it")
    if args.overwrite:
        check_replaceable(out, "publish", "--overwrite")  # only a folder publish.py wrote is replaced
    results = read_json_object(Path(args.eval_results), "--eval_results")
    for key in EVAL_KEYS:
        if key not in results:
            raise ValueError(f"--eval_results {args.eval_results} lacks {key!r}; write it with training/evaluate.py")
    check_fingerprint(args.model, results.get("fingerprint"), what=f"the results in --eval_results {args.eval_results}")
    train_path = Path(args.train_summary) if args.train_summary else Path(args.model).parent / "train_summary.json"
    train = read_json_object(train_path, "--train_summary") if train_path.is_file() else {}
    search_path = Path(args.search_dir) / "search_summary.json" if args.search_dir else None
    if search_path is not None and not search_path.is_file():
        raise FileNotFoundError(f"--search_dir {args.search_dir} has no search_summary.json (did the search finish?)")
    search = read_json_object(search_path, "search summary") if search_path else {}
    for path, summary, keys in ((train_path, train, ("steps", "train_seconds")),
                                (search_path, search, ("steps", "seconds", "processes", "val_loss_first", "val_loss_last"))):
        missing = [k for k in keys if summary and summary.get(k) is None]
        if missing:
            reason = f" (the run failed: {summary['error']})" if "error" in summary else ""
            raise ValueError(f"{path} has no {', '.join(missing)}{reason}")
    return results, train, search


def read_protocol(args: PublishArguments, results: dict[str, Any]) -> ProtocolRun | None:
    """``--protocol_run`` with its protocol's summary, checked to be about the model whose results are published:
    a card must not show another model's comparison."""
    if args.protocol_run is None:
        return None
    protocol = ProtocolRun.load(args.protocol_run, REPO)
    protocol.check_describes(f"{results['src_lang']}-{results['tgt_lang']}", results["split"], results["bleu"],
                             f"--eval_results {args.eval_results}")
    return protocol


def card_extras(model: Any, tokenizer: Any, results: dict[str, Any], args: PublishArguments,
                train: dict[str, Any], search: dict[str, Any], protocol: ProtocolRun | None = None) -> dict[str, Any]:
    """The card's example translation, its search/training cost lines and, for a protocol run, its comparison."""
    example = args.example
    if example is None:
        example = load_parallel_text(results["dataset"], results["src_lang"], results["tgt_lang"], results["split"],
                                     results.get("dataset_config"), 1)[0][0]
    return {
        "example_source": example,
        "example_translation": translate(model, tokenizer, [example], num_beams=4)[0],
        "search_cost": (
            f"{search['steps']} steps, {search['seconds'] / 60:.1f} min on {search['processes']} process(es); "
            f"validation loss {search['val_loss_first']:.3f} → {search['val_loss_last']:.3f}"
            if search else "not recorded (genotype given directly)"
        ),
        "train_cost": training_cost(train, protocol),
        "limitations": (
            "Trained on a small dataset at a small size to demonstrate the pipeline; expect translations only "
            "in the domain and vocabulary of that data."
        ),
        **dict(zip(("comparison", "commands"), protocol.comparison() if protocol else ("", ""))),
    }


def write_folder(model: Any, tokenizer: Any, card: Any, results: dict[str, Any], args: PublishArguments,
                 provenance: dict[str, Any] | None = None) -> None:
    """The published folder, atomically: weights, config and code, tokenizer, genotype.png, card, scores.
    ``provenance``: what eval_results.json records beside the scores so the folder can be checked against its
    card (the card's example) and its protocol run (the run's record and committed test translations)."""
    name, dataset_name = _names(results, args)
    # A plain generate() or pipeline("translation") of the folder decodes as the card's figures were measured.
    gen, beams = model.generation_config, results.get("num_beams")
    if beams:
        gen.num_beams, gen.max_new_tokens = beams, results.get("max_new_tokens", gen.max_new_tokens)
        if beams > 1:
            gen.length_penalty = results.get("length_penalty", 1.0)
    with atomic_folder(Path(args.output_dir), overwrite=True) as tmp:
        model.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
        picture = Path(args.search_dir) / "genotype.png" if args.search_dir else None
        if picture is not None and picture.is_file():
            shutil.copyfile(picture, tmp / "genotype.png")
        else:
            plot_genotype(model.config.get_genotype(), tmp / "genotype.png")
        card.save(str(tmp / "README.md"))
        # Names, not the local paths evaluate.py recorded: the folder is meant to be shared.
        scores = {k: v for k, v in results.items() if k != "hypotheses"}
        # The fingerprint of the weights and tokenizer as published, so the scores stay tied to this folder.
        atomic_write_json(tmp / "eval_results.json", {**scores, "model": name, "dataset": dataset_name,
                                                      **(provenance or {}),
                                                      "fingerprint": fingerprint_model_folder(tmp)})
    logger.info(f"published {args.output_dir}")


def push(args: PublishArguments, results: dict[str, Any]) -> None:
    """Upload the written folder; a failed upload leaves it in place and says how to retry."""
    api = HfApi()
    message = f"Upload RevDarts model (BLEU {results['bleu']:.2f} on {results['split']})"
    try:
        api.create_repo(args.hub_model_id, private=args.private, exist_ok=True)
        api.upload_folder(folder_path=str(args.output_dir), repo_id=args.hub_model_id, commit_message=message)
    except Exception as e:  # noqa: BLE001 - network, authentication, permissions: re-raised with what to do
        raise RuntimeError(
            f"{args.output_dir} was written, but pushing it to {args.hub_model_id} failed ({type(e).__name__}: {e}); "
            f"retry with `hf upload {args.hub_model_id} {args.output_dir}` once that is fixed"
        ) from e
    logger.info(f"pushed to https://huggingface.co/{args.hub_model_id}")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    (args,) = parse_args((PublishArguments,), argv, description=__doc__)
    results, train, search = read_inputs(args)
    protocol = read_protocol(args, results)
    if not search and protocol is not None and protocol.search is not None and protocol.search.search_summary:
        search = protocol.search.search_summary  # the search's record keeps what its folder's summary held
    model, tokenizer = load_model_folder(args.model)
    assert_finite_state(model, "published model")
    probe = [t for t in [args.example, *results["hypotheses"][:8]] if t and t.strip()] or ["."]
    check_model_health(model, tokenizer, probe, None, "published model")
    extra = card_extras(model, tokenizer, results, args, train, search, protocol)
    if not extra["example_translation"].strip():
        raise ValueError(
            f"the model translates the card's example {extra['example_source']!r} to an empty string: the card would "
            "show no translation. Give another --example (a model that translates everything to nothing has not "
            "learnt: check its BLEU)"
        )
    provenance: dict[str, Any] = {"example": {"source": extra["example_source"], "num_beams": 4,
                                              "translation": extra["example_translation"]}}
    if protocol is not None:  # paths inside the repository that ships the folder (the zoo: model_cards/)
        provenance.update(protocol_run=repo_path(protocol.run.source, REPO), protocol_hypotheses=protocol.run.test.get("hypotheses"))
    write_folder(model, tokenizer, build_card(model, results, args, extra), results, args, provenance)
    if args.push_to_hub:
        push(args, results)
    print(json.dumps({"published": str(args.output_dir), "bleu": results["bleu"],
                      "example": [extra["example_source"], extra["example_translation"]]}))
    return 0


if __name__ == "__main__":
    run_script(main)
