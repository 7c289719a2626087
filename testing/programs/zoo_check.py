"""A zoo folder as a transformers user meets it, in a process that cannot import hf_revdarts.

    python zoo_check.py FOLDER REPO REQUEST.json

Only torch, transformers (and its tokenizers/safetensors) are used: the folder's own code (``auto_map``,
``trust_remote_code=True``) is all of hf_revdarts that loads. ``REQUEST.json`` holds ``batches``: lists of source
sentences, each translated by one ``generate`` call with the card's settings (``num_beams``, ``length_penalty``,
``max_new_tokens``), padded as ``training/evaluate.py`` pads them, so that the translations can be compared with
the committed ones sentence by sentence. Prints one line ``RESULT {json}``.
"""

from __future__ import annotations

import json
import sys

folder, repo, request_path = sys.argv[1], sys.argv[2], sys.argv[3]
# Neither the checkout nor the working folder on sys.path, and an installed (editable) hf_revdarts hidden.
sys.path[:] = [p for p in sys.path if p not in ("", ".") and p.rstrip("/") != repo.rstrip("/")]
sys.modules["hf_revdarts"] = None

import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer, pipeline  # noqa: E402

try:
    import hf_revdarts  # noqa: F401
    importable = True
except ImportError:
    importable = False

request = json.loads(open(request_path, encoding="utf-8").read())
card = json.loads(open(f"{folder}/eval_results.json", encoding="utf-8").read())
torch.set_num_threads(1)
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
example = card["example"]["source"]
ids = tokenizer(example)["input_ids"]
with torch.no_grad():
    inputs = tokenizer([example], return_tensors="pt")
    generated = tokenizer.batch_decode(model.generate(**inputs, num_beams=card["example"]["num_beams"],
                                                      max_new_tokens=64), skip_special_tokens=True)[0].strip()
    translator = pipeline("translation", model=folder, trust_remote_code=True)
    piped = translator(example, num_beams=card["example"]["num_beams"], max_length=64)[0]["translation_text"]
    beams = {"length_penalty": card["length_penalty"]} if card["num_beams"] > 1 else {}
    translations = []
    for batch in request["batches"]:
        enc = tokenizer(batch, return_tensors="pt", padding=True, truncation=True,
                        max_length=config.max_position_embeddings)
        out = model.generate(**enc, num_beams=card["num_beams"], max_new_tokens=card["max_new_tokens"], **beams)
        translations.append([t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)])
print("RESULT " + json.dumps({
    "importable": importable,
    "module": type(model).__module__,
    "model_type": config.model_type,
    "genotype": {"encoder": config.encoder_genotype, "decoder": config.decoder_genotype},
    "parameters": sum(p.numel() for p in model.parameters()),
    "round_trip": tokenizer.decode(ids, skip_special_tokens=True),
    "unknown_tokens": ids.count(tokenizer.unk_token_id) if tokenizer.unk_token_id is not None else 0,
    "example_generate": generated,
    "example_pipeline": piped.strip(),
    "translations": translations,
}))
