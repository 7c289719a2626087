"""A saved folder is a complete model for transformers: Auto* classes registered, the folder's own code (auto_map)
loaded in a fresh process without hf_revdarts, on this transformers major and, where its environment exists, on
the other one, and a reload in this process with its tied weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

import hf_revdarts
from hf_revdarts import RevDartsConfig, RevDartsForConditionalGeneration, RevDartsModel
from hf_revdarts.model import REMOTE_CODE_FILES
from testing import REPO
from testing.builders import every_op_config

MAJOR = int(transformers.__version__.split(".")[0])


def test_auto_classes_registered():
    cfg = AutoConfig.for_model("revdarts", vocab_size=50, d_model=48, num_heads=2, encoder_layers=1, decoder_layers=1)
    assert isinstance(cfg, RevDartsConfig)
    assert type(AutoModelForSeq2SeqLM.from_config(cfg)) is RevDartsForConditionalGeneration
    assert type(AutoModel.from_config(cfg)) is RevDartsModel
    assert RevDartsForConditionalGeneration._auto_class == "AutoModelForSeq2SeqLM"
    assert RevDartsModel._auto_class == "AutoModel"
    assert RevDartsConfig._auto_class == "AutoConfig"
    assert hf_revdarts.TranslationPipeline.__name__ == "TranslationPipeline"


def test_saved_folder_is_self_contained(saved):
    folder, _, _ = saved
    names = {p.name for p in folder.iterdir()}
    for f in REMOTE_CODE_FILES:
        assert f in names, f"{f} missing from the saved folder: {sorted(names)}"
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["auto_map"] == {
        "AutoConfig": "configuration_revdarts.RevDartsConfig",
        "AutoModel": "modeling_revdarts.RevDartsModel",
        "AutoModelForSeq2SeqLM": "modeling_revdarts.RevDartsForConditionalGeneration",
    }
    assert cfg["custom_pipelines"]["translation"] == {
        "impl": "pipeline_translation.TranslationPipeline",
        "pt": ["AutoModelForSeq2SeqLM"],
        "type": "text",
    }
    gen = json.loads((folder / "generation_config.json").read_text())
    assert (gen["decoder_start_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (1, 2, 0)
    tok_cfg = json.loads((folder / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tok_cfg["model_input_names"] == ["input_ids", "attention_mask"]


_FRESH = textwrap.dedent(
    """
    import json, sys
    repo = sys.argv[2]
    # neither the checkout nor the working folder on sys.path: the folder's own code must be all that loads
    sys.path[:] = [p for p in sys.path if p not in ("", ".") and p.rstrip("/") != repo.rstrip("/")]
    sys.modules["hf_revdarts"] = None  # hides an editable install too
    try:
        import hf_revdarts  # noqa: F401
        importable = True
    except ImportError:
        importable = False
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
    folder = sys.argv[1]
    model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    inputs = torch.load(folder + "/_inputs.pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    torch.save(logits, folder + "/_fresh_logits.pt")
    gen = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                         max_new_tokens=8, num_beams=4)
    import os, tempfile
    resaved = tempfile.mkdtemp()
    model.save_pretrained(resaved)  # remote code saves a complete folder too
    files = sorted(os.listdir(resaved))
    auto_map = json.load(open(resaved + "/config.json"))["auto_map"]
    print("RESULT " + json.dumps({"importable": importable, "module": type(model).__module__,
                      "resaved": files, "auto_map": auto_map,
                      "tokens": gen.tolist(), "tok": type(tok).__name__, "vocab": len(tok)}))
    """
)


def _run_fresh(python: str, folder: Path, tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    env["HF_HUB_OFFLINE"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    script = tmp_path / "fresh_load.py"
    script.write_text(_FRESH)
    run = subprocess.run(
        [python, str(script), str(folder), str(REPO)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, run.stdout[-2000:] + run.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT ") :])


def test_fresh_process_loads_without_hf_revdarts(saved, tmp_path):
    folder, logits, ref = saved
    got = _run_fresh(sys.executable, folder, tmp_path)
    assert got["importable"] is False
    assert got["module"].startswith("transformers_modules."), got["module"]
    assert got["tok"] == "PreTrainedTokenizerFast" or MAJOR >= 5
    for f in REMOTE_CODE_FILES:
        assert f in got["resaved"], got["resaved"]
    assert set(got["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForSeq2SeqLM"}
    torch.testing.assert_close(torch.load(folder / "_fresh_logits.pt"), logits, rtol=0, atol=1e-6)
    assert got["tokens"] == ref.tolist()


def test_reload_in_process_ties_and_logits(saved, batch):
    folder, logits, _ = saved
    for trust in (None, True):
        loaded = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=trust).eval()
        dec = torch.full((3, 4), 5)
        dec[:, 0] = 1
        with torch.no_grad():
            torch.testing.assert_close(loaded(**batch, decoder_input_ids=dec).logits, logits, rtol=0, atol=1e-6)
    # a tied model round-trips with its head still tied to the shared embedding
    tied = RevDartsForConditionalGeneration(every_op_config(60, tie_word_embeddings=True, decoder_layers=1,
                                                            decoder_genotype=[["conv_3", "self_attn"]]))
    tied.save_pretrained(folder.parent / "tied")
    back = AutoModelForSeq2SeqLM.from_pretrained(folder.parent / "tied")
    assert back.lm_head.weight.data_ptr() == back.model.shared.weight.data_ptr()
    torch.testing.assert_close(back.lm_head.weight, tied.model.shared.weight)


def _other_python() -> str | None:
    """The interpreter of the other transformers major, when its virtual environment exists here."""
    explicit = os.environ.get("HF_REVDARTS_OTHER_PYTHON")
    if explicit:
        return explicit
    candidates = [REPO / ".venv-457" / "bin" / "python"] if MAJOR >= 5 else [REPO / ".venv" / "bin" / "python"]
    for c in candidates:
        if c.exists() and Path(c).absolute() != Path(sys.executable).absolute():
            return str(c)
    return None


def test_folder_loads_under_other_transformers_major(saved, tmp_path):
    """A folder written by this transformers major loads (model, remote code, tokenizer) under the other."""
    python = _other_python()
    if python is None:
        pytest.skip("no virtual environment with the other transformers major (.venv-457 / .venv)")
    folder, logits, ref = saved
    got = _run_fresh(python, folder, tmp_path)
    assert got["importable"] is False
    torch.testing.assert_close(torch.load(folder / "_fresh_logits.pt"), logits, rtol=0, atol=1e-5)
    assert got["tokens"] == ref.tolist()
