"""A generated world: people, relations and facts, and the pretraining corpus written about it.

The embedded default model is pretrained on statements about this world ("kamo lives in oslo ."), so
fine-tuning tasks can ask for knowledge the model already has (fact recall in a new question format),
overwrite it (conflicting updates), or need a skill it never saw (copy, reverse, sort, add). Everything
is a pure function of a seed, so the same world, corpus and tasks come back on every machine.

Vocabulary is word-level on purpose: every entity, value, letter and digit is a single token, so exact
match and "answer restricted" match are well defined and cheap (see :mod:`forgetting.tasks.encoding`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import cache

# Relation name -> (statement templates, question template, value set).
# "{e}" is the entity and "{v}" the value. Question templates are used only by fine-tuning tasks,
# never in the pretraining corpus: answering them needs the fact AND a new format.
#: The words of the task prompts (families.py formats them), so the tokenizer knows every one.
TASK_FORMAT_WORDS = ("Q", ":", "?", "A", "copy", "reverse", "sort", "what", "is", "plus")
RELATIONS: dict[str, dict] = {
    "city": {
        "statements": ["{e} lives in {v} .", "the home of {e} is {v} .", "{e} has a house in {v} ."],
        "question": "where does {e} live ?",
        "values": ["oslo", "lima", "cairo", "quito", "kyoto", "perth", "dakar", "minsk",
                   "hanoi", "porto", "rabat", "sofia", "tunis", "accra", "bern", "riga"],
    },
    "job": {
        "statements": ["{e} works as a {v} .", "the job of {e} is {v} .", "{e} earns money as a {v} ."],
        "question": "what is the job of {e} ?",
        "values": ["baker", "pilot", "nurse", "judge", "miner", "tailor", "farmer", "singer",
                   "painter", "sailor", "doctor", "lawyer", "writer", "mason", "chef", "guard"],
    },
    "color": {
        "statements": ["the favourite color of {e} is {v} .", "{e} likes the color {v} .",
                       "{e} paints everything {v} ."],
        "question": "which color does {e} like ?",
        "values": ["red", "blue", "green", "amber", "violet", "black", "white", "pink",
                   "teal", "olive", "gold", "grey"],
    },
    "pet": {
        "statements": ["{e} owns a {v} .", "the pet of {e} is a {v} .", "{e} walks a {v} every day ."],
        "question": "which animal does {e} keep ?",
        "values": ["dog", "cat", "horse", "parrot", "rabbit", "turtle", "goat", "hamster",
                   "snake", "duck", "pony", "ferret"],
    },
    "food": {
        "statements": ["{e} eats {v} .", "the favourite food of {e} is {v} .", "{e} cooks {v} at night ."],
        "question": "what does {e} eat ?",
        "values": ["rice", "bread", "soup", "fish", "beans", "pasta", "cheese", "apples",
                   "noodles", "olives", "dates", "plums"],
    },
    "sport": {
        "statements": ["{e} plays {v} .", "the sport of {e} is {v} .", "{e} trains for {v} ."],
        "question": "which sport does {e} play ?",
        "values": ["tennis", "chess", "rugby", "golf", "hockey", "polo", "judo", "rowing",
                   "cricket", "skiing", "boxing", "fencing"],
    },
}

LETTERS = list("abcdefghij")
DIGITS = [str(d) for d in range(10)]

_ONSETS = ["k", "t", "m", "r", "s", "v", "d", "l", "n", "b", "p", "z", "g", "f", "h", "j"]
_VOWELS = ["a", "e", "i", "o", "u"]


@dataclass(frozen=True)
class World:
    """People and their facts. ``facts[relation][entity]`` is the value (one word)."""

    seed: int
    entities: tuple[str, ...]
    facts: dict[str, dict[str, str]] = field(hash=False)

    @property
    def relations(self) -> tuple[str, ...]:
        return tuple(self.facts)

    def n_facts(self) -> int:
        return sum(len(v) for v in self.facts.values())


def _make_names(n: int, rng: random.Random) -> list[str]:
    """``n`` distinct pronounceable names of 2 or 3 syllables ("kamo", "tesuri")."""
    names: set[str] = set()
    ordered: list[str] = []
    while len(ordered) < n:
        k = rng.choice((2, 2, 3))
        name = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(k))
        if name not in names:
            names.add(name)
            ordered.append(name)
    return ordered


@cache
def make_world(seed: int = 0, n_entities: int = 200) -> World:
    """Build the world: ``n_entities`` people, each with one value for every relation in ``RELATIONS``.

    Values are drawn uniformly, so each relation is a random function entity -> value; knowing one
    relation of a person tells nothing about another (tasks on different relations share entities
    and format, not answers).
    """
    if n_entities < 10:
        raise ValueError(f"n_entities: need at least 10 people, got {n_entities}")
    rng = random.Random(seed)
    entities = tuple(_make_names(n_entities, rng))
    facts = {
        rel: {e: rng.choice(spec["values"]) for e in entities} for rel, spec in RELATIONS.items()
    }
    return World(seed=seed, entities=entities, facts=facts)


def _filler_sentence(rng: random.Random) -> str:
    """A sentence that teaches the letters and digits as words, without any task format."""
    if rng.random() < 0.5:
        return "the letters are " + " ".join(rng.choices(LETTERS, k=rng.randint(2, 5))) + " ."
    return "the numbers are " + " ".join(rng.choices(DIGITS, k=rng.randint(2, 5))) + " ."


def corpus_document(world: World, rng: random.Random, n_sentences: int = 4) -> str:
    """One pretraining document: ``n_sentences`` statements about random people (or filler)."""
    sentences = []
    for _ in range(n_sentences):
        if rng.random() < 0.1:
            sentences.append(_filler_sentence(rng))
            continue
        entity = rng.choice(world.entities)
        relation = rng.choice(world.relations)
        template = rng.choice(RELATIONS[relation]["statements"])
        sentences.append(template.format(e=entity, v=world.facts[relation][entity]))
    return " ".join(sentences)


def pretraining_corpus(world: World, n_documents: int, seed: int) -> list[str]:
    """``n_documents`` documents drawn with ``seed``; a different seed gives a held-out sample."""
    rng = random.Random(seed)
    return [corpus_document(world, rng) for _ in range(n_documents)]


def vocabulary_text(world: World) -> list[str]:
    """Lines that together contain every word the world, its corpus and its tasks can produce.

    The tokenizer is trained on the corpus plus these lines, so no task word maps to ``[UNK]``.
    """
    lines = [" ".join(world.entities), " ".join(LETTERS), " ".join(DIGITS), " ".join(TASK_FORMAT_WORDS)]
    for spec in RELATIONS.values():
        lines.extend(spec["statements"] + [spec["question"], " ".join(spec["values"])])
    return lines
