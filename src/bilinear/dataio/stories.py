"""A deterministic synthetic children's-story generator with a planted negation rule (issue 5, E11's ground truth).

Stories mix characters, objects, places, actions and feelings in simple sentences. The planted rule:

    <subject> was|felt [not|never] [filler] <adjective>, so <pronoun> <verb>.

The verb's polarity is the adjective's polarity flipped by negation ("not happy ... cried", "never really
scared ... smiled"): an XOR of negation with sentiment, which a model can only get right through an
interaction of the two. "so" appears nowhere else, and feeling adjectives and outcome verbs appear only in
the rule, so the rule's positions can be found from the tokens alone (``rule_sites``).

Story i is drawn from its own ``random.Random`` seeded by (seed, i): the corpus is a pure function of
(seed, n_stories) and any story can be regenerated without the others.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

GIRLS = ["lily", "mia", "emma", "sara", "anna", "lucy", "zoe", "amy", "ella", "rose", "kate", "nina", "maya", "ruby"]
BOYS = ["tom", "ben", "max", "sam", "leo", "jack", "tim", "finn", "jake", "noah", "owen", "luke", "dan", "eli"]
ANIMALS = ["dog", "cat", "bird", "frog", "bunny", "duck", "fox", "bear", "puppy", "kitten", "owl", "mouse"]
OBJECTS = ["ball", "kite", "doll", "toy car", "box", "book", "hat", "cup", "teddy bear", "boat", "drum", "apple",
           "cake", "flower", "shell", "balloon", "stick", "rock", "blanket", "train"]
PLACES = ["park", "garden", "beach", "forest", "river", "school", "shop", "farm", "lake", "hill", "zoo", "kitchen",
          "yard", "village"]
DESCRIPTORS = ["big", "small", "red", "blue", "green", "shiny", "old", "new", "little", "soft", "yellow", "tiny"]
TRAITS = ["little", "kind", "curious", "small", "young", "clever", "funny"]
PLAY_VERBS = ["play", "run", "jump", "swim", "read", "draw", "build", "dig"]
WEATHER = ["it was a sunny day.", "the sky was blue.", "it was raining outside.", "the wind was cold.",
           "the sun was warm.", "it was a quiet morning."]

# The rule's vocabulary. Polarity +1 = positive, -1 = negative.
POSITIVE_ADJ = ["happy", "glad", "excited", "proud", "calm", "brave", "cheerful", "joyful"]
NEGATIVE_ADJ = ["sad", "scared", "angry", "upset", "lonely", "worried", "grumpy", "afraid"]
POSITIVE_VERB = ["smiled", "laughed", "cheered", "danced", "giggled", "sang", "clapped", "grinned"]
NEGATIVE_VERB = ["cried", "frowned", "sobbed", "sulked", "screamed", "hid", "pouted", "whined"]
NEGATIONS = ["not", "never"]
FILLERS = ["very", "really", "quite", "too"]
COPULAS = ["was", "felt"]
PRONOUNS = ["he", "she"]

CELLS = ("pos", "pos_neg", "neg", "neg_neg")  # adjective polarity x negated: "pos_neg" = negated positive


def cell_name(adj_positive: bool, negated: bool) -> str:
    return ("pos" if adj_positive else "neg") + ("_neg" if negated else "")


@dataclass(frozen=True)
class RuleInstance:
    """One planted clause: the adjective's polarity, whether it was negated, and the verb's polarity."""

    adj_positive: bool
    negated: bool

    @property
    def verb_positive(self) -> bool:
        return self.adj_positive != self.negated


class _Story:
    """Sentence builders over one story's random stream and cast."""

    def __init__(self, rng: random.Random, p_negation: float, p_filler: float):
        self.rng, self.p_negation, self.p_filler = rng, p_negation, p_filler
        girl = rng.random() < 0.5
        self.name = rng.choice(GIRLS if girl else BOYS)
        self.pron, self.poss = ("she", "her") if girl else ("he", "his")
        friend_girl = rng.random() < 0.5
        self.friend = rng.choice([n for n in (GIRLS if friend_girl else BOYS) if n != self.name])
        self.friend_pron = "she" if friend_girl else "he"
        self.place = rng.choice(PLACES)
        self.rules: list[RuleInstance] = []

    def pick(self, xs):
        return self.rng.choice(xs)

    def opening(self) -> str:
        r = self.rng.random()
        kind = "girl" if self.pron == "she" else "boy"
        if r < 0.5:
            return f"once upon a time, there was a {self.pick(TRAITS)} {kind} named {self.name}."
        if r < 0.8:
            return f"one day, {self.name} went to the {self.place}."
        return f"{self.name} lived near a {self.pick(DESCRIPTORS)} {self.place}."

    def event(self) -> str:
        s, p, q = self.name, self.pron, self.poss
        a, o, d = self.pick(ANIMALS), self.pick(OBJECTS), self.pick(DESCRIPTORS)
        subject = s if self.rng.random() < 0.6 else p
        templates = [
            f"{subject} saw a {d} {a} near the {self.place}.",
            f"{subject} played with {q} {o}.",
            f"the {a} took {q} {o} and ran away.",
            f"{subject} found a {d} {o} under a tree.",
            f"{subject} wanted to {self.pick(PLAY_VERBS)} with {q} friend {self.friend}.",
            f"{self.friend} gave {s} a {d} {o}.",
            f"{subject} and {self.friend} went to the {self.pick(PLACES)}.",
            f"{subject} lost {q} {o} at the {self.place}.",
            f"the {a} wanted to {self.pick(PLAY_VERBS)} too.",
            f"{self.friend} said, \"let us {self.pick(PLAY_VERBS)} with the {o}!\"",
            self.pick(WEATHER),
            f"{subject} looked at the {d} {o} for a long time.",
        ]
        return self.pick(templates)

    def feeling(self) -> str:
        """The planted rule clause; records its RuleInstance."""
        own = self.rng.random() < 0.75
        name, pron = (self.name, self.pron) if own else (self.friend, self.friend_pron)
        subject = name if self.rng.random() < 0.7 else pron
        adj_positive = self.rng.random() < 0.5
        negated = self.rng.random() < self.p_negation
        words = [subject, self.pick(COPULAS)]
        if negated:
            words.append(self.pick(NEGATIONS))
        if self.rng.random() < self.p_filler:
            words.append(self.pick(FILLERS))
        words.append(self.pick(POSITIVE_ADJ if adj_positive else NEGATIVE_ADJ))
        rule = RuleInstance(adj_positive, negated)
        self.rules.append(rule)
        verb = self.pick(POSITIVE_VERB if rule.verb_positive else NEGATIVE_VERB)
        return " ".join(words) + f", so {pron} {verb}."

    def ending(self) -> str:
        return self.pick([
            "the end.",
            f"after that, {self.name} went home.",
            f"{self.name} and {self.friend} became good friends.",
            f"then {self.name} went to bed.",
        ])


def generate_story(seed: int, index: int, p_negation: float = 0.5, p_filler: float = 0.3,
                   max_feelings: int = 3, max_events: int = 5) -> tuple[str, list[RuleInstance]]:
    """Story ``index`` of corpus ``seed``: (text, its rule instances in order)."""
    digest = hashlib.sha256(f"stories/{seed}/{index}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "little"))
    st = _Story(rng, p_negation, p_filler)
    sentences = [st.opening()]
    n_feelings = rng.randint(1, max_feelings)
    n_events = rng.randint(1, max_events)
    parts = ["f"] * n_feelings + ["e"] * n_events
    rng.shuffle(parts)
    for part in parts:
        sentences.append(st.feeling() if part == "f" else st.event())
    sentences.append(st.ending())
    return " ".join(sentences), st.rules


def is_validation(text: str, val_fraction: float) -> bool:
    """Split by a hash of the text, so a story can never be in both splits (they are deduplicated first)."""
    h = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return (h % 1_000_000) < val_fraction * 1_000_000


def generate_corpus(n_stories: int, seed: int = 0, val_fraction: float = 0.05, **kwargs) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...]}``: n_stories generated, exact duplicates removed, split by hash."""
    seen: set[str] = set()
    out: dict[str, list[str]] = {"train": [], "val": []}
    for i in range(n_stories):
        text, _ = generate_story(seed, i, **kwargs)
        if text in seen:
            continue
        seen.add(text)
        out["val" if is_validation(text, val_fraction) else "train"].append(text)
    return out


def rule_vocabulary() -> dict[str, list[str]]:
    return {"positive_adj": POSITIVE_ADJ, "negative_adj": NEGATIVE_ADJ, "positive_verb": POSITIVE_VERB,
            "negative_verb": NEGATIVE_VERB, "negations": NEGATIONS, "pronouns": PRONOUNS}


def rule_sites(words: list[str]) -> list[tuple[int, str, bool]]:
    """Find the rule in a word (token) sequence: [(index of the pronoun after "so", cell, verb_positive)].

    The model's prediction at that index is the outcome verb. The feeling clause is read back from "so" to
    the copula: its adjective gives the polarity, a negation word anywhere in between negates it.
    """
    pos_adj, neg_adj = set(POSITIVE_ADJ), set(NEGATIVE_ADJ)
    out = []
    for i in range(1, len(words) - 1):
        if words[i] != "so" or words[i + 1] not in PRONOUNS:
            continue
        j, adj, negated = i - 1, None, False
        while j >= 0 and words[j] not in COPULAS:
            if words[j] in pos_adj or words[j] in neg_adj:
                adj = words[j] in pos_adj
            negated |= words[j] in NEGATIONS
            j -= 1
        if adj is None or j < 0:
            continue
        out.append((i + 1, cell_name(adj, negated), adj != negated))
    return out
