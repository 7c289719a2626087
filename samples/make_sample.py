"""Writes the bundled English→German sample the README's main job runs on.

A small hand-written grammar (subject, verb, object with article/adjective agreement in the German
accusative, an optional place) yields a few hundred unique sentence pairs with real German inflection,
so a tiny model can learn something measurable in minutes. Deterministic: rerunning rewrites the same files.

    python samples/make_sample.py            # writes samples/en-de/{train,val,test}.{en,de}
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

# (English, German nominative, grammatical gender)
SUBJECTS = [
    ("the man", "der Mann", "m"), ("the woman", "die Frau", "f"), ("the child", "das Kind", "n"),
    ("the dog", "der Hund", "m"), ("the girl", "das Mädchen", "n"), ("the boy", "der Junge", "m"),
    ("the cat", "die Katze", "f"), ("the teacher", "die Lehrerin", "f"), ("the cook", "der Koch", "m"),
]
TRANSITIVE = [
    ("sees", "sieht"), ("holds", "hält"), ("carries", "trägt"), ("buys", "kauft"), ("finds", "findet"),
    ("likes", "mag"), ("paints", "malt"), ("throws", "wirft"),
]
INTRANSITIVE = [("runs", "läuft"), ("sleeps", "schläft"), ("smiles", "lächelt"), ("sits", "sitzt"), ("waits", "wartet")]
# (English noun, German noun, gender)
OBJECTS = [
    ("ball", "Ball", "m"), ("hat", "Hut", "m"), ("apple", "Apfel", "m"), ("bag", "Tasche", "f"),
    ("flower", "Blume", "f"), ("newspaper", "Zeitung", "f"), ("book", "Buch", "n"), ("bicycle", "Fahrrad", "n"),
    ("bread", "Brot", "n"),
]
ADJECTIVES = [("red", "rot"), ("blue", "blau"), ("green", "grün"), ("big", "groß"), ("small", "klein"), ("old", "alt")]
PLACES = [
    ("in the park", "im Park"), ("on the street", "auf der Straße"), ("at the beach", "am Strand"),
    ("in the garden", "im Garten"), ("in the kitchen", "in der Küche"),
]
DEFINITE_ACC = {"m": "den", "f": "die", "n": "das"}
INDEFINITE_ACC = {"m": "einen", "f": "eine", "n": "ein"}
ADJ_ENDING_AFTER_INDEFINITE_ACC = {"m": "en", "f": "e", "n": "es"}
ADJ_ENDING_AFTER_DEFINITE_ACC = {"m": "en", "f": "e", "n": "e"}


def sentence(rng: random.Random) -> tuple[str, str]:
    subj_en, subj_de, _ = rng.choice(SUBJECTS)
    place = rng.choice(PLACES) if rng.random() < 0.4 else None
    if rng.random() < 0.25:
        verb_en, verb_de = rng.choice(INTRANSITIVE)
        en, de = f"{subj_en} {verb_en}", f"{subj_de} {verb_de}"
    else:
        verb_en, verb_de = rng.choice(TRANSITIVE)
        noun_en, noun_de, gender = rng.choice(OBJECTS)
        definite = rng.random() < 0.5
        adjective = rng.choice(ADJECTIVES) if rng.random() < 0.5 else None
        article_en = "the" if definite else ("an" if (adjective or (noun_en,))[0][0] in "aeiou" else "a")
        if adjective:
            endings = ADJ_ENDING_AFTER_DEFINITE_ACC if definite else ADJ_ENDING_AFTER_INDEFINITE_ACC
            obj_en = f"{article_en} {adjective[0]} {noun_en}"
            adj_de = adjective[1] + endings[gender]
            obj_de = f"{(DEFINITE_ACC if definite else INDEFINITE_ACC)[gender]} {adj_de} {noun_de}"
        else:
            obj_en = f"{article_en} {noun_en}"
            obj_de = f"{(DEFINITE_ACC if definite else INDEFINITE_ACC)[gender]} {noun_de}"
        en, de = f"{subj_en} {verb_en} {obj_en}", f"{subj_de} {verb_de} {obj_de}"
    if place:
        en, de = f"{en} {place[0]}", f"{de} {place[1]}"
    return en[0].upper() + en[1:] + ".", de[0].upper() + de[1:] + "."


def make(pairs: int, seed: int) -> list[tuple[str, str]]:
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < pairs:
        en, de = sentence(rng)
        if en not in seen:
            seen.add(en)
            out.append((en, de))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "en-de")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--splits", default="train:400,val:50,test:50")
    args = parser.parse_args()
    sizes = [(name, int(n)) for name, n in (part.split(":") for part in args.splits.split(","))]
    data = make(sum(n for _, n in sizes), args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    start = 0
    for name, n in sizes:
        chunk = data[start : start + n]
        start += n
        for lang, column in (("en", 0), ("de", 1)):
            (args.out / f"{name}.{lang}").write_text("".join(pair[column] + "\n" for pair in chunk), encoding="utf-8")


if __name__ == "__main__":
    main()
