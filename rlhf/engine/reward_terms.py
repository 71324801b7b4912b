"""Composed rewards: the policy's reward as a weighted sum of terms, each the reward model or a named reward
with parameters (docs/engine.md, "Composed rewards").

A reward spec is a JSON list of terms::

    [{"reward": "reward_model", "weight": 1.0},
     {"reward": "banned_words", "weight": 0.5, "params": {"words": ["very", "lovely"]}},
     {"reward": "length", "weight": 0.2, "params": {"max": 30}},
     {"reward": "mypkg.rewards:my_reward", "weight": 1.0}]

`reward` is one of:

- ``reward_model``: the round's reward model (its score);
- a parametrised built-in of `BUILTINS` (``banned_words``, ``length``, ``format``, ``json_schema``,
  ``exact_match``, ``accuracy``, ``iou``), its parameters checked here;
- a name of `rewards.REWARDS` (the demo world's rewards, ``iou_reward``, …), which take no parameters;
- a user function by dotted path, ``package.module:function``, with TRL's reward-function signature
  ``(prompts, completions, **kwargs) -> list[float]``; its `params` are passed as keyword arguments on every
  call.

`parse_terms` checks a spec without importing user code (the web tier calls it on every save); `load_term`
imports a user function (engine processes only); `dry_run` calls every term but the reward model once on
one sample and checks that it returns one finite number per completion. Every message names the term
(``reward[2]``) and the field. Stdlib only (json, re): the web tier imports this module.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from .config_base import ConfigError, check
from .registry import Registry
from .rewards import REWARDS, RewardFn, as_text, normalize

REWARD_MODEL = "reward_model"
_DOTTED = re.compile(r"^[A-Za-z_][\w.]*[:.][A-Za-z_]\w*$")

BUILTINS: Registry[Callable[..., RewardFn]] = Registry("parametrised reward")
"""Name → factory ``(**params) -> reward function``; the factory's keyword arguments are the term's
parameters (`parse_terms` checks names, types and required ones against its signature)."""


@dataclass
class Term:
    """One term of a composed reward: `weight` × `reward`(`params`)."""

    reward: str
    weight: float = 1.0
    params: dict = field(default_factory=dict)
    label: str = ""  # unique name of the term in metrics: the reward's name, "#2" for a repeated one

    def __post_init__(self):
        self.label = self.label or self.reward

    @property
    def is_user_function(self) -> bool:
        return self.reward != REWARD_MODEL and self.reward not in BUILTINS and self.reward not in REWARDS

    def to_json(self) -> dict:
        out = {"reward": self.reward, "weight": self.weight}
        if self.params:
            out["params"] = self.params
        return out


# ---- parsing and checking ------------------------------------------------------------------------------


def parse_terms(spec, where: str = "reward") -> list[Term]:
    """The terms of a reward spec (a JSON list, or its JSON text), checked: each `reward` known or a dotted
    path, `weight` a finite number, `params` an object the reward accepts. ConfigError names the term."""
    if isinstance(spec, str):
        try:
            spec = json.loads(spec) if spec.strip() else []
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: not valid JSON ({e})") from None
    check(isinstance(spec, list), f"{where}: expected a list of terms like "
          '[{"reward": "reward_model", "weight": 1}], got ' + type(spec).__name__)
    terms, seen = [], {}
    for i, raw in enumerate(spec):
        at = f"{where}[{i}]"
        check(isinstance(raw, dict), f"{at}: expected an object with 'reward', 'weight' and 'params', got {raw!r}")
        unknown = sorted(set(raw) - {"reward", "weight", "params"})
        check(not unknown, f"{at}: unknown key(s) {unknown}; a term has 'reward', 'weight' and 'params'")
        name = raw.get("reward")
        check(isinstance(name, str) and bool(name.strip()), f"{at}.reward: give a reward name (one of "
              f"{known_names()}) or a dotted path 'package.module:function'")
        name = name.strip()
        weight = raw.get("weight", 1.0)
        check(isinstance(weight, int | float) and not isinstance(weight, bool) and math.isfinite(weight),
              f"{at}.weight: {weight!r} is not a number")
        params = raw.get("params") or {}
        check(isinstance(params, dict), f"{at}.params: expected an object of parameters, got {params!r}")
        term = Term(name, float(weight), params)
        if name == REWARD_MODEL:
            check(not params, f"{at}.params: the reward model takes no parameters")
        elif name in BUILTINS:
            _check_params(BUILTINS[name], params, f"{at}.params", name)
            try:
                BUILTINS[name](**params)  # the factory checks values (a pattern that compiles, a valid schema)
            except ConfigError as e:
                raise ConfigError(f"{at}.params: {e}") from None
        elif name in REWARDS:
            check(not params, f"{at}.params: {name} takes no parameters (parametrised rewards: "
                  f"{sorted(BUILTINS)})")
        else:
            check(bool(_DOTTED.match(name)), f"{at}.reward: {name!r} is neither a known reward ({known_names()}) "
                  "nor a dotted path 'package.module:function'")
        seen[name] = seen.get(name, 0) + 1
        term.label = name if seen[name] == 1 else f"{name}#{seen[name]}"
        terms.append(term)
    return terms


def known_names() -> list[str]:
    """Every reward a term may name without a dotted path."""
    return [REWARD_MODEL, *sorted(BUILTINS), *sorted(n for n in REWARDS if n not in BUILTINS)]


# A parameters example per built-in, for the Training page's editor and the docs.
EXAMPLES = {
    "banned_words": {"words": ["very", "lovely"], "penalty": 1},
    "length": {"min": 3, "max": 30},
    "format": {"pattern": "^[A-Z].*[.]$"},
    "json_schema": {"schema": {"type": "object", "required": ["answer"]}},
    "accuracy": {"contains": True},
}


def describe_builtins() -> list[dict]:
    """Name, parameters (with defaults), the first paragraph of the docstring and a parameters example of
    every parametrised built-in, for the editor's help."""
    out = []
    for name in sorted(BUILTINS):
        factory = BUILTINS[name]
        params = [p.name if p.default is inspect.Parameter.empty else f"{p.name}={json.dumps(p.default)}"
                  for p in inspect.signature(factory).parameters.values()]
        doc = " ".join((factory.__doc__ or "").split("\n\n")[0].split())
        out.append({"name": name, "params": ", ".join(params), "doc": doc,
                    "example": json.dumps(EXAMPLES[name]) if name in EXAMPLES else ""})
    return out


def formula(terms: list[Term]) -> str:
    """A spec as people read it: ``reward_model + 0.5 × banned_words(words=["very"])``."""
    parts = []
    for t in terms:
        args = ", ".join(f"{k}={json.dumps(v)}" for k, v in t.params.items())
        text = t.reward + (f"({args})" if args else "")
        weight = f"{t.weight:g}"
        parts.append(text if weight == "1" else f"{weight} × {text}")
    return " + ".join(parts).replace("+ -", "− ") or "nothing"


def _check_params(factory, params: dict, at: str, name: str) -> None:
    sig = inspect.signature(factory)
    accepted = [p for p in sig.parameters.values() if p.kind == p.KEYWORD_ONLY]
    names = [p.name for p in accepted]
    unknown = sorted(set(params) - set(names))
    check(not unknown, f"{at}: {name} has no parameter(s) {unknown}; its parameters: {names}")
    missing = [p.name for p in accepted if p.default is inspect.Parameter.empty and p.name not in params]
    check(not missing, f"{at}: {name} needs {missing}")


def legacy_terms(*, reward_model: bool, verifiable: str = "", weight: float = 1.0) -> list[Term]:
    """The terms of the older two-field form: the reward model (weight 1) and a verifiable reward × weight."""
    terms = [Term(REWARD_MODEL, 1.0)] if reward_model else []
    if verifiable:
        terms.append(Term(verifiable, weight))
    return terms


def uses_reward_model(terms: list[Term]) -> bool:
    return any(t.reward == REWARD_MODEL for t in terms)


# ---- loading and the dry run (engine processes) ---------------------------------------------------------


def load_term(term: Term, where: str = "reward") -> RewardFn:
    """The callable of a term other than the reward model; a user function is imported here. ConfigError
    says what failed (the module does not import, no such attribute, not callable)."""
    if term.reward in BUILTINS:
        return BUILTINS[term.reward](**term.params)
    if term.reward in REWARDS:
        return REWARDS[term.reward]
    module, _, attr = term.reward.rpartition(":") if ":" in term.reward else term.reward.rpartition(".")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except ImportError as e:
        raise ConfigError(f"{where}.reward: {term.reward!r} does not import: {type(e).__name__}: {e}") from None
    except AttributeError:
        raise ConfigError(f"{where}.reward: module {module!r} has no {attr!r}") from None
    except Exception as e:  # the module raised while importing
        raise ConfigError(f"{where}.reward: importing {module!r} raised {type(e).__name__}: {e}") from None
    check(callable(fn), f"{where}.reward: {term.reward!r} is a {type(fn).__name__}, not a function")
    if term.params:
        params = dict(term.params)

        def with_params(prompts, completions, **kwargs):
            return fn(prompts, completions, **kwargs, **params)

        return with_params
    return fn


def check_values(values, n: int, what: str) -> list[float]:
    """`values` as n finite floats, else ConfigError naming `what` and the problem."""
    try:
        values = list(values)
    except TypeError:
        raise ConfigError(f"{what} returned {type(values).__name__}, not a list of {n} number(s)") from None
    check(len(values) == n, f"{what} returned {len(values)} value(s) for {n} completion(s): return one float "
          "per completion")
    out = []
    for i, v in enumerate(values):
        try:  # a Python, numpy or torch number; not a string, a bool or None
            if isinstance(v, str | bytes | bool) or v is None:
                raise TypeError
            v = float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{what} returned {v!r} at index {i}: return one float per completion") from None
        check(math.isfinite(v), f"{what} returned {v} at index {i}: rewards must be finite")
        out.append(v)
    return out


def dry_run_sample(record: dict, completion: str | None = None) -> dict:
    """The dry run's sample from a prompt-set record (``prompt``, ``images``, ``ground_truth``, ``reference``):
    its answer is ``completion``, else the record's (first) reference, else a stand-in answer."""
    reference = record.get("reference")
    references = [reference] if isinstance(reference, str) else list(reference or [])
    if completion is None:
        completion = references[0] if references else "an answer"
    return {"prompt": record.get("prompt", ""), "completion": completion, "images": record.get("images") or [],
            "ground_truth": record.get("ground_truth"), "reference": reference}


def dry_run(terms: list[Term], sample: dict, where: str = "reward") -> dict[str, float]:
    """Call every term but the reward model once on `sample` (``prompt``, ``completion``, ``images``,
    ``ground_truth``, optional ``reference``) and check its answer: one finite number. Returns each term's
    value; ConfigError names the term that failed and how."""
    out = {}
    kwargs = {"images": [sample.get("images") or []], "ground_truth": [sample.get("ground_truth")]}
    if sample.get("reference") is not None:
        kwargs["reference"] = [sample["reference"]]
    for i, term in enumerate(terms):
        if term.reward == REWARD_MODEL:
            continue
        at = f"{where}[{i}]"
        fn = load_term(term, at)
        try:
            values = fn([sample.get("prompt", "")], [sample.get("completion", "")], **kwargs)
        except Exception as e:
            raise ConfigError(f"{at} ({term.reward}) raised {type(e).__name__} on a one-sample dry run: {e}") from None
        out[term.label] = check_values(values, 1, f"{at} ({term.reward})")[0]
    return out


# ---- the built-in parametrised rewards ------------------------------------------------------------------


def _strings(value, at: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    check(isinstance(value, list) and bool(value) and all(isinstance(v, str) and v.strip() for v in value),
          f"{at}: expected a list of non-empty strings, got {value!r}")
    return value


def _number(value, at: str, *, minimum: float | None = None) -> float:
    check(isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value),
          f"{at}: {value!r} is not a number")
    check(minimum is None or value >= minimum, f"{at}: must be at least {minimum:g}, not {value}")
    return float(value)


@BUILTINS.register
def banned_words(*, words, penalty=1.0, case_sensitive=False) -> RewardFn:
    """−penalty per occurrence of a banned word or phrase. Whole words only ("cat" does not match
    "concatenate"); a phrase matches across any whitespace; case-insensitive unless `case_sensitive`."""
    words = _strings(words, "words")
    penalty = _number(penalty, "penalty", minimum=0)
    check(isinstance(case_sensitive, bool), "case_sensitive: expected true or false")
    alternatives = "|".join(r"\s+".join(map(re.escape, w.split())) for w in sorted(words, key=len, reverse=True))
    pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", 0 if case_sensitive else re.IGNORECASE)

    def reward(prompts, completions, **kwargs) -> list[float]:
        return [-penalty * len(pattern.findall(as_text(c))) for c in completions]

    return reward


@BUILTINS.register
def length(*, min=0, max=None, unit="words") -> RewardFn:
    """1 inside the target range of words, falling linearly to 0 as far outside it as the bound itself
    (an answer of 45 words against max 30 scores 0.5; an empty one against min 10 scores 0). `unit`:
    'words' (whitespace-separated) or 'characters'."""
    lo = _number(min, "min", minimum=0)
    hi = None if max is None else _number(max, "max", minimum=1)
    check(hi is None or hi >= lo, f"max={max} is below min={min}")
    check(unit in ("words", "characters"), f"unit: 'words' or 'characters', not {unit!r}")

    def size(text: str) -> int:
        return len(text.split()) if unit == "words" else len(text.strip())

    def score(n: int) -> float:
        if n < lo:
            return 1.0 - (lo - n) / lo
        if hi is not None and n > hi:
            return 1.0 - (n - hi) / hi if n < 2 * hi else 0.0
        return 1.0

    def reward(prompts, completions, **kwargs) -> list[float]:
        return [score(size(as_text(c))) for c in completions]

    return reward


@BUILTINS.register(name="format")
def format_match(*, pattern, full=True) -> RewardFn:
    """1 when the answer matches the regular expression `pattern` (the whole stripped answer when `full`,
    anywhere in it otherwise), else 0."""
    check(isinstance(pattern, str) and pattern != "", "pattern: give a regular expression")
    try:
        regex = re.compile(pattern, re.DOTALL)
    except re.error as e:
        raise ConfigError(f"pattern: {pattern!r} is not a regular expression: {e}") from None
    check(isinstance(full, bool), "full: expected true or false")
    match = regex.fullmatch if full else regex.search

    def reward(prompts, completions, **kwargs) -> list[float]:
        return [float(match(as_text(c).strip()) is not None) for c in completions]

    return reward


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


@BUILTINS.register
def json_schema(*, schema) -> RewardFn:
    """1 when the answer is JSON (a ```json fence around it is allowed) that validates against the JSON
    Schema `schema`, else 0."""
    import jsonschema

    check(isinstance(schema, dict), f"schema: expected a JSON Schema object, got {schema!r}")
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise ConfigError(f"schema: not a valid JSON Schema: {e.message}") from None
    validator = cls(schema)

    def valid(text: str) -> bool:
        text = text.strip()
        fenced = _FENCE.match(text)
        try:
            value = json.loads(fenced.group(1) if fenced else text)
        except ValueError:
            return False
        return validator.is_valid(value)

    def reward(prompts, completions, **kwargs) -> list[float]:
        return [float(valid(as_text(c))) for c in completions]

    return reward


def references(kwargs: dict, n: int, keys=("answers", "answer", "reference")) -> list[list[str]]:
    """Reference answers per completion: the `reference` column, else the first of `keys` in each
    `ground_truth`. ValueError when a completion has none."""
    refs = kwargs.get("reference")
    gts = kwargs.get("ground_truth") or [None] * n
    out = []
    for i in range(n):
        r = refs[i] if refs is not None else None
        gt = gts[i]
        if isinstance(gt, str):
            gt = json.loads(gt)
        if r is None and isinstance(gt, dict):
            r = next((gt[k] for k in keys if gt.get(k) not in (None, "", [])), None)
        if r is None:
            raise ValueError(f"completion {i} has no reference: give a 'reference' column or ground_truth with "
                             f"one of {list(keys)}")
        out.append([r] if isinstance(r, str) else [str(x) for x in r])
    return out


@BUILTINS.register
def exact_match() -> RewardFn:
    """1 when the normalised answer (lower case, words only) equals a normalised reference, else 0 (VQA
    exact match). References: the `reference` column, else ground_truth `answers`, `answer` or `reference`."""

    def reward(prompts, completions, **kwargs) -> list[float]:
        refs = references(kwargs, len(completions))
        return [float(any(normalize(as_text(c)) == normalize(r) for r in rs)) for c, rs in zip(completions, refs,
                                                                                              strict=True)]

    return reward


@BUILTINS.register
def accuracy(*, contains=False) -> RewardFn:
    """Classification accuracy (Visual-RFT): 1 when the answer names the ground-truth class — the whole
    normalised answer, or with `contains` the class as whole words anywhere in it — else 0. The class:
    ground_truth `label`, `class` or `answer`, else the `reference` column."""
    check(isinstance(contains, bool), "contains: expected true or false")

    def hit(answer: str, label: str) -> bool:
        answer, label = normalize(answer), normalize(label)
        return answer == label or (contains and bool(label) and f" {label} " in f" {answer} ")

    def reward(prompts, completions, **kwargs) -> list[float]:
        labels = references(kwargs, len(completions), keys=("label", "class", "answer"))
        return [float(any(hit(as_text(c), r) for r in rs)) for c, rs in zip(completions, labels, strict=True)]

    return reward


@BUILTINS.register
def iou() -> RewardFn:
    """IoU of the answer's box with the ground-truth box (`rewards.iou_reward`, Visual-RFT's IoU reward)."""
    return REWARDS["iou_reward"]
