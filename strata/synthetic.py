"""A generated four-topic text-classification data set (no download) for ``strata demo`` and tests."""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator

from strata.data import Example

__all__ = ["LABELS", "corpus", "generate", "generate_splits"]

#: Label names; an example's ``label`` is an index into this list.
LABELS: list[str] = ["sports", "technology", "cooking", "travel"]

# Forty words that only occur in one topic each (index = label).
_TOPIC_WORDS: tuple[tuple[str, ...], ...] = (
    (
        "football", "basketball", "tennis", "soccer", "goalkeeper", "referee", "stadium", "tournament",
        "league", "coach", "striker", "playoffs", "championship", "marathon", "sprinter", "athlete",
        "touchdown", "penalty", "midfielder", "dribble", "racket", "umpire", "innings", "cricket",
        "hockey", "puck", "rugby", "scoreboard", "halftime", "overtime", "quarterback", "pitcher",
        "batting", "medal", "olympics", "trophy", "jersey", "teammate", "defender", "wrestling",
    ),
    (
        "software", "laptop", "smartphone", "processor", "algorithm", "database", "browser", "internet",
        "startup", "programmer", "keyboard", "compiler", "bandwidth", "encryption", "robot", "gadget",
        "firmware", "download", "upload", "website", "cloud", "malware", "router", "semiconductor",
        "tablet", "touchscreen", "app", "coding", "developer", "hardware", "battery", "pixel",
        "email", "password", "chatbot", "bluetooth", "sensor", "drone", "cybersecurity", "update",
    ),
    (
        "recipe", "oven", "skillet", "garlic", "onion", "butter", "flour", "dough",
        "pasta", "sauce", "simmer", "roast", "bake", "whisk", "spatula", "saucepan",
        "oregano", "basil", "cinnamon", "vanilla", "broth", "marinade", "grill", "chef",
        "kitchen", "dessert", "soup", "salad", "omelette", "pancake", "seasoning", "pepper",
        "vinegar", "noodles", "casserole", "frosting", "yeast", "blender", "cutlery", "braise",
    ),
    (
        "passport", "airport", "luggage", "suitcase", "hotel", "hostel", "itinerary", "tourist",
        "sightseeing", "beach", "island", "cruise", "backpacking", "visa", "airline", "boarding",
        "destination", "vacation", "resort", "museum", "guidebook", "souvenir", "train", "ferry",
        "hiking", "jetlag", "customs", "map", "booking", "checkin", "landmark", "road",
        "trip", "journey", "abroad", "passenger", "campsite", "villa", "excursion", "postcard",
    ),
)  # fmt: skip

# Words that plausibly belong to two topics; each is drawn by both, which makes some examples ambiguous.
_SHARED_WORDS: tuple[tuple[str, int, int], ...] = (
    ("chip", 1, 2),
    ("server", 1, 2),
    ("pitch", 0, 1),
    ("record", 0, 1),
    ("tour", 0, 3),
    ("course", 0, 2),
    ("flight", 1, 3),
    ("plate", 0, 2),
    ("screen", 1, 3),
    ("menu", 1, 2),
    ("lap", 0, 3),
    ("tasting", 2, 3),
)

_SHARED_BY_TOPIC: tuple[tuple[str, ...], ...] = tuple(
    tuple(word for word, a, b in _SHARED_WORDS if topic in (a, b)) for topic in range(len(LABELS))
)

_OPENERS: tuple[str, ...] = (
    "i think",
    "yesterday",
    "everyone said",
    "my friend told me",
    "in the news",
    "last weekend",
    "honestly",
    "according to the report",
    "we talked about how",
    "it seems that",
    "this morning",
    "apparently",
)

# Clauses holding one content word ("{w}"); "{a}" is a filler adjective.
_CLAUSES: tuple[str, ...] = (
    "the {w} was really {a}",
    "a new {w} came up",
    "they loved the {w}",
    "nobody expected the {w}",
    "we spent hours on the {w}",
    "the {w} looked {a}",
    "there was this {a} {w}",
    "someone mentioned the {w}",
    "the {w} felt {a}",
    "people kept asking about the {w}",
    "my {w} was {a}",
    "the {a} {w} surprised us",
)

_CONNECTORS: tuple[str, ...] = ("and", "but", "while", "because", "so", "then", "although")

_ADJECTIVES: tuple[str, ...] = (
    "great", "strange", "exciting", "boring", "expensive", "quick", "long", "simple",
    "perfect", "terrible", "amazing", "quiet", "busy", "new", "old", "popular",
)  # fmt: skip

_MIN_WORDS = 8
_MAX_WORDS = 20
_SHARED_WORD_P = 0.25  # chance that a topic slot uses a two-topic word instead of a one-topic word
_DISTRACTOR_P = 0.35  # chance of one extra clause about another topic
_LABEL_NOISE = 0.03


def _topic_word(rng: random.Random, topic: int) -> str:
    if rng.random() < _SHARED_WORD_P:
        return rng.choice(_SHARED_BY_TOPIC[topic])
    return rng.choice(_TOPIC_WORDS[topic])


def _clause(rng: random.Random, word: str) -> str:
    return rng.choice(_CLAUSES).format(w=word, a=rng.choice(_ADJECTIVES))


def _sentence(rng: random.Random, topic: int) -> str:
    while True:  # resample until the length fits; almost always succeeds within a few tries
        words = [_topic_word(rng, topic) for _ in range(rng.randint(2, 4))]
        if rng.random() < _DISTRACTOR_P:
            other = rng.choice([t for t in range(len(LABELS)) if t != topic])
            words.insert(rng.randint(0, len(words)), rng.choice(_TOPIC_WORDS[other]))
        parts = [rng.choice(_OPENERS), _clause(rng, words[0])]
        for word in words[1:]:
            parts += [rng.choice(_CONNECTORS), _clause(rng, word)]
        text = " ".join(parts)
        if _MIN_WORDS <= len(text.split()) <= _MAX_WORDS:
            return text


def generate(num_examples: int, seed: int) -> list[Example]:
    """Generate ``num_examples`` labelled sentences, the same ones for the same ``seed``.

    Labels are balanced before about 3% of them are replaced by a random other label (noise).
    """
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    rng = random.Random(seed)
    topics = [i % len(LABELS) for i in range(num_examples)]
    rng.shuffle(topics)
    examples: list[Example] = []
    for topic in topics:
        text = _sentence(rng, topic)
        label = topic
        if rng.random() < _LABEL_NOISE:
            label = rng.choice([t for t in range(len(LABELS)) if t != topic])
        examples.append(Example(text=text, label=label))
    return examples


def generate_splits(num_train: int, num_test: int, seed: int) -> tuple[list[Example], list[Example]]:
    """Generate ``(train, test)`` from two distinct seeds derived from ``seed`` (2*seed and 2*seed+1)."""
    return generate(num_train, 2 * seed), generate(num_test, 2 * seed + 1)


def corpus(examples: Iterable[Example]) -> Iterator[str]:
    """Yield the texts of ``examples`` (e.g. to train a tokenizer)."""
    for example in examples:
        yield example.text
