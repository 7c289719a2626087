"""The tokenizer as transformers sees it: special token ids, targets ending in eos, pairs encoded for training, and a
save/AutoTokenizer round trip."""

from __future__ import annotations

from transformers import AutoTokenizer

from hf_revdarts.training.tokenization import encode_pairs, save_tokenizer


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
