"""One registry of the project's generated data sets: `make(name, n, seed, **options)` and `list_sets()`.

Every set the project generates from its own word lists and templates is registered here once, with a one-line
description and what a record holds; `probescope data list` shows them and `probescope data show NAME` prints a few
records. A set's generator lives in its own module of `tasks/` (mcq.py, pirate.py, entities.py, cloze.py,
probing.py, icl.py, ioi.py, sentiment_pairs.py, canaries.py); the wings import it from there. This package imports
nothing but `core/` and itself (tests/test_house.py checks it).

    from probescope.tasks.registry import make, list_sets
    make("ioi", 3, seed=0)            # 3 dicts: clean, corrupt, answer, wrong
    make("mcq", 8, seed=1, split="val", varied=True)
"""

from __future__ import annotations

import difflib
import inspect
import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class DataSet:
    """A registered set: `make(n, seed, **options)` returns `n` records, the same ones for the same seed."""

    name: str
    description: str
    record: str  # what one record holds
    make: Callable[..., list]
    seeded: bool = True  # False: the seed does not change the records (a fixed list)
    options: dict[str, Any] = field(default_factory=dict)  # keyword options of `make` and their defaults


class Registry:
    """Named data sets; a name is registered once."""

    def __init__(self) -> None:
        self._sets: dict[str, DataSet] = {}

    def register(self, name: str, description: str, record: str, seeded: bool = True) -> Callable:
        """Decorator: register `fn(n, seed, **options) -> list` as the set `name`. A name already taken is refused."""
        if not name or name != name.strip() or " " in name:
            raise ValueError(f"data set name {name!r} must be one word (letters, digits, '-')")
        if name in self._sets:
            raise ValueError(f"a data set named {name!r} is already registered ({self._sets[name].description}): "
                             "register yours under another name")

        def add(fn: Callable[..., list]) -> Callable[..., list]:
            params = list(inspect.signature(fn).parameters.values())
            if [p.name for p in params[:2]] != ["n", "seed"]:
                raise TypeError(f"data set {name!r}: make must take (n, seed, **options), got {fn.__name__}"
                                f"({', '.join(p.name for p in params)})")
            options = {p.name: p.default for p in params[2:] if p.kind is inspect.Parameter.KEYWORD_ONLY
                       or p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD}
            if name in self._sets:  # registered between the call and the decoration
                raise ValueError(f"a data set named {name!r} is already registered: register yours under another name")
            self._sets[name] = DataSet(name, description, record, fn, seeded, options)
            return fn

        return add

    def names(self) -> list[str]:
        return list(self._sets)

    def get(self, name: str) -> DataSet:
        """The set `name`; an unknown name is a ValueError listing the registered ones."""
        if name not in self._sets:
            near = difflib.get_close_matches(str(name), self._sets, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ValueError(f"unknown data set {name!r}{hint}: use one of {', '.join(self._sets)} "
                             "(`probescope data list` describes them)")
        return self._sets[name]

    def list(self) -> list[DataSet]:
        return list(self._sets.values())

    def make(self, name: str, n: int, seed: int = 0, **options: Any) -> list:
        """`n` records of the set `name`, reproducible from `seed`; `options` are the set's own (see `DataSet.options`)."""
        ds = self.get(name)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n={n!r}: give the number of records as an integer >= 0")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed={seed!r}: give an integer seed")
        bad = sorted(set(options) - set(ds.options))
        if bad:
            have = ", ".join(f"{k}={v!r}" for k, v in ds.options.items()) or "none"
            raise ValueError(f"data set {name!r} has no option {', '.join(map(repr, bad))}: its options are {have}")
        out = list(ds.make(n, seed, **options))
        if len(out) != n:
            raise ValueError(f"data set {name!r} made {len(out)} records where {n} were asked (with these options it "
                             f"holds at most {len(out)}): ask for fewer")
        return out


REGISTRY = Registry()
register = REGISTRY.register


def make(name: str, n: int, seed: int = 0, **options: Any) -> list:
    """`n` records of the registered set `name`, reproducible from `seed` (see `list_sets()`)."""
    return REGISTRY.make(name, n, seed, **options)


def list_sets() -> list[DataSet]:
    """Every registered set, in registration order."""
    return REGISTRY.list()


def get_set(name: str) -> DataSet:
    """The registered set `name` (ValueError listing the valid names when there is none)."""
    return REGISTRY.get(name)


# ------------------------------------------------------------------------------------------------ the built-in sets
@register("mcq", "4-option arithmetic/unit word problems with reasoning traces (the early-exit and reasoner task)",
          "MCQProblem: id, split, kind, question, options, answer (index), result, work, checks, family")
def _mcq(n: int, seed: int, split: str = "train", varied: bool = False, held_out: bool = False, wide: bool = False,
         kinds: tuple[str, ...] | None = None) -> list:
    from .mcq import generate

    return generate(split, n, seed, kinds, varied=varied, held_out=held_out, wide=wide)


@register("pirate", "arithmetic questions answered in pirate speak (or plainly): the concept-training fine-tune set",
          "dict: a, b, op, result, messages (user question, assistant answer)")
def _pirate(n: int, seed: int, pirate: bool = True, share: float = 1.0) -> list:
    from .pirate import examples, items

    its = items(n, seed)
    return [{"a": it.a, "b": it.b, "op": it.op, "result": it.result, "messages": msgs}
            for it, msgs in zip(its, examples(its, pirate=pirate, seed=seed, share=share))]


@register("entities", "fictitious countries with a capital, national animal, flag colour and export (never seen)",
          "Entity: name, capital, animal, colour, export")
def _entities(n: int, seed: int) -> list:
    from .entities import entities

    return entities(n, seed)


@register("entity-facts", "one cloze fact per fictitious country ('The capital of Velmora is' → Dastrin vs 3 others)",
          "ClozeItem: prompt, answer, distractors, key")
def _entity_facts(n: int, seed: int, attribute: str = "capital") -> list:
    from .entities import entities, facts

    return facts(entities(n, seed), (attribute,), seed)


@register("cloze-antonyms", "'The opposite of hot is' → cold vs three other words (40 pairs; the seed picks the "
          "distractors)", "ClozeItem: prompt, answer, distractors, key")
def _cloze_antonyms(n: int, seed: int) -> list:
    from .cloze import antonyms

    return antonyms(seed)[:n]


@register("cloze-arithmetic", "'Question: What is 23 + 45? Answer: 23 + 45 =' → the sum vs three near misses",
          "ClozeItem: prompt, answer, distractors, key")
def _cloze_arithmetic(n: int, seed: int) -> list:
    from .cloze import arithmetic

    return arithmetic(n, seed)


def _probing(task: str) -> Callable[..., list]:
    def gen(n: int, seed: int) -> list:
        from .probing import TASKS

        first = math.ceil(n / 2)
        texts, labels, domains = TASKS[task].generate(first, random.Random(seed))
        a, b = TASKS[task].shift
        rows = [{"text": t, "label": y, "domain": d} for t, y, d in zip(texts, labels, domains)]
        return [r for r in rows if r["domain"] == a][:first] + [r for r in rows if r["domain"] == b][: n - first]

    return gen


for _task, _what, _label in (
        ("truth", "true/false statements (cities, number comparisons); domains affirmative, negated", "1 = true"),
        ("truth-heldout", "true/false statements of topics `truth` never has (animal classes, element symbols, "
                          "colours); domains affirmative, negated", "1 = true"),
        ("sentiment", "positive/negative sentences; domains template, freeform", "1 = positive"),
        ("topic", "sports/food/technology/weather sentences; domains template, freeform", "the topic")):
    register(_task, f"probing: {_what} (half the records from each domain)",
             f"dict: text, label ({_label}), domain")(_probing(_task))


@register("icl", "few-shot word → word prompts ('hot -> cold\\n...big ->') of one in-context task (option task: "
          "uppercase, identity, antonym, capital, next_letter, past, plural)",
          "dict: task, shots ([x, y] pairs), query, answer, prompt")
def _icl(n: int, seed: int, task: str = "antonym", shots: int = 4) -> list:
    from .icl import IclTask, icl_prompt, sample_shots

    t = IclTask.builtin(task)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        x, y = rng.choice(t.pairs)
        demo = sample_shots(t.pairs, shots, x, rng)
        out.append({"task": task, "shots": [list(p) for p in demo], "query": x, "answer": y,
                    "prompt": icl_prompt(demo, x)})
    return out


@register("sentiment-pairs", "contrastive (positive, negative) answers to one chat prompt: the steering wing's "
          "built-in behaviour (plain 'User:/Assistant:' lines; option tokenizer for its chat template)",
          "dict: positive, negative (texts that differ in the last adjective)")
def _sentiment_pairs(n: int, seed: int, tokenizer: Any = None) -> list:
    from .sentiment_pairs import sentiment_pairs

    if n == 0:
        return []
    return [{"positive": p, "negative": q} for p, q in sentiment_pairs(tokenizer, n, seed)]


@register("ioi", "indirect-object prompt pairs for patching ('When Mary and John went to the store, John gave a "
          "drink to' → ' Mary'; the corrupted prompt swaps the subject)",
          "dict: clean, corrupt, answer, wrong (next tokens with their leading space)")
def _ioi(n: int, seed: int, tokenizer: Any = None, template: int | None = None) -> list:
    from .ioi import ioi_texts

    return [dict(zip(("clean", "corrupt", "answer", "wrong"), q)) for q in ioi_texts(n, seed, tokenizer, template)]


@register("canaries", "random records to memorize (a random code key → random common words): the curvature "
          "organism's canaries (option tokenizer: the token ids it trains on)",
          "dict: key, body (+ ids: key prefix + body tokens, with a tokenizer)")
def _canaries(n: int, seed: int, suffix_tokens: int = 24, prefix_tokens: int = 8, tokenizer: Any = None) -> list:
    from .canaries import canary_records, candidates

    if tokenizer is not None:
        return [{"key": k, "body": b, "ids": ids}
                for k, b, ids in canary_records(tokenizer, n, prefix_tokens, suffix_tokens, seed)]
    out: list[dict] = []
    keys: set[str] = set()
    for key, body in candidates(seed, suffix_tokens):
        if len(out) >= n:
            break
        if key not in keys:
            keys.add(key)
            out.append({"key": key, "body": body})
    return out
