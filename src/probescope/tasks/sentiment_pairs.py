"""Generated contrastive pairs, prompts and word lists for the steering wing's built-in behaviour ("sentiment").

Everything here is produced from the small templates below: no text is copied from elsewhere. Topics are split
into a training half (pairs, few-shot examples, LoRA data) and a held-out half (evaluation prompts).
"""

from __future__ import annotations

import random
import re
from typing import Any

TOPICS = [
    "the new library", "my morning commute", "the city park", "the weekend trip", "this restaurant",
    "the school play", "our garden", "the hotel room", "the concert", "the movie", "the office party",
    "the train ride", "the museum", "my new phone", "the beach", "the football match", "the science fair",
    "the bakery", "the mountain hike", "the book club", "the summer camp", "the art class", "the dinner",
    "the farmers market", "the bike ride", "the camping trip", "the job interview", "the birthday party",
    "the village fair", "the river cruise", "the coffee shop", "the museum tour",
]
POSITIVE = ["wonderful", "delightful", "lovely", "amazing", "excellent", "fantastic", "great", "beautiful",
            "joyful", "pleasant", "brilliant", "charming"]
NEGATIVE = ["terrible", "awful", "horrible", "dreadful", "miserable", "disappointing", "bad", "ugly",
            "boring", "unpleasant", "disgusting", "annoying"]
# Lexicon for scoring generations: the adjectives above plus related words (written here, by hand).
POSITIVE_WORDS = set(POSITIVE) | {
    "good", "happy", "love", "loved", "enjoy", "enjoyed", "fun", "nice", "best", "glad", "perfect", "awesome",
    "warm", "friendly", "exciting", "beautifully", "wonderfully", "joy", "delight", "pleasure", "favorite",
    "favourite", "fabulous", "superb", "magnificent", "cheerful", "bright", "smile", "smiles", "laugh",
    "grateful", "thankful", "peaceful", "relaxing", "inspiring", "impressive", "fascinating", "incredible",
    "positive", "kind", "kindness", "welcoming", "comfortable", "memorable", "heartwarming", "hope", "hopeful",
}
NEGATIVE_WORDS = set(NEGATIVE) | {
    "sad", "hate", "hated", "worst", "poor", "angry", "boredom", "dull", "nasty", "painful", "pain", "fear",
    "afraid", "scary", "sick", "tired", "lonely", "cold", "dirty", "broken", "wrong", "fail", "failed",
    "failure", "problem", "problems", "worse", "unhappy", "upset", "frustrating", "frustrated", "stressful",
    "depressing", "gloomy", "hopeless", "disaster", "rude", "noisy", "crowded", "ruined", "waste", "regret",
    "negative", "disappointed", "uncomfortable", "cruel", "grim", "mess",
}
NEUTRAL_TEXTS_TEMPLATES = [
    "The {obj} is on the table next to the window.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The train to the next town leaves at nine in the morning.",
    "A week has seven days and a year has twelve months.",
    "The {obj} was moved to the second floor of the building.",
    "Most maps show north at the top of the page.",
    "The meeting is scheduled for Tuesday afternoon in room four.",
    "Paper is made from wood pulp that is pressed and dried.",
    "The {obj} weighs about two kilograms and is made of metal.",
    "Rivers usually flow from higher ground toward the sea.",
    "The report lists the number of visitors for each month.",
    "A triangle has three sides and three angles.",
]
OBJECTS = ["lamp", "box", "chair", "printer", "clock", "kettle"]


def split_topics(seed: int = 0) -> tuple[list[str], list[str]]:
    """(training topics, held-out topics): a fixed shuffle split in half."""
    rng = random.Random(seed)
    topics = TOPICS[:]
    rng.shuffle(topics)
    half = len(topics) // 2
    return topics[:half], topics[half:]


def _user_prompt(topic: str) -> str:
    return f"Write one sentence about {topic}."


def chat_prompt(tokenizer: Any, user: str, history: list[tuple[str, str]] | None = None) -> str:
    """The text a chat model sees before answering `user` (plain "User:/Assistant:" lines without a template)."""
    msgs = []
    for u, a in history or []:
        msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    msgs.append({"role": "user", "content": user})
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in msgs) + "Assistant:"


def sentiment_pairs(tokenizer: Any, n: int = 32, seed: int = 0) -> list[tuple[str, str]]:
    """`n` (positive, negative) pairs: the same chat prompt, answered "<Topic> was <positive adj>" vs "<negative adj>".

    The texts differ only in the final adjective, so the last-token readout sits on the contrast.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    train, _ = split_topics(seed)
    rng = random.Random(seed + 1)
    out = []
    for i in range(n):
        topic = train[i % len(train)]
        p, q = rng.choice(POSITIVE), rng.choice(NEGATIVE)
        stem = chat_prompt(tokenizer, _user_prompt(topic)) + f"{topic[0].upper() + topic[1:]} was"
        out.append((f"{stem} {p}", f"{stem} {q}"))
    return out


def eval_requests(n: int = 8, seed: int = 0) -> list[str]:
    """Neutral user requests on held-out topics: "Write one sentence about <topic>."."""
    _, held = split_topics(seed)
    return [_user_prompt(held[i % len(held)]) for i in range(n)]


def eval_prompts(tokenizer: Any, n: int = 8, seed: int = 0, history: list[tuple[str, str]] | None = None) -> list[str]:
    """`eval_requests`, chat-formatted (after `history` turns, e.g. few-shot examples)."""
    return [chat_prompt(tokenizer, u, history) for u in eval_requests(n, seed)]


NEUTRAL_REQUEST = "Write one plain factual sentence."


def neutral_texts(n: int = 12) -> list[str]:
    """Plain factual sentences (for KL and perplexity costs)."""
    out = []
    for i in range(n):
        t = NEUTRAL_TEXTS_TEMPLATES[i % len(NEUTRAL_TEXTS_TEMPLATES)]
        out.append(t.format(obj=OBJECTS[i % len(OBJECTS)]))
    return out


def positive_answers(n: int = 32, seed: int = 0, sign: int = 1) -> list[tuple[str, str]]:
    """(user prompt, upbeat answer) on training topics: few-shot examples and LoRA data for the same behaviour.

    `sign=-1` gives downbeat answers instead.
    """
    train, _ = split_topics(seed)
    rng = random.Random(seed + 2)
    if sign >= 0:
        forms, adjs = ["{T} was {a}, and I really enjoyed every moment of it.",
                       "I loved {t}; it was {a} and made me so happy.",
                       "{T} was truly {a} and I would gladly go again.",
                       "What a {a} experience {t} was, full of joy."], POSITIVE
    else:
        forms, adjs = ["{T} was {a}, and I did not enjoy a single moment of it.",
                       "I hated {t}; it was {a} and made me so unhappy.",
                       "{T} was truly {a} and I would never go again.",
                       "What a {a} experience {t} was, full of regret."], NEGATIVE
    out = []
    for i in range(n):
        t = train[i % len(train)]
        f = forms[i % len(forms)]
        out.append((_user_prompt(t), f.format(t=t, T=t[0].upper() + t[1:], a=rng.choice(adjs))))
    return out


_WORD = re.compile(r"[a-z]+")


def sentiment_score(text: str) -> float:
    """Word-list sentiment of one text: (positive − negative word count) / max(1, positive + negative), in [-1, 1]."""
    words = _WORD.findall(text.lower())
    p = sum(w in POSITIVE_WORDS for w in words)
    q = sum(w in NEGATIVE_WORDS for w in words)
    return (p - q) / max(1, p + q)
