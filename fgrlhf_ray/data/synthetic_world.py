"""The synthetic fact-QA world: entities, facts, the answer grammar, questions, passages.

Everything a model reads or writes in this task is built from one small, closed
**answer grammar**: a fact is a triple (subject, relation, value) and each relation has
exactly one sentence template, e.g. ``born_in`` → ``"{s} was born in {v}."``. Passages
are made of such sentences, gold answers too, so the oracle
(`fgrlhf_ray.data.synthetic_oracle`) can parse *any* sentence a policy emits back into
a triple and check it by string matching. Sentences may join clauses with ``", and "``
(``"A was born in B, and B is located in C."``), which gives the relevance reward
sub-sentence segments as in QA-FEEDBACK.

The world is generated from a seed (`SyntheticWorld.generate`) with `random.Random`
only — never set/dict-hash order — so the same seed gives byte-identical files.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from typing import NamedTuple

# ---------------------------------------------------------------------------------------
# Grammar
# ---------------------------------------------------------------------------------------

ENTITY_TYPES = ("person", "city", "river", "company")
# Value kinds that are names of entities *with* a passage of their own.
ENTITY_KINDS = frozenset(ENTITY_TYPES)
# Value kinds written as capitalised names (entities, countries and seas).
NAME_KINDS = frozenset(ENTITY_TYPES) | {"country", "sea"}


class Fact(NamedTuple):
    """One (subject, relation, value) triple; strings compared exactly."""

    subject: str
    relation: str
    value: str


@dataclass(frozen=True)
class Relation:
    """A relation of the grammar: its one sentence template and its questions."""

    name: str
    subject_types: tuple[str, ...]
    value_kind: str  # an entity type, "country", "sea", "year", "number", "occupation", "product"
    template: str  # "{s} ... {v}." — the only way the grammar states this relation
    questions: tuple[str, ...]  # question templates over "{s}"


RELATIONS: dict[str, Relation] = {
    r.name: r
    for r in (
        # person
        Relation("birth_year", ("person",), "year", "{s} was born in the year {v}.",
                 ("When was {s} born?", "In which year was {s} born?")),
        Relation("born_in", ("person",), "city", "{s} was born in {v}.",
                 ("Where was {s} born?", "In which city was {s} born?")),
        Relation("occupation", ("person",), "occupation", "{s} works as a {v}.",
                 ("What does {s} do for a living?", "What is the job of {s}?")),
        Relation("employer", ("person",), "company", "{s} works for {v}.",
                 ("Who does {s} work for?", "Which company does {s} work for?")),
        # city
        Relation("country", ("city",), "country", "{s} is located in {v}.",
                 ("Which country is {s} in?", "In which country is {s} located?")),
        Relation("population", ("city",), "number", "{s} has a population of {v}.",
                 ("How many people live in {s}?", "What is the population of {s}?")),
        Relation("mayor", ("city",), "person", "The mayor of {s} is {v}.",
                 ("Who is the mayor of {s}?", "Who leads the city of {s}?")),
        # city and company
        Relation("founded_year", ("city", "company"), "year", "{s} was founded in {v}.",
                 ("When was {s} founded?", "In which year was {s} founded?")),
        # river
        Relation("flows_through", ("river",), "city", "{s} flows through {v}.",
                 ("Which city does {s} flow through?", "Through which city does {s} flow?")),
        Relation("length", ("river",), "number", "{s} is {v} kilometres long.",
                 ("How long is {s}?", "What is the length of {s}?")),
        Relation("mouth", ("river",), "sea", "{s} flows into the {v}.",
                 ("Into which sea does {s} flow?", "Where does {s} end?")),
        # company
        Relation("headquarters", ("company",), "city", "{s} is headquartered in {v}.",
                 ("Where is {s} headquartered?", "Where is {s} based?")),
        Relation("founder", ("company",), "person", "{s} was founded by {v}.",
                 ("Who founded {s}?", "Who started {s}?")),
        Relation("product", ("company",), "product", "{s} makes {v}.",
                 ("What does {s} make?", "What does {s} produce?")),
    )
}

TYPE_RELATIONS: dict[str, tuple[str, ...]] = {
    t: tuple(r.name for r in RELATIONS.values() if t in r.subject_types) for t in ENTITY_TYPES
}

# Questions that ask two relations at once (both answers are Missing-Answer facts).
PAIR_QUESTIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("birth_year", "born_in"): ("When and where was {s} born?",),
    ("occupation", "employer"): ("What does {s} do and for which company?",),
    ("country", "population"): ("Where is {s} and how many people live there?",),
    ("length", "mouth"): ("How long is {s} and into which sea does it flow?",),
    ("founded_year", "founder"): ("When was {s} founded and by whom?",),
    ("founder", "headquarters"): ("Who founded {s} and where is it based?",),
}

# The facts that say what an entity *is*, most defining first. The first one is the
# Major-Auxiliary fact about an answer entity; the first one not asked is the
# Minor-Auxiliary fact about the asked entity (see `derive_required`).
DEFINING: dict[str, tuple[str, ...]] = {
    "person": ("occupation", "born_in", "birth_year"),
    "city": ("country", "population", "founded_year"),
    "river": ("flows_through", "length", "mouth"),
    "company": ("product", "headquarters", "founded_year"),
}

MISSING_ANSWER = "Missing-Answer"
MISSING_MAJOR = "Missing-Major-Auxiliary"
MISSING_MINOR = "Missing-Minor-Auxiliary"

OCCUPATIONS = (
    "baker", "banker", "builder", "carpenter", "chemist", "dentist", "farmer", "fisher",
    "gardener", "jeweller", "lawyer", "librarian", "nurse", "painter", "pilot", "poet",
    "potter", "sailor", "surgeon", "tailor", "teacher", "weaver", "writer", "singer",
)
PRODUCTS = (
    "bicycles", "bread", "candles", "carpets", "cheese", "clocks", "engines", "furniture",
    "glass", "hats", "lamps", "maps", "paper", "pianos", "ropes", "shoes", "soap",
    "telescopes", "tiles", "toys", "tractors", "violins", "watches", "wine",
)
COMPANY_SUFFIXES = ("Systems", "Foods", "Motors", "Works", "Trading", "Industries", "Labs")


def _regex_for(template: str) -> re.Pattern[str]:
    """Template "{s} was born in {v}." → anchored regex over the clause core (no '.')."""
    core = template[:-1] if template.endswith(".") else template
    parts = re.split(r"(\{s\}|\{v\})", core)
    out = []
    for p in parts:
        if p == "{s}":
            out.append(r"(?P<s>.+?)")
        elif p == "{v}":
            out.append(r"(?P<v>.+?)")
        else:
            out.append(re.escape(p))
    return re.compile("".join(out))


_CLAUSE_PATTERNS: tuple[tuple[Relation, re.Pattern[str]], ...] = tuple(
    (r, _regex_for(r.template)) for r in RELATIONS.values()
)


def is_name(text: str) -> bool:
    """A capitalised name: words starting with an upper-case letter (any script),
    made of letters, apostrophes and hyphens ("Doren Valk", "Välk", "O'Mara")."""
    words = text.split(" ")
    return bool(text) and all(
        w and w[0].isupper() and all(c.isalpha() or c in "'-" for c in w) for w in words
    )


def _is_lower_words(text: str) -> bool:
    words = text.split(" ")
    return bool(text) and all(w.isalpha() and w.islower() for w in words)


def is_valid_value(kind: str, text: str) -> bool:
    """Whether `text` is well-formed for a value of this kind (not whether it is true)."""
    if kind in NAME_KINDS:
        return is_name(text)
    if kind == "year":
        return re.fullmatch(r"[0-9]{1,4}", text) is not None
    if kind == "number":
        return re.fullmatch(r"[0-9]{1,3}(?:,[0-9]{3})*|[0-9]+", text) is not None
    if kind in ("occupation", "product"):
        return _is_lower_words(text)
    raise ValueError(f"unknown value kind {kind!r}")


def render_core(fact: Fact) -> str:
    """The clause text of a fact without the final period."""
    return RELATIONS[fact.relation].template[:-1].format(s=fact.subject, v=fact.value)


def render_fact(fact: Fact) -> str:
    """The one sentence the grammar has for `fact`, e.g. "Doren Valk was born in Meribel."."""
    return render_core(fact) + "."


def join_clauses(cores: list[str]) -> str:
    """Clause cores → one sentence: "A, and b, and C." (a leading "The" is lowered)."""
    parts = []
    for i, c in enumerate(cores):
        if i == 0:
            parts.append(c[:1].upper() + c[1:])
        else:
            parts.append("and " + (c[:1].lower() + c[1:] if c.startswith("The ") else c))
    return ", ".join(parts) + "."


def parse_clause(core: str) -> Fact | None:
    """Parse one clause (no final punctuation) into a Fact, or None if it is not grammatical.

    Whitespace runs are collapsed and a leading "and " or lower-case first letter is
    accepted (a clause after ", and "). Templates are tried in order and the first whose
    subject is a name and whose value is well-formed for the relation wins, so "X was
    born in the year 1950" is `birth_year`, never `born_in` with value "the year 1950".
    """
    text = " ".join(core.split())
    if text.startswith("and "):
        text = text[4:]
    if not text:
        return None
    text = text[0].upper() + text[1:]
    for rel, pattern in _CLAUSE_PATTERNS:
        m = pattern.fullmatch(text)
        if m is None:
            continue
        s, v = m.group("s"), m.group("v")
        if is_name(s) and is_valid_value(rel.value_kind, v):
            return Fact(s, rel.name, v)
    return None


def render_question(subject: str, asked: tuple[str, ...], variant: int = 0) -> str:
    templates = RELATIONS[asked[0]].questions if len(asked) == 1 else PAIR_QUESTIONS[asked]
    return templates[variant % len(templates)].format(s=subject)


_QUESTION_PATTERNS: tuple[tuple[tuple[str, ...], re.Pattern[str]], ...] = tuple(
    [((r.name,), _regex_for(q)) for r in RELATIONS.values() for q in r.questions]
    + [(pair, _regex_for(q)) for pair, qs in PAIR_QUESTIONS.items() for q in qs]
)


def parse_question(question: str) -> list[tuple[str, tuple[str, ...]]]:
    """All (subject, asked relations) readings of a question (several only for
    "When was X founded?", where X may be a city or a company)."""
    text = " ".join(question.split())
    out = []
    for asked, pattern in _QUESTION_PATTERNS:
        m = pattern.fullmatch(text)
        if m is not None and is_name(m.group("s")):
            out.append((m.group("s"), asked))
    return out


# ---------------------------------------------------------------------------------------
# Required facts (shared by the generator and the oracle)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequiredFact:
    """A fact a complete answer must state, where the passages state it (1-based ids as
    in QA-FEEDBACK: passage_id indexes the passages, sentence_id the passage sentences)."""

    fact: Fact
    kind: str  # MISSING_ANSWER | MISSING_MAJOR | MISSING_MINOR
    passage_id: int
    sentence_id: int


def derive_required(
    subject: str,
    subject_type: str,
    asked: tuple[str, ...],
    passage_facts: dict[tuple[str, str], tuple[str, int, int]],
) -> tuple[RequiredFact, ...]:
    """The required facts of a question, in the gold answer's order.

    Rules (deterministic, so a policy can learn them):
      1. every asked relation of the subject — Missing-Answer;
      2. if an asked value is an entity (person / city / company), that entity's first
         defining fact (`DEFINING`), only for the first such value — Major-Auxiliary;
      3. otherwise the subject's first defining fact that was not asked — Minor-Auxiliary.

    `passage_facts` maps (subject, relation) → (value, passage_id, sentence_id).
    Raises KeyError when the passages lack a required fact (a malformed record).
    """
    out: list[RequiredFact] = []
    for rel in asked:
        v, pid, sid = passage_facts[(subject, rel)]
        out.append(RequiredFact(Fact(subject, rel, v), MISSING_ANSWER, pid, sid))
    major = None
    for req in list(out):
        kind = RELATIONS[req.fact.relation].value_kind
        if kind in ENTITY_KINDS:
            drel = DEFINING[kind][0]
            v, pid, sid = passage_facts[(req.fact.value, drel)]
            major = RequiredFact(Fact(req.fact.value, drel, v), MISSING_MAJOR, pid, sid)
            break
    if major is not None:
        out.append(major)
    else:
        drel = next(r for r in DEFINING[subject_type] if r not in asked)
        v, pid, sid = passage_facts[(subject, drel)]
        out.append(RequiredFact(Fact(subject, drel, v), MISSING_MINOR, pid, sid))
    return tuple(out)


# ---------------------------------------------------------------------------------------
# The world
# ---------------------------------------------------------------------------------------


@dataclass
class Entity:
    name: str
    type: str  # one of ENTITY_TYPES
    facts: dict[str, str] = field(default_factory=dict)  # relation -> value

    def fact(self, relation: str) -> Fact:
        return Fact(self.name, relation, self.facts[relation])


@dataclass(frozen=True)
class Passage:
    """A passage: a title and template sentences (without the "Title\\n\\n" prefix)."""

    title: str
    sentences: tuple[str, ...]
    facts: tuple[Fact, ...]  # facts[i] is what sentences[i] states

    @property
    def content(self) -> str:
        """The passage text as in QA-FEEDBACK prompts: "Title\\n\\nS1 S2 ..."."""
        return f"{self.title}\n\n" + " ".join(self.sentences)


@dataclass(frozen=True)
class QuestionItem:
    """One question of the world with everything the files and the oracle need."""

    qid: str
    question: str
    subject: str
    subject_type: str
    asked: tuple[str, ...]
    passages: tuple[Passage, ...]
    required: tuple[RequiredFact, ...]
    gold: str

    def passage_facts(self) -> dict[tuple[str, str], tuple[str, int, int]]:
        return passage_fact_index(self.passages)

    @property
    def text(self) -> str:
        """The policy input, QA-FEEDBACK style, ending in " answer:" (see `build_text`)."""
        return build_text(self.question, [(p.title, p.content) for p in self.passages])

    def prompt_record(self) -> dict:
        """A row of a prompts file (same keys as dev400.json)."""
        return {
            "text": self.text,
            "answer": [self.gold],
            "passages": [{"content": p.content, "wikipage": p.title} for p in self.passages],
            "question": self.question,
        }

    def feedback_passages(self) -> list[list[str]]:
        """QA-FEEDBACK feedback passages: [title, sentence_1, ...]; like the real data the
        first sentence carries the "Title\\n\\n" prefix."""
        out = []
        for p in self.passages:
            sents = list(p.sentences)
            sents[0] = f"{p.title}\n\n{sents[0]}"
            out.append([p.title, *sents])
        return out


PROMPT_SUFFIX = " answer:"
PERTURBATIONS = ("drop", "wrong", "irrelevant", "redundant", "unverifiable", "incoherent")


def build_text(question: str, passages: list[tuple[str, str]]) -> str:
    """`question: Q context: wikipage: T text: C | wikipage: ... answer:`.

    The QA-FEEDBACK input format plus a trailing " answer:" so that a decoder-only policy
    knows where the answer starts; responses then begin with a space (" Doren Valk ..."),
    which keeps the first word's BPE tokens identical to those in the passages.
    """
    ctx = " | ".join(f"wikipage: {t} text: {c}" for t, c in passages)
    return f"question: {question} context: {ctx}{PROMPT_SUFFIX}"


def passage_fact_index(passages) -> dict[tuple[str, str], tuple[str, int, int]]:
    """(subject, relation) → (value, passage_id, sentence_id), ids 1-based."""
    idx: dict[tuple[str, str], tuple[str, int, int]] = {}
    for pid, p in enumerate(passages, start=1):
        for sid, f in enumerate(p.facts, start=1):
            idx.setdefault((f.subject, f.relation), (f.value, pid, sid))
    return idx


class _NameMaker:
    """Pronounceable made-up names, unique across the whole world."""

    ONSETS = ("b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p",
              "r", "s", "st", "t", "tr", "v", "z", "th", "sh", "w", "j")
    NUCLEI = ("a", "e", "i", "o", "u", "ai", "ea", "ou", "io")
    CODAS = ("", "", "", "n", "r", "l", "s", "th", "nd", "rk", "m", "x", "t")

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()  # membership only, never iterated (determinism)

    def word(self, n_syll: tuple[int, int] = (2, 3)) -> str:
        for _ in range(10_000):
            k = self.rng.randint(*n_syll)
            w = "".join(
                self.rng.choice(self.ONSETS) + self.rng.choice(self.NUCLEI)
                for _ in range(k - 1)
            ) + self.rng.choice(self.ONSETS) + self.rng.choice(self.NUCLEI) + self.rng.choice(self.CODAS)
            w = w.capitalize()
            if w not in self.used and 4 <= len(w) <= 11:
                self.used.add(w)
                return w
        raise RuntimeError("name space exhausted; ask for fewer entities")


def _fmt_number(n: int) -> str:
    return f"{n:,}"


def _make_entities(rng: random.Random, names: _NameMaker,
                   n_ent: int) -> tuple[dict[str, Entity], dict[str, list[Entity]]]:
    """`n_ent` entities of each type in `ENTITY_TYPES`, without facts: (name → entity, type →
    entities in creation order). Part of `SyntheticWorld.generate`; draws from `rng` (and
    `names`, which shares it) in a fixed order, so the same seed gives the same world.
    """
    # People combine a first and a last name from small pools: each part recurs, so
    # BPE gives it one or two tokens and a small policy can learn to copy names.
    n_part = max(6, math.ceil(2 * math.sqrt(n_ent)))
    first_names = [names.word((2, 2)) for _ in range(n_part)]
    last_names = [names.word((2, 2)) for _ in range(n_part)]
    person_names = [f"{a} {b}" for a in first_names for b in last_names]
    rng.shuffle(person_names)
    ents: dict[str, Entity] = {}
    by_type: dict[str, list[Entity]] = {t: [] for t in ENTITY_TYPES}
    for t in ENTITY_TYPES:
        for _ in range(n_ent):
            if t == "person":
                name = person_names.pop()
            elif t == "city":
                name = names.word((2, 2))
            elif t == "river":
                name = names.word((2, 2)) + " River"
            else:
                name = f"{names.word((2, 2))} {rng.choice(COMPANY_SUFFIXES)}"
            e = Entity(name, t)
            ents[name] = e
            by_type[t].append(e)
    return ents, by_type


def _assign_facts(rng: random.Random, by_type: dict[str, list[Entity]], countries: list[str],
                  seas: list[str]) -> None:
    """Fill every entity's `facts` (type by type, entity by entity, relation by relation:
    the order of the `rng` draws is part of the seeded world). Part of `SyntheticWorld.generate`."""
    for e in by_type["person"]:
        e.facts["birth_year"] = str(rng.randint(1900, 2005))
        e.facts["born_in"] = rng.choice(by_type["city"]).name
        e.facts["occupation"] = rng.choice(OCCUPATIONS)
        e.facts["employer"] = rng.choice(by_type["company"]).name
    for e in by_type["city"]:
        e.facts["country"] = rng.choice(countries)
        e.facts["population"] = _fmt_number(rng.randint(5, 2000) * 1000)
        e.facts["mayor"] = rng.choice(by_type["person"]).name
        e.facts["founded_year"] = str(rng.randint(1100, 1950))
    for e in by_type["river"]:
        e.facts["flows_through"] = rng.choice(by_type["city"]).name
        e.facts["length"] = str(rng.randint(40, 3000))
        e.facts["mouth"] = rng.choice(seas)
    for e in by_type["company"]:
        e.facts["headquarters"] = rng.choice(by_type["city"]).name
        e.facts["founded_year"] = str(rng.randint(1850, 2020))
        e.facts["founder"] = rng.choice(by_type["person"]).name
        e.facts["product"] = rng.choice(PRODUCTS)


def _choose_questions(rng: random.Random, by_type: dict[str, list[Entity]], n_questions: int, *, n_ent: int,
                      pair_question_prob: float) -> list[tuple[Entity, tuple[str, ...]]]:
    """`n_questions` distinct (subject, asked relations) pairs, each a pair question with
    probability `pair_question_prob` while both kinds remain; `ValueError` when the world
    has fewer distinct questions. Part of `SyntheticWorld.generate` (draws from `rng`)."""
    candidates: list[tuple[Entity, tuple[str, ...]]] = []
    pair_candidates: list[tuple[Entity, tuple[str, ...]]] = []
    for t in ENTITY_TYPES:
        for e in by_type[t]:
            for rel in TYPE_RELATIONS[t]:
                candidates.append((e, (rel,)))
            for pair in PAIR_QUESTIONS:
                if all(r in TYPE_RELATIONS[t] for r in pair):
                    pair_candidates.append((e, pair))
    if n_questions > len(candidates) + len(pair_candidates):
        raise ValueError(
            f"n_questions={n_questions} exceeds the {len(candidates) + len(pair_candidates)} "
            f"distinct questions of a world with {n_ent} entities per type; "
            "raise entities_per_type."
        )
    rng.shuffle(candidates)
    rng.shuffle(pair_candidates)
    chosen: list[tuple[Entity, tuple[str, ...]]] = []
    for _ in range(n_questions):
        use_pair = pair_candidates and (not candidates or rng.random() < pair_question_prob)
        chosen.append(pair_candidates.pop() if use_pair else candidates.pop())
    return chosen


class SyntheticWorld:
    """A seeded world of entities, facts and questions with passages and gold answers.

    Build with `SyntheticWorld.generate(seed, n_questions)`; `questions` holds the
    `QuestionItem`s, `entities` maps name → `Entity`. The oracle
    (`synthetic_oracle.Oracle`) judges responses; `perturb_answer` makes the flawed
    "predictions" of the feedback files.
    """

    def __init__(self, *, seed: int, entities: dict[str, Entity], questions: list[QuestionItem],
                 countries: list[str], seas: list[str]):
        self.seed = seed
        self.entities = entities
        self.questions = questions
        self.countries = countries
        self.seas = seas
        self._by_id = {q.qid: q for q in questions}

    def __len__(self) -> int:
        return len(self.questions)

    def question(self, qid: str) -> QuestionItem:
        try:
            return self._by_id[qid]
        except KeyError:
            raise KeyError(
                f"question id {qid!r} is not in this world (ids run "
                f"{self.questions[0].qid}..{self.questions[-1].qid})"
            ) from None

    def of_type(self, etype: str) -> list[Entity]:
        return [e for e in self.entities.values() if e.type == etype]

    # -- generation ---------------------------------------------------------------------

    @classmethod
    def generate(
        cls,
        seed: int,
        n_questions: int,
        *,
        entities_per_type: int | None = None,
        pair_question_prob: float = 0.25,
        join_prob: float = 0.4,
        drop_fact_prob: float = 0.5,
    ) -> "SyntheticWorld":
        """Generate a world and `n_questions` distinct questions from `seed`.

        entities_per_type: people / cities / rivers / companies each (default
            max(8, ⌈0.1·n⌉): each entity is the subject of ~2.5 questions and its name
            recurs in several passages).
        pair_question_prob: chance that a question asks two relations at once.
        join_prob: chance that the gold answer joins its first two facts with ", and ".
        drop_fact_prob: chance that the subject's passage leaves out one fact that is not
            required, so that some true statements are Unverifiable from the passages.
        """
        if n_questions < 1:
            raise ValueError(f"n_questions must be >= 1, got {n_questions}")
        # One RNG for the whole world, drawn in a fixed order (names, entities, facts, question
        # choice, then each question): the helpers below are called in that order.
        rng = random.Random(f"fgrlhf-synthetic-world:{seed}")
        n_ent = entities_per_type or max(8, math.ceil(0.1 * n_questions))
        names = _NameMaker(rng)
        countries = [names.word((2, 3)) for _ in range(max(4, n_ent // 8))]
        seas = [names.word((2, 2)) + " Sea" for _ in range(max(3, n_ent // 12))]
        ents, by_type = _make_entities(rng, names, n_ent)
        _assign_facts(rng, by_type, countries, seas)
        world = cls(seed=seed, entities=ents, questions=[], countries=countries, seas=seas)
        chosen = _choose_questions(rng, by_type, n_questions, n_ent=n_ent, pair_question_prob=pair_question_prob)
        width = max(5, len(str(n_questions)))
        for i, (e, asked) in enumerate(chosen):
            world.questions.append(
                world._make_question(f"synth-{i:0{width}d}", e, asked, rng,
                                     join_prob=join_prob, drop_fact_prob=drop_fact_prob)
            )
        world._by_id = {q.qid: q for q in world.questions}
        return world

    def _entity_passage(self, e: Entity, relations: list[str], rng: random.Random) -> Passage:
        rels = list(relations)
        rng.shuffle(rels)
        facts = tuple(e.fact(r) for r in rels)
        return Passage(e.name, tuple(render_fact(f) for f in facts), facts)

    def _make_question(self, qid: str, e: Entity, asked: tuple[str, ...], rng: random.Random,
                       *, join_prob: float, drop_fact_prob: float) -> QuestionItem:
        # Which facts the required set will need (mirrors derive_required on world facts).
        needed_e = list(asked)
        major_entity: Entity | None = None
        for rel in asked:
            kind = RELATIONS[rel].value_kind
            if kind in ENTITY_KINDS:
                major_entity = self.entities[e.facts[rel]]
                break
        if major_entity is None:
            needed_e.append(next(r for r in DEFINING[e.type] if r not in asked))
        # Subject passage: all its facts, maybe minus one that is not needed.
        rels_e = list(TYPE_RELATIONS[e.type])
        optional = [r for r in rels_e if r not in needed_e]
        if optional and rng.random() < drop_fact_prob:
            rels_e.remove(rng.choice(optional))
        passages = [self._entity_passage(e, rels_e, rng)]
        used = {e.name}
        if major_entity is not None and major_entity.name not in used:
            drel = DEFINING[major_entity.type][0]
            others = [r for r in TYPE_RELATIONS[major_entity.type] if r != drel]
            rels_v = [drel] + rng.sample(others, rng.randint(1, 2))
            passages.append(self._entity_passage(major_entity, rels_v, rng))
            used.add(major_entity.name)
        # Distractors: same-type entities stating the asked relations with other values,
        # the natural source of Wrong-Grounding for a confused policy.
        n_distractors = 3 - len(passages)
        pool = [x for x in self.of_type(e.type) if x.name not in used]
        for d in rng.sample(pool, min(n_distractors, len(pool))):
            others = [r for r in TYPE_RELATIONS[d.type] if r not in asked]
            rels_d = list(asked) + rng.sample(others, min(len(others), rng.randint(1, 2)))
            passages.append(self._entity_passage(d, rels_d, rng))
            used.add(d.name)
        rng.shuffle(passages)
        passages_t = tuple(passages)
        required = derive_required(e.name, e.type, asked, passage_fact_index(passages_t))
        facts = [r.fact for r in required]
        gold = render_answer(facts, join_first=rng.random() < join_prob)
        question = render_question(e.name, asked, rng.randrange(2))
        return QuestionItem(qid, question, e.name, e.type, asked, passages_t, required, gold)

    # -- flawed answers -----------------------------------------------------------------

    def perturb_answer(self, item: QuestionItem, rng: random.Random,
                       ops: tuple[str, ...] | list[str] | None = None) -> str:
        """A flawed version of the gold answer, as an initial policy might write it.

        Applies `ops` in order (default: 0–3 random ones) out of PERTURBATIONS:
        "drop" a required fact; "wrong": swap a value for a wrong one (a distractor's
        value for the same relation when the passages have one); "irrelevant": add a
        passage fact that is not required; "redundant": repeat a fact; "unverifiable":
        add a fact the passages do not state; "incoherent": add shuffled words or a
        truncated last sentence.
        The result is labelled by the oracle, not by this bookkeeping.
        """
        stmts: list[Fact | str] = [r.fact for r in item.required]
        pf = item.passage_facts()
        if ops is None:
            # Irrelevant facts are listed twice: they are the commonest error in QA-FEEDBACK.
            pool = PERTURBATIONS + ("irrelevant",)
            ops = [rng.choice(pool) for _ in range(rng.choice((0, 1, 1, 2, 2, 3)))]
        for op in ops:
            if op not in PERTURBATIONS:
                raise ValueError(f"perturb_answer: unknown op {op!r}; choose from {PERTURBATIONS}")
        truncated: str | None = None
        for op in ops:
            facts_idx = [i for i, s in enumerate(stmts) if isinstance(s, Fact)]
            if op == "drop" and facts_idx:
                stmts.pop(rng.choice(facts_idx))
            elif op == "wrong" and facts_idx:
                i = rng.choice(facts_idx)
                f = stmts[i]
                assert isinstance(f, Fact)
                stmts[i] = f._replace(value=self._wrong_value(f, pf, rng))
            elif op == "irrelevant":
                required_keys = {(r.fact.subject, r.fact.relation) for r in item.required}
                pool = [Fact(s, r, v) for (s, r), (v, _, _) in pf.items() if (s, r) not in required_keys]
                if pool:
                    stmts.insert(rng.randint(0, len(stmts)), rng.choice(pool))
            elif op == "redundant" and facts_idx:
                i = rng.choice(facts_idx)
                stmts.insert(rng.randint(i + 1, len(stmts)), stmts[i])
            elif op == "unverifiable":
                subj = self.entities[item.subject]
                missing = [r for r in TYPE_RELATIONS[subj.type] if (subj.name, r) not in pf]
                if missing:
                    rel = rng.choice(missing)
                    f = Fact(subj.name, rel, self._random_value(RELATIONS[rel].value_kind, rng))
                else:  # a fact about an entity no passage mentions
                    stranger = rng.choice([x for x in self.entities.values()
                                           if x.name not in {p.title for p in item.passages}])
                    f = stranger.fact(rng.choice(list(stranger.facts)))
                stmts.insert(rng.randint(0, len(stmts)), f)
            elif op == "incoherent":
                words = render_fact(rng.choice(_facts_of(item))).rstrip(".").split()
                if rng.random() < 0.5 and truncated is None:
                    truncated = " ".join(words[: max(2, len(words) // 2)])
                else:
                    original = list(words)
                    # Reshuffle until the words no longer read as a statement (a shuffle
                    # can give back the sentence, or another grammatical one).
                    while words == original or parse_clause(" ".join(words)) is not None:
                        rng.shuffle(words)
                    stmts.insert(rng.randint(0, len(stmts)), " ".join(words) + ".")
        text = render_statements(stmts, rng, join_prob=0.3)
        if truncated is not None:
            text = (text + " " + truncated).strip()
        return text

    def _wrong_value(self, f: Fact, pf: dict, rng: random.Random) -> str:
        rel = RELATIONS[f.relation]
        from_passages = [v for (s, r), (v, _, _) in pf.items() if r == f.relation and v != f.value]
        if from_passages and rng.random() < 0.7:
            return rng.choice(from_passages)
        for _ in range(100):
            v = self._random_value(rel.value_kind, rng)
            if v != f.value:
                return v
        raise RuntimeError("could not draw a wrong value")

    def _random_value(self, kind: str, rng: random.Random) -> str:
        if kind in ENTITY_KINDS:
            return rng.choice(self.of_type(kind)).name
        if kind == "country":
            return rng.choice(self.countries)
        if kind == "sea":
            return rng.choice(self.seas)
        if kind == "year":
            return str(rng.randint(1100, 2020))
        if kind == "number":
            return _fmt_number(rng.randint(5, 3000) * (1000 if rng.random() < 0.5 else 1))
        if kind == "occupation":
            return rng.choice(OCCUPATIONS)
        if kind == "product":
            return rng.choice(PRODUCTS)
        raise ValueError(kind)


def _facts_of(item: QuestionItem) -> list[Fact]:
    return [f for p in item.passages for f in p.facts]


def render_answer(facts: list[Fact], *, join_first: bool = False) -> str:
    """Sentences for `facts` in order; with join_first the first two share a sentence."""
    if join_first and len(facts) >= 2:
        head = join_clauses([render_core(facts[0]), render_core(facts[1])])
        return " ".join([head] + [render_fact(f) for f in facts[2:]])
    return " ".join(render_fact(f) for f in facts)


def render_statements(stmts: list, rng: random.Random, *, join_prob: float) -> str:
    """Facts and raw strings → text; adjacent facts are sometimes joined by ", and "."""
    out: list[str] = []
    i = 0
    while i < len(stmts):
        s = stmts[i]
        if isinstance(s, Fact):
            if i + 1 < len(stmts) and isinstance(stmts[i + 1], Fact) and rng.random() < join_prob:
                out.append(join_clauses([render_core(s), render_core(stmts[i + 1])]))
                i += 2
                continue
            out.append(render_fact(s))
        else:
            out.append(s)
        i += 1
    return " ".join(out)
