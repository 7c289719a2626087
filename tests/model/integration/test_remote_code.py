"""transformers integration: Auto* registration, generate() with the incremental cache, remote code
(auto_map) in a fresh process, the translation pipeline and the tokenizer.

Runs on transformers 5.x (the main suite) and on 4.57.x (``.ci/integration_457.sh``): keep it version-neutral.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM, AutoTokenizer

import hf_revdarts
from hf_revdarts import RevDartsConfig, RevDartsForConditionalGeneration, RevDartsModel
from hf_revdarts.model import REMOTE_CODE_FILES
from hf_revdarts.model.genotype import DECODER_OPS
from hf_revdarts.model.modeling_revdarts import CACHE_FIELD, RevDartsCache
from hf_revdarts.training.tokenization import encode_pairs, save_tokenizer, train_tokenizer

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HF_REVDARTS_DATA", REPO.parent / "shared" / "data" / "multi30k"))
MAJOR = int(transformers.__version__.split(".")[0])
FALLBACK_EN = [
    "A man is riding a bike.",
    "Two dogs play in the snow.",
    "A girl is reading a book in the park.",
    "People are walking down the street.",
]
FALLBACK_DE = [
    "Ein Mann fährt Fahrrad.",
    "Zwei Hunde spielen im Schnee.",
    "Ein Mädchen liest ein Buch im Park.",
    "Leute gehen die Straße entlang.",
]


def _lines(lang: str, n: int = 200) -> list[str]:
    path = DATA / f"train.{lang}.gz"
    if not path.exists():  # keep the tests self-contained without the shared data
        return (FALLBACK_EN if lang == "en" else FALLBACK_DE) * 10
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            out.append(line.strip())
            if len(out) == n:
                break
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP waits make each
    # small op take milliseconds: run this module single-threaded, then restore.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], list[str]]:
    return _lines("en"), _lines("de")


@pytest.fixture(scope="module")
def tokenizer(corpus):
    en, de = corpus
    return train_tokenizer(en + de, vocab_size=300, min_frequency=1, model_max_length=64)


def every_op_config(vocab_size: int, **kw) -> RevDartsConfig:
    """2 encoder layers; 7 decoder layers whose 14 searchable splits use every decoder op once."""
    dec_ops = list(DECODER_OPS)
    dec = [dec_ops[2 * i : 2 * i + 2] for i in range(len(dec_ops) // 2)]
    enc = [["self_attn", "dynconv_7"], ["conv_5", "ffn"]]
    assert sorted(op for layer in dec for op in layer) == sorted(DECODER_OPS)
    args = dict(
        vocab_size=vocab_size,
        d_model=48,
        num_heads=2,
        encoder_layers=len(enc),
        decoder_layers=len(dec),
        encoder_genotype=enc,
        decoder_genotype=dec,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        dropout=0.1,
    )
    args.update(kw)
    return RevDartsConfig(**args)


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights large enough that greedy/beam decoding does not repeat one token (untied head)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 if "lm_head" in name else 0.3))
    return model.eval()


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return perturbed(RevDartsForConditionalGeneration(every_op_config(len(tokenizer))))


@pytest.fixture(scope="module")
def batch(tokenizer, corpus):
    en, _ = corpus
    # Different lengths: right-padded source, so the encoder/cross-attention masks matter.
    texts = [en[0], en[2][:18], en[5][:40]]
    return tokenizer(texts, padding=True, return_tensors="pt")


def _gen(model, batch, **kw) -> torch.Tensor:
    torch.manual_seed(1234)
    out = model.generate(**batch, **kw)
    return out if isinstance(out, torch.Tensor) else out.sequences


# ---------------------------------------------------------------- registration


def test_auto_classes_registered():
    cfg = AutoConfig.for_model("revdarts", vocab_size=50, d_model=48, num_heads=2, encoder_layers=1, decoder_layers=1)
    assert isinstance(cfg, RevDartsConfig)
    assert type(AutoModelForSeq2SeqLM.from_config(cfg)) is RevDartsForConditionalGeneration
    assert type(AutoModel.from_config(cfg)) is RevDartsModel
    assert RevDartsForConditionalGeneration._auto_class == "AutoModelForSeq2SeqLM"
    assert RevDartsModel._auto_class == "AutoModel"
    assert RevDartsConfig._auto_class == "AutoConfig"
    assert hf_revdarts.TranslationPipeline.__name__ == "TranslationPipeline"


def test_generation_config_defaults(model, batch):
    gen = model.generation_config
    cfg = model.config
    assert (gen.decoder_start_token_id, gen.pad_token_id, gen.eos_token_id) == (1, 0, 2)
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id, cfg.decoder_start_token_id) == (0, 1, 2, 1)
    # v5 warns on every generate(max_new_tokens=...) when max_length is stored: there generate() supplies the
    # position limit itself (tests/test_robustness.py checks a plain call reaches it); 4.57 stores it.
    assert gen.max_length == (None if MAJOR >= 5 else cfg.max_position_embeddings)
    out = model.generate(**batch)  # a plain call: start token, eos, pad and max length from generation_config
    assert (out[:, 0] == 1).all()
    assert out.shape[1] <= cfg.max_position_embeddings
    for row in out.tolist():  # after eos, only padding
        if 2 in row:
            assert all(t == 0 for t in row[row.index(2) + 1 :])


# ---------------------------------------------------------------- generate with the cache


def _assert_varied(out: torch.Tensor) -> None:
    assert len(set(out[:, 1:].flatten().tolist())) > 4, f"degenerate generation, test proves little: {out}"


def test_cached_equals_uncached_greedy(model, batch):
    kw = dict(max_new_tokens=20, min_new_tokens=20, num_beams=1, do_sample=False)
    cached = _gen(model, batch, use_cache=True, **kw)
    uncached = _gen(model, batch, use_cache=False, **kw)
    _assert_varied(cached)
    assert cached.shape == (3, 21)
    assert torch.equal(cached, uncached)


def test_cached_equals_uncached_beam4(model, batch):
    kw = dict(max_new_tokens=16, num_beams=4, num_return_sequences=2, do_sample=False, early_stopping=True)
    cached = _gen(model, batch, use_cache=True, **kw)
    uncached = _gen(model, batch, use_cache=False, **kw)
    _assert_varied(cached)
    assert cached.shape[0] == 6
    assert torch.equal(cached, uncached)


def test_cached_equals_uncached_sampling(model, batch):
    kw = dict(max_new_tokens=12, do_sample=True, top_k=20, num_return_sequences=3)
    cached = _gen(model, batch, use_cache=True, **kw)
    uncached = _gen(model, batch, use_cache=False, **kw)
    assert cached.shape[0] == 9
    _assert_varied(cached)
    assert torch.equal(cached, uncached)


def test_one_position_per_new_token(model, batch):
    """After the first step the decoder gets exactly one new position per sequence, and the cross-attention
    keys/values are computed from the encoder output once per generate call."""
    lengths: list[int] = []
    cross_kv: list[int] = []

    def on_decoder(module, args, kwargs):
        embeds = args[0] if args else kwargs["inputs_embeds"]
        lengths.append(embeds.shape[1])

    cross = [
        split.op.op
        for layer in model.model.decoder.stack.layers
        for split in layer.functions
        if split.op.name == "cross_attn"
    ]
    hooks = [model.model.decoder.register_forward_pre_hook(on_decoder, with_kwargs=True)]
    hooks += [c.k_proj.register_forward_hook(lambda m, a, o: cross_kv.append(1)) for c in cross]
    try:
        for num_beams in (1, 4):
            lengths.clear()
            cross_kv.clear()
            out = model.generate(**batch, max_new_tokens=10, min_new_tokens=10, num_beams=num_beams, use_cache=True)
            steps = out.shape[1] - 1
            assert lengths == [1] * steps, lengths
            # one k_proj call per cross-attention split (the searched one and the fixed last split), not per step
            assert len(cross_kv) == len(cross) == model.config.decoder_layers + 1
        lengths.clear()
        out = model.generate(**batch, max_new_tokens=6, min_new_tokens=6, use_cache=False)
        assert lengths == list(range(1, out.shape[1])), lengths  # uncached: the whole prefix every step
    finally:
        for h in hooks:
            h.remove()


def test_cache_contents(model, batch):
    """Per layer and split: self-attention keys/values, each (dynamic) convolution's last w-1 inputs,
    the cross-attention keys/values of the encoder output."""
    dec_ids = torch.full((3, 1), model.config.decoder_start_token_id)
    out = model(**batch, decoder_input_ids=dec_ids, use_cache=True)
    cache = getattr(out, CACHE_FIELD)
    assert isinstance(cache, RevDartsCache) and cache.get_seq_length() == 1
    for _ in range(4):
        out = model(**batch, decoder_input_ids=dec_ids, use_cache=True, **{CACHE_FIELD: cache})
    assert cache.get_seq_length() == 5
    src_len = batch["input_ids"].shape[1]
    width = model.config.d_model // model.config.decoder_splits
    heads = model.config.num_heads
    seen = set()
    for names, state in zip(model.config.decoder_genotype, cache.layers):
        for k, name in enumerate(list(names) + ["cross_attn"]):
            sub = state[k]
            if name == "self_attn":
                assert sub["k"].shape == sub["v"].shape == (3, heads, 5, width // heads)
            elif name == "cross_attn":
                assert sub["k"].shape == (3, heads, src_len, width // heads)
            elif name.startswith(("conv_", "dynconv_")):
                w = int(name.split("_")[1])
                assert sub["prev"].shape == (3, w - 1, width)
            else:
                assert sub == {}
            seen.add(name)
    assert seen == set(DECODER_OPS)
    # reorder_cache follows beam indices; generate's within-sentence reordering keeps cross-attention as is
    last = model.config.decoder_splits - 1
    searched = {(i, k) for i, names in enumerate(model.config.decoder_genotype) for k, n in enumerate(names) if n == "cross_attn"}
    assert cache.static == {(i, last) for i in range(model.config.decoder_layers)} | searched
    before = cache.layers[0][0]["prev"].clone()
    cross = cache.layers[0][last]["k"]
    cache.reorder_cache(torch.tensor([2, 0, 1]), within_batch=True)
    assert torch.equal(cache.layers[0][0]["prev"], before[[2, 0, 1]])
    assert cache.layers[0][last]["k"] is cross
    cache.reorder_cache(torch.tensor([2, 0, 1]))
    assert torch.equal(cache.layers[0][last]["k"], cross[[2, 0, 1]])


def test_cached_logits_match_full_forward(model, batch):
    """Step-by-step cached logits equal one uncached forward over the whole decoder input."""
    torch.manual_seed(3)
    dec = torch.randint(4, model.config.vocab_size, (3, 7))
    dec[:, 0] = model.config.decoder_start_token_id
    full = model(**batch, decoder_input_ids=dec, use_cache=False).logits
    cache, steps = None, []
    for t in range(dec.shape[1]):
        kw = {CACHE_FIELD: cache} if cache is not None else {}
        out = model(**batch, decoder_input_ids=dec[:, t : t + 1], use_cache=True, **kw)
        cache = getattr(out, CACHE_FIELD)
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- save / load, remote code

_FRESH = textwrap.dedent(
    """
    import json, sys
    repo = sys.argv[2]
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


@pytest.fixture(scope="module")
def saved(tmp_path_factory, model, tokenizer, batch):
    folder = tmp_path_factory.mktemp("saved") / "revdarts-every-op"
    model.save_pretrained(folder)
    save_tokenizer(tokenizer, folder)
    dec = torch.full((3, 4), 5)
    dec[:, 0] = 1
    inputs = {**batch, "decoder_input_ids": dec}
    torch.save(dict(inputs), folder / "_inputs.pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    ref = model.generate(**batch, max_new_tokens=8, num_beams=4)
    return folder, logits, ref


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


# ---------------------------------------------------------------- pipeline


def test_translation_pipeline(saved, model, tokenizer, corpus):
    from transformers import pipeline

    folder, _, _ = saved
    en, _ = corpus
    translate = pipeline("translation", model=str(folder), trust_remote_code=True)
    assert type(translate).__name__ == "TranslationPipeline"
    one = translate(en[0], max_length=12, num_beams=2)
    assert isinstance(one, list) and len(one) == 1 and set(one[0]) == {"translation_text"}
    ids = model.generate(**tokenizer(en[0], return_tensors="pt"), max_length=12, num_beams=2)
    assert one[0]["translation_text"] == tokenizer.decode(ids[0], skip_special_tokens=True)
    assert one[0]["translation_text"].strip()

    texts = [en[1], en[3][:20], en[4]]
    many = translate(texts, batch_size=2, max_new_tokens=6)
    assert len(many) == 3 and all(set(r) == {"translation_text"} for r in many)
    singles = [translate(t, max_new_tokens=6)[0] for t in texts]
    assert many == singles  # batching (padding) does not change a translation

    several = translate(en[0], max_new_tokens=5, num_beams=3, num_return_sequences=2)
    assert len(several) == 2


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_special_tokens_and_targets(tokenizer, corpus, tmp_path):
    en, de = corpus
    assert [tokenizer.convert_tokens_to_ids(t) for t in ("<pad>", "<s>", "</s>", "<unk>")] == [0, 1, 2, 3]
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    enc = tokenizer(en[:2], text_target=de[:2])
    assert set(enc) == {"input_ids", "attention_mask", "labels"}
    for row in enc["input_ids"] + enc["labels"]:
        assert row[-1] == 2 and 2 not in row[:-1]
    assert tokenizer.decode(enc["labels"][0], skip_special_tokens=True) == de[0]
    assert tokenizer.decode(enc["input_ids"][1], skip_special_tokens=True) == en[1]
    pairs = encode_pairs(tokenizer, en[:3], de[:3], max_length=16)
    assert pairs["input_ids"].shape[1] <= 16
    assert (pairs["labels"] == -100).any() or (pairs["labels"] != 0).all()
    assert not (pairs["labels"] == 0).any()

    save_tokenizer(tokenizer, tmp_path)
    back = AutoTokenizer.from_pretrained(tmp_path)
    assert back.model_input_names == ["input_ids", "attention_mask"]
    assert back(en[0])["input_ids"] == tokenizer(en[0])["input_ids"]
    assert "token_type_ids" not in back(en[0])
    assert (back.pad_token_id, back.bos_token_id, back.eos_token_id, back.unk_token_id) == (0, 1, 2, 3)


@pytest.mark.skipif(MAJOR >= 5, reason="transformers 5 removed its built-in translation pipeline")
def test_builtin_translation_pipeline_on_v4(model, tokenizer, corpus):
    """On 4.57 the built-in TranslationPipeline works with the model too, and agrees with ours."""
    from transformers import TranslationPipeline as Builtin

    from hf_revdarts.model.pipeline_translation import TranslationPipeline

    en, _ = corpus
    builtin = Builtin(model=model, tokenizer=tokenizer)
    ours = TranslationPipeline(model=model, tokenizer=tokenizer)
    texts = [en[0], en[7]]
    assert builtin(texts, max_length=10, num_beams=2) == ours(texts, max_length=10, num_beams=2)
