#!/usr/bin/env python
"""Write a complete, self-contained model folder with its model card, and push it to the Hub if asked.

    python training/publish.py --model runs/train/best --eval_results runs/train/eval_test.json \
        --search_dir runs/search --output_dir published/revdarts-en-de [--overwrite] \
        [--push_to_hub --hub_model_id user/revdarts-en-de]

The folder holds: model.safetensors, config.json (genotype, ``auto_map``, ``custom_pipelines``), the
modeling code for ``trust_remote_code`` (loadable where hf_revdarts is not installed), the translation
pipeline, the tokenizer, generation_config.json, genotype.png and README.md, a model card built with
``huggingface_hub.ModelCard`` (languages, license, datasets, metrics, ``pipeline_tag: translation``,
``model-index`` with the measured BLEU and its sacreBLEU signature). It is built in a temporary folder and
renamed into place: an interrupted publish leaves the previous folder intact.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, atomic_folder  # noqa: E402
from evaluate import load_model_folder  # noqa: E402

logger = logging.getLogger("revdarts.publish")
TEMPLATE = REPO / "model_cards" / "template.md"
LANGUAGE_NAMES = {"en": "English", "de": "German", "fr": "French", "cs": "Czech"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="trained model folder (e.g. runs/train/best)")
    p.add_argument("--eval_results", required=True, help="JSON written by training/evaluate.py")
    p.add_argument("--output_dir", required=True, help="the folder to publish")
    p.add_argument("--search_dir", default=None, help="search output (genotype.png, search_summary.json)")
    p.add_argument("--train_summary", default=None, help="train_summary.json (default: next to --model)")
    p.add_argument("--model_name", default=None, help="title of the card (default: the folder name)")
    p.add_argument("--license", default="apache-2.0")
    p.add_argument("--dataset_id", default=None, help="Hub id of the training data for the card metadata")
    p.add_argument("--dataset_description", default=None)
    p.add_argument("--example", default=None, help="source sentence shown in the card (default: first test one)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --output_dir")
    p.add_argument("--push_to_hub", action="store_true")
    p.add_argument("--hub_model_id", default=None)
    p.add_argument("--private", action="store_true")
    args = p.parse_args(argv)
    if args.push_to_hub and not args.hub_model_id:
        p.error("--push_to_hub needs --hub_model_id (e.g. your-name/revdarts-en-de)")
    return args


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path} is not valid JSON: {e}") from e


def _genotype_rows(genotype: list[list[str]]) -> str:
    # Consecutive identical layers are shown once with a count, as the stacked block they are.
    rows: list[tuple[list[str], int]] = []
    for layer in genotype:
        if rows and rows[-1][0] == layer:
            rows[-1] = (layer, rows[-1][1] + 1)
        else:
            rows.append((layer, 1))
    return "; ".join(f"{'/'.join(layer)}" + (f" ×{n}" if n > 1 else "") for layer, n in rows)


def build_card(model: Any, results: dict[str, Any], args: argparse.Namespace, extra: dict[str, Any]) -> Any:
    """The model card (``huggingface_hub.ModelCard``) from the template in model_cards/."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    cfg = model.config
    src, tgt = results["src_lang"], results["tgt_lang"]
    dataset_name = args.dataset_id or Path(results["dataset"]).name
    name = args.model_name or Path(args.output_dir).name
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
        dataset_description=args.dataset_description or f"{dataset_name} ({src}→{tgt})",
        search_cost=extra["search_cost"],
        train_cost=extra["train_cost"],
        limitations=extra["limitations"],
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    out = Path(args.output_dir)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it")
    results = _read_json(Path(args.eval_results), "--eval_results")
    for key in ("bleu", "chrf", "bleu_signature", "chrf_signature", "split", "src_lang", "tgt_lang", "hypotheses"):
        if key not in results:
            raise ValueError(f"--eval_results {args.eval_results} lacks {key!r}; write it with training/evaluate.py")
    model, tokenizer = load_model_folder(args.model)
    train_summary_path = Path(args.train_summary) if args.train_summary else Path(args.model).parent / "train_summary.json"
    train = _read_json(train_summary_path, "--train_summary") if train_summary_path.is_file() else {}
    search_dir = Path(args.search_dir) if args.search_dir else None
    search = _read_json(search_dir / "search_summary.json", "search summary") if search_dir and (search_dir / "search_summary.json").is_file() else {}

    from common import translate

    example = args.example
    if example is None:
        from hf_revdarts.data import load_parallel_text

        example = load_parallel_text(results["dataset"], results["src_lang"], results["tgt_lang"], results["split"],
                                     results.get("dataset_config"), 1)[0][0]
    example_translation = translate(model, tokenizer, [example], num_beams=4)[0]
    extra = {
        "example_source": example,
        "example_translation": example_translation,
        "search_cost": (
            f"{search['steps']} steps, {search['seconds'] / 60:.1f} min on {search['processes']} process(es); "
            f"validation loss {search['val_loss_first']:.3f} → {search['val_loss_last']:.3f}"
            if search else "not recorded (genotype given directly)"
        ),
        "train_cost": (
            f"{train['steps']} steps, {train['train_seconds'] / 60:.1f} min on {train.get('processes', 1)} process(es)"
            if train else "not recorded"
        ),
        "limitations": (
            "Trained on a small dataset at a small size to demonstrate the pipeline; expect translations only "
            "in the domain and vocabulary of that data."
        ),
    }
    card = build_card(model, results, args, extra)

    from hf_revdarts.tokenization import save_tokenizer

    with atomic_folder(out, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
        picture = search_dir / "genotype.png" if search_dir else None
        if picture is not None and picture.is_file():
            shutil.copyfile(picture, tmp / "genotype.png")
        else:
            from search import plot_genotype

            plot_genotype(model.config.get_genotype(), tmp / "genotype.png")
        card.save(str(tmp / "README.md"))
        (tmp / "eval_results.json").write_text(json.dumps({k: v for k, v in results.items() if k != "hypotheses"}, indent=1))
    logger.info(f"published {out}")
    if args.push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(args.hub_model_id, private=args.private, exist_ok=True)
        api.upload_folder(folder_path=str(out), repo_id=args.hub_model_id, commit_message="Upload RevDarts model")
        logger.info(f"pushed to https://huggingface.co/{args.hub_model_id}")
    print(json.dumps({"published": str(out), "bleu": results["bleu"], "example": [example, example_translation]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
