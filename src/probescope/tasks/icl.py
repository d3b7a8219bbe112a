"""Generated in-context tasks (word → word functions) and their prompts (the ICL ↔ steering tools use them).

A prompt is N demonstration lines `x -> y` then the query `x ->`; the answer is scored by its first token
(`" " + y` tokenised without special tokens), the way Todd et al. and Hendel et al. score function/task vectors.
Word lists are hand-written here (no download): antonyms, country → capital, present → past, singular → plural;
uppercase and next letter are computed.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from typing import Any, Sequence

SEP, NL = " ->", "\n"

_ANTONYMS = """hot cold|big small|up down|fast slow|happy sad|good bad|light dark|old new|early late|open closed
rich poor|hard soft|long short|high low|wet dry|strong weak|full empty|loud quiet|thick thin|clean dirty
young old|true false|cheap expensive|heavy light|right wrong|love hate|win lose|push pull|near far|deep shallow
inside outside|before after|first last|top bottom|buy sell|give take|alive dead|day night|black white|north south
east west|start finish|friend enemy|remember forget|accept reject|increase decrease|wide narrow|brave cowardly
sweet sour|safe dangerous|smooth rough|tall short|warm cool|sharp dull|above below|question answer|pass fail
arrive leave|asleep awake|come go|empty full|more less|in out|on off|yes no|always never|max min|add subtract""".replace("\n", "|")

_CAPITALS = """France Paris|Germany Berlin|Italy Rome|Spain Madrid|Japan Tokyo|China Beijing|Russia Moscow|Egypt Cairo
Greece Athens|Poland Warsaw|Austria Vienna|Norway Oslo|Sweden Stockholm|Finland Helsinki|Denmark Copenhagen
Ireland Dublin|Portugal Lisbon|Hungary Budapest|Cuba Havana|Peru Lima|Chile Santiago|Kenya Nairobi|Thailand Bangkok
Canada Ottawa|Australia Canberra|Argentina Buenos|Mexico Mexico|Turkey Ankara|Iran Tehran|Iraq Baghdad
India Delhi|Belgium Brussels|Netherlands Amsterdam|Switzerland Bern|Ukraine Kyiv|England London|Scotland Edinburgh
Vietnam Hanoi|Indonesia Jakarta|Philippines Manila|Colombia Bogota|Venezuela Caracas|Nigeria Abuja|Morocco Rabat
Syria Damascus|Lebanon Beirut|Israel Jerusalem|Afghanistan Kabul|Pakistan Islamabad|Nepal Kathmandu""".replace("\n", "|")

_PAST = """walk walked|talk talked|jump jumped|play played|go went|see saw|eat ate|run ran|write wrote|sing sang
swim swam|drink drank|take took|give gave|make made|buy bought|think thought|bring brought|sleep slept|speak spoke
drive drove|ride rode|fly flew|know knew|grow grew|throw threw|draw drew|fall fell|feel felt|keep kept|leave left
meet met|pay paid|say said|sell sold|send sent|sit sat|stand stood|teach taught|tell told|win won|begin began
break broke|choose chose|forget forgot|hide hid|open opened|close closed|laugh laughed|cry cried|carry carried
watch watched|listen listened|cook cooked|clean cleaned|help helped|call called|dance danced|smile smiled""".replace("\n", "|")

_PLURAL = """cat cats|dog dogs|house houses|car cars|tree trees|book books|box boxes|child children|man men|woman women
mouse mice|foot feet|tooth teeth|goose geese|city cities|baby babies|story stories|knife knives|leaf leaves|wolf wolves
bus buses|glass glasses|dish dishes|church churches|bird birds|apple apples|chair chairs|table tables|river rivers
horse horses|cup cups|pen pens|door doors|window windows|flower flowers|girl girls|boy boys|friend friends
star stars|hand hands|eye eyes|shoe shoes|key keys|toy toys|day days|party parties|lady ladies|person people
ox oxen|fish fish|sheep sheep|hero heroes|potato potatoes|tomato tomatoes|class classes|fox foxes|watch watches""".replace("\n", "|")

_WORDS = """apple river mountain window garden silver dragon pencil guitar forest ocean castle winter summer rabbit
tiger orange purple yellow planet rocket camera button candle doctor farmer island jungle kitchen ladder magnet
monkey needle parrot pepper pillow pirate puzzle rainbow saddle sailor shadow spider spoon sugar sunset table
teacher ticket tomato tunnel turtle valley violin wallet wizard zebra anchor basket blanket bottle bridge
cactus carpet cherry cloud coffee copper cotton desert diamond engine feather finger flower glove hammer
helmet honey jacket kettle lemon marble meadow mirror napkin orbit paper pocket""".split()


def _pairs(spec: str) -> list[tuple[str, str]]:
    out = []
    for item in spec.split("|"):
        item = item.strip()
        if item:
            a, b = item.split()
            out.append((a, b))
    return out


def _next_letter() -> list[tuple[str, str]]:
    low = string.ascii_lowercase
    return [(c, low[i + 1]) for i, c in enumerate(low[:-1])] + [(c.upper(), low[i + 1].upper()) for i, c in enumerate(low[:-1])]


TASKS: dict[str, Any] = {
    "uppercase": lambda: [(w, w.upper()) for w in _WORDS],
    "identity": lambda: [(w, w) for w in _WORDS],
    "antonym": lambda: _pairs(_ANTONYMS),
    "capital": lambda: _pairs(_CAPITALS),
    "next_letter": _next_letter,
    "past": lambda: _pairs(_PAST),
    "plural": lambda: _pairs(_PLURAL),
}


@dataclass
class IclTask:
    """A named word → word function: its (input, output) pairs."""

    name: str
    pairs: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def builtin(cls, name: str) -> "IclTask":
        if name not in TASKS:
            raise ValueError(f"unknown ICL task {name!r}: use one of {', '.join(TASKS)}")
        return cls(name, TASKS[name]())

    def apply(self, x: str) -> str:
        return dict(self.pairs)[x]


def icl_prompt(shots: Sequence[tuple[str, str]], query: str) -> str:
    """`x -> y` lines for the shots, then `query ->`."""
    return "".join(f"{x}{SEP} {y}{NL}" for x, y in shots) + f"{query}{SEP}"


def sample_shots(pool: Sequence[tuple[str, str]], n: int, exclude: str, rng: random.Random) -> list[tuple[str, str]]:
    cands = [p for p in pool if p[0] != exclude and p[1] != exclude]
    if n > len(cands):
        raise ValueError(f"{n} shots asked but the task has only {len(cands)} other examples: use fewer shots")
    return rng.sample(cands, n)
