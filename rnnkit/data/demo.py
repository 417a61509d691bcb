"""The demo corpus: English-like prose that rnnkit writes itself, so the demo needs no download.

What is here: `demo_corpus(seed, sentences)`, a small probabilistic grammar of a seaside town (people,
places, weather and times of day) rendered as paragraphs. What is not: any real data set.

The text has a vocabulary of a few hundred words and real structure at three levels (spelling, phrase
order, sentence shapes), which a character model learns in a couple of minutes on a laptop CPU.
"""

from __future__ import annotations

import random
import re

PEOPLE = [
    "the old fisherman", "a young sailor", "the little girl", "my grandmother", "the quiet baker",
    "a tired traveller", "the village doctor", "our neighbour", "the school teacher", "the lighthouse keeper",
    "a curious child", "the ferry captain", "her brother", "the painter", "the postman",
]
ANIMALS = ["the gray heron", "a black cat", "the old dog", "a flock of gulls", "the brown horse", "a small fox"]
PLACES = [
    "the harbour", "the lighthouse", "the river", "the market square", "the wooden bridge", "the green hills",
    "the old church", "the narrow street", "the sandy beach", "the stone wall", "the fishing boats",
    "the bakery", "the station", "the orchard", "the cliffs",
]
MOVES = ["walked along", "looked across", "waited near", "wandered past", "rested beside", "hurried towards",
         "sat by", "sang softly by", "climbed up to", "drifted past"]
DEEDS = ["mended the nets", "baked fresh bread", "painted the door blue", "wrote a long letter",
         "counted the boats", "lit the lamp", "read an old book", "planted apple trees", "fed the chickens",
         "repaired the roof", "carried water from the well", "watched the tide come in"]
TIMES = ["at dawn", "in the evening", "before the storm", "after the rain", "every morning", "on sunday",
         "in the winter", "at midnight", "in early spring", "when the bells rang"]
WEATHER = ["the wind rose", "the sun went down", "the rain stopped", "the fog rolled in", "the sea grew calm",
           "the snow began to fall", "the clouds parted", "the tide turned"]
FEELINGS = ["happy", "tired", "hungry", "quiet", "worried", "proud", "cold", "sleepy"]
SAYINGS = ["the sea gives and the sea takes", "a calm sea never made a good sailor",
           "red sky at night is a sailor's delight", "every tide has its ebb",
           "still waters run deep", "the longest night still ends in morning"]


PRONOUNS = ["she", "he", "they"]

# The sentence shapes. `{who}` and `{person}` stand for the sentence's subject, chosen once; every other
# name draws a fresh word from its list, left to right. A capital first letter capitalises the word.
SHAPES = [
    "{Who} {moves} {places} {times}.",
    "{Times}, {person} {deeds}.",
    "When {weather}, {who} {moves} {places}.",
    "{Person} said that {people} {deeds} {times}.",
    "{Person} was {feelings}, so {pronouns} {deeds}.",
    '"{Sayings}," said {person}.',
    "{Who} {moves} {places} and {deeds}.",
    "{Times}, {weather} and {who} {moves} {places}.",
]
WORDS = {"people": PEOPLE, "places": PLACES, "moves": MOVES, "deeds": DEEDS, "times": TIMES, "weather": WEATHER,
         "feelings": FEELINGS, "sayings": SAYINGS, "pronouns": PRONOUNS}
_SLOT = re.compile(r"\{(\w+)\}")


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _sentence(rng: random.Random) -> str:
    subject = {"who": rng.choice(PEOPLE + ANIMALS) if rng.random() < 0.25 else rng.choice(PEOPLE),
               "person": rng.choice(PEOPLE)}
    template = SHAPES[rng.randrange(len(SHAPES))]

    def fill(slot: re.Match[str]) -> str:
        name = slot.group(1)
        key = name.lower()
        word = subject[key] if key in subject else rng.choice(WORDS[key])
        return _cap(word) if name != key else word

    return _SLOT.sub(fill, template)


def demo_corpus(seed: int = 0, sentences: int = 6000) -> str:
    """Paragraphs of 3-6 sentences, one paragraph per line; the same seed gives the same text."""
    rng = random.Random(seed)
    lines, n = [], 0
    while n < sentences:
        k = rng.randint(3, 6)
        lines.append(" ".join(_sentence(rng) for _ in range(k)))
        n += k
    return "\n".join(lines) + "\n"
