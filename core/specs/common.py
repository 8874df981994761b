"""What every spec shares: names, URIs, loading and merging YAML, resources, model references."""

from __future__ import annotations

import math
import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer, model_validator

from mlyard.core.errors import SpecError
from mlyard.core.uris import parse_uri

# (one character, or 2-50 that neither start nor end with '-'; written without `](`, which the Prefect UI's
# Markdown would read as a link and mangle in the error it shows for a bad name)
NAME_PATTERN = r"^([a-z0-9]|[a-z0-9][a-z0-9-]{0,48}[a-z0-9])$"
# What each pattern a spec uses asks for, in words: the schema carries them beside the pattern
# (PATTERN_WORDS_KEY), and the embedded Prefect server says them instead of the regular expression when a
# value does not match (mlyard/prefect_server.readable_patterns): the Run form's messages read as words.
PATTERN_WORDS_KEY = "x-mlyard-pattern"
PATTERN_WORDS = {NAME_PATTERN: "lowercase letters, digits and '-' (not first or last), at most 50 characters, "
                               "e.g. digits-sgd",
                 r"^[\w.-]+/[\w.-]+$": "a deployment as FLOW/DEPLOYMENT, e.g. train/train-gpu"}
# Katib's default metric filter: `name=value`, one or more per line.
KATIB_METRIC_PATTERN = r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)"


def form_schema(schema: dict[str, Any], cls: type) -> None:
    """A spec's JSON schema shaped for the Prefect UI's Run form, without changing what validates.

    - An optional scalar or list (`str | None = None`, `list[str] | None = None`) becomes its plain type
      with no default: the form shows a plain input (a list of inputs) instead of a `str | None` toggle
      reading 'Property is type "None"'. Prefect's own parameter check still accepts null (a property
      that is not required and has no default is read as nullable), and the model still does.
    - A mapping (`dict[str, str]`: hyperparameters, datasets, tags) is offered as a list of key and value
      pairs first, which the form shows as inputs, or as a JSON mapping: Prefect's check accepts both,
      so the YAML's, the CLI's and `prefect deployment run --params`' mappings pass as before, and the
      model reads the pairs back into the mapping (SpecModel._mappings_from_pairs).
    - A list of numbers or words named in `FORM_LISTS` (a class attribute: a hyperparameter's `values`) is
      offered as inputs of text first, or as a JSON list (a list of mixed types alone would show a JSON
      editor per item); like a none choice, it is left out of a dump when it is None.
    - An optional nested model (`EarlyStoppingSpec | None`) stays a choice of none or the model. The none
      choice comes first, the field's default, as an empty object (`{}`) rather than `type: null`: the form
      then shows nothing to fill under it, not the text 'Property is type "None"' (and a type-less choice
      would show a JSON editor). The model reads `{}` as None, and a spec leaves such a field out of its
      dump when it is None, so what mlyard sends passes Prefect's check. `FORM_NONE` (a class attribute,
      field -> label) names the choice for what leaving it out means ("Off", "Use template").
    - `FORM_FIRST` (a class attribute) puts what a person fills first at the top of the form."""
    props: dict[str, Any] = schema.get("properties", {})
    for name, prop in props.items():
        if _is_mapping(prop):
            props[name] = _pairs_or_mapping(prop)
            continue
        options = prop.get("anyOf")
        if not options or len(options) != 2 or {"type": "null"} not in options or prop.get("default", None) is not None:
            continue
        (kept,) = [o for o in options if o != {"type": "null"}]
        if name in getattr(cls, "FORM_NONE", {}):  # a nested model stays a choice: say what leaving it out means
            prop["anyOf"] = [{"title": cls.FORM_NONE[name], "type": "object", "properties": {},  # type: ignore[attr-defined]
                              "additionalProperties": False}, kept]
            prop["default"] = {}
            continue
        if "type" not in kept or kept["type"] == "object" or "enum" in kept or "const" in kept:
            continue  # Prefect's check would not read it as nullable (a nested model), or null would still
            # fail it (an enum applies to every type; a string's pattern or a list's items do not)
        props[name] = {**{k: v for k, v in prop.items() if k not in ("anyOf", "default")}, **kept}
    for name, prop in props.items():  # a list of numbers or words: inputs of text, or a JSON list
        if name in getattr(cls, "FORM_LISTS", ()) and prop.get("type") == "array" and _scalars(prop.get("items", {}).get("anyOf")):
            props[name] = {**{k: v for k, v in prop.items() if k not in ("type", "items")},
                           "anyOf": [{"type": "array", "title": "List", "items": {
                                         "type": "string", "description": "One value, e.g. 0.01 or sgd."}},
                                     {"type": "array", "title": "JSON", "items": prop["items"]}]}
    for prop in props.values():
        if prop.get("pattern") in PATTERN_WORDS:
            prop[PATTERN_WORDS_KEY] = PATTERN_WORDS[prop["pattern"]]
    first = [k for k in getattr(cls, "FORM_FIRST", ()) if k in props]
    schema["properties"] = {**{k: props[k] for k in first}, **{k: v for k, v in props.items() if k not in first}}
    _bound_integers(schema["properties"])


def _bound_integers(node: Any) -> None:
    """Every integer and number in the schema bounded to ±2^63 (SpecModel._numbers_that_fit), so that
    Prefect's own parameter check (the Run form, the API) refuses one that its store could not read back,
    before a run is made with it."""
    if isinstance(node, dict):
        if node.get("type") in ("integer", "number"):
            if "minimum" not in node and "exclusiveMinimum" not in node:
                node["minimum"] = -INT64_LIMIT
            if "maximum" not in node and "exclusiveMaximum" not in node:
                node["maximum"] = INT64_LIMIT - 1
        for value in node.values():
            _bound_integers(value)
    elif isinstance(node, list):
        for value in node:
            _bound_integers(value)


def _scalars(options: Any) -> bool:
    return isinstance(options, list) and len(options) > 1 and all(
        o.get("type") in ("string", "integer", "number") for o in options)


def _is_mapping(prop: dict[str, Any]) -> bool:
    return prop.get("type") == "object" and not prop.get("properties") and isinstance(prop.get("additionalProperties"), dict)


def _pairs_or_mapping(prop: dict[str, Any]) -> dict[str, Any]:
    value = prop["additionalProperties"]
    if value.get("type") not in ("string", "integer", "number", "boolean"):  # several types: typed as text,
        value_input = {"type": "string", "description": "A number or true/false is read as one."}  # read back
    else:
        value_input = value
    pair = {"type": "object", "title": "Pair", "additionalProperties": False, "required": ["key", "value"],
            "properties": {"key": {"type": "string", "title": "Key", "minLength": 1},
                           "value": {**value_input, "title": "Value"}}}
    return {**{k: v for k, v in prop.items() if k not in ("type", "additionalProperties")},
            "anyOf": [{"type": "array", "title": "Key and value", "items": pair},
                      {"type": "object", "title": "JSON", "additionalProperties": value}]}


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _typed(text: Any) -> Any:
    """A form's text as the value it reads as: 3 an int, 0.01 or 1e-3 a float, true/false a bool."""
    if not isinstance(text, str):
        return text
    word = text.strip()
    if word.lower() in ("true", "false"):
        return word.lower() == "true"
    if re.fullmatch(r"[+-]?\d+", word):
        return int(word)
    return float(word) if _NUMBER.fullmatch(word) else text


def _from_pairs(field: str, pairs: list[Any], typed: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, pair in enumerate(pairs):
        if not isinstance(pair, dict) or set(pair) != {"key", "value"} or not isinstance(pair["key"], str):
            raise ValueError(f"{field}[{i}]: a pair is a key and a value, e.g. {{key: lr, value: 0.01}} (got {pair!r}); "
                             f"or give {field} as a mapping")
        if pair["key"] in out:
            raise ValueError(f"{field}: key {pair['key']!r} is given twice")
        out[pair["key"]] = _typed(pair["value"]) if typed else pair["value"]
    return out


class SpecModel(BaseModel):
    """The base of every spec: its JSON schema is shaped for the Prefect UI's Run form (form_schema)."""

    model_config = ConfigDict(json_schema_extra=form_schema)

    @model_validator(mode="before")
    @classmethod
    def _mappings_from_pairs(cls, data: Any) -> Any:
        """A mapping field given as the Run form's pairs ([{key, value}, ...]) is read as the mapping; a
        value of a mapping that also takes numbers or booleans is read as one when it is one."""
        if not isinstance(data, dict):
            return data
        choices = getattr(cls, "FORM_NONE", {})
        if any(data.get(name) == {} for name in choices):  # the Run form's none choice (form_schema)
            data = {k: None if k in choices and v == {} else v for k, v in data.items()}
        return _read_pairs(cls, data, strict=True)

    @model_serializer(mode="wrap")
    def _without_none_choices(self, handler: Any) -> Any:
        """A none choice (FORM_NONE) or a list of choices (FORM_LISTS) that is None is left out: Prefect's check
        takes its absence, not null."""
        data = handler(self)
        if isinstance(data, dict):
            for name in (*getattr(type(self), "FORM_NONE", {}), *getattr(type(self), "FORM_LISTS", ())):
                if name in data and data[name] is None:
                    del data[name]
        return data

    @model_validator(mode="after")
    def _numbers_that_fit(self) -> "SpecModel":
        """Every number a spec holds can be stored and read back (Prefect keeps a run's parameters, and
        its listings broke on an integer past 64 bits): within ±2^63, no inf or NaN."""
        for name in type(self).model_fields:
            found = unstorable_number(getattr(self, name), name)
            if found is not None:
                path, value = found
                raise ValueError(f"{path} = {value!r} is out of range: numbers must be finite and lie within "
                                 f"±2^63 ({-INT64_LIMIT} to {INT64_LIMIT - 1}); give a smaller value, or text "
                                 "in quotes")
        return self


INT64_LIMIT = 2**63


def unstorable_number(value: Any, path: str) -> tuple[str, Any] | None:
    """The first number in `value` (through mappings and lists; a nested spec checks its own) outside what
    every path in keeps the same: an integer outside a 64-bit store's ±2^63, a float that is not finite or
    lies beyond ±2^63 (Prefect's schema check, which cannot tell 1e20 from 10**20, bounds both), with its path."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if -INT64_LIMIT <= value < INT64_LIMIT else (path, value)
    if isinstance(value, float):
        return None if math.isfinite(value) and -INT64_LIMIT <= value <= INT64_LIMIT else (path, value)
    items: Any = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, item in items:
        found = unstorable_number(item, f"{path}.{key}" if isinstance(value, dict) else f"{path}[{key}]")
        if found is not None:
            return found
    return None


def _typed_values(annotation: Any) -> bool:
    """A mapping whose values may be numbers or booleans (hyperparameters), not text only (datasets)."""
    return (typing.get_args(annotation)[1:] or (Any,))[0] is not str


def mappings_from_pairs(model: type[BaseModel], spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` as it was given (a run's parameters, as Prefect keeps them), with each mapping that the Run
    form gave as key and value pairs read as the model reads it, nested specs too (a tuning's
    training): what a run's record shows. Pairs it cannot read stay as given."""
    return _read_pairs(model, spec, strict=False)


def mappings_as_pairs(model: type[BaseModel], spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` (as JSON) with each mapping as the Run form's key and value pairs, nested specs too: what a
    deployment's parameters hold for its Run form to start from (a mapping would open the form's JSON editor)."""
    out = dict(spec)
    for name, field in model.model_fields.items():
        value = spec.get(name)
        if isinstance(value, dict) and typing.get_origin(field.annotation) is dict:
            typed = _typed_values(field.annotation)  # the form's value is text, read back as a number or a bool
            out[name] = [{"key": k, "value": (str(v).lower() if isinstance(v, bool) else str(v)) if typed else v}
                         for k, v in value.items()]
        elif isinstance(value, dict):
            nested = [a for a in (field.annotation, *typing.get_args(field.annotation))
                      if isinstance(a, type) and issubclass(a, BaseModel)]
            if nested:
                out[name] = mappings_as_pairs(nested[0], value)
    return out


def _read_pairs(model: type[BaseModel], data: dict[str, Any], strict: bool) -> dict[str, Any]:
    """`data` with the model's mapping fields given as pairs read as mappings. Strict (validating the
    model): bad pairs are an error, and nested models read their own. Not strict (a stored record): bad
    pairs stay as they are, and nested specs are read here."""
    out = data
    for name, field in model.model_fields.items():
        value = data.get(name)
        if isinstance(value, list) and typing.get_origin(field.annotation) is dict:
            try:
                out = {**out, name: _from_pairs(name, value, typed=_typed_values(field.annotation))}
            except ValueError:
                if strict:
                    raise
        elif not strict and isinstance(value, dict):
            nested = [a for a in (field.annotation, *typing.get_args(field.annotation))
                      if isinstance(a, type) and issubclass(a, BaseModel)]
            if nested:
                out = {**out, name: _read_pairs(nested[0], value, strict=False)}
    return out


class Resources(SpecModel):
    """What a training needs from the pool. Used by the Kubernetes pool; the local pool runs on this machine."""

    model_config = ConfigDict(extra="forbid")

    cpu: float | None = Field(default=None, gt=0, description="CPU cores (request and limit), e.g. 4 or 0.5.")
    memory: str | None = Field(
        default=None, pattern=r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$",
        description="Memory (request and limit) in Kubernetes units, e.g. 16Gi.",
    )
    gpu_count: int = Field(default=0, ge=0, le=16, description="GPUs per node (nvidia.com/gpu).")
    gpu_type: str | None = Field(
        default=None, description="GPU type, matched against the node label nvidia.com/gpu.product, e.g. NVIDIA-A100-SXM4-80GB."
    )
    data_storage: str | None = Field(
        default=None, pattern=r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$",
        description="Data storage of each node in Kubernetes units, e.g. 300Gi: where inputs are staged, mounted at "
        "/mlyard/data and deleted with the pod. Default: the pool's (50Gi on the gpu pool).",
    )


def compiled_regex(pattern: str, min_groups: int, too_few: str) -> re.Pattern:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"regex {pattern!r} does not compile: {exc}") from exc
    if compiled.groups < min_groups:
        raise ValueError(too_few)
    return compiled


def check_uri(field: str, uri: str) -> None:
    try:
        parse_uri(uri, field)
    except SpecError as exc:
        raise ValueError(exc.expected) from None


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The fields of the model found at `loc` inside `model` (through lists, dicts and optionals), so that an
    unknown nested field is told what its own model allows."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            break
        if isinstance(part, str) and part in current.model_fields:
            current = current.model_fields[part].annotation
        while not (isinstance(current, type) and issubclass(current, BaseModel)) and typing.get_args(current):
            current = next((a for a in typing.get_args(current) if isinstance(a, type) and issubclass(a, BaseModel)),
                           typing.get_args(current)[-1])
    return list(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else \
        list(model.model_fields)


def load_spec(model: type[BaseModel], data: Any, source: str = "spec"):
    """Validate `data` as `model`, turning pydantic's report into one SpecError naming every bad field."""
    if not isinstance(data, dict):
        raise SpecError(source, type(data).__name__, f"a mapping of {model.__name__} fields")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(spec)"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = f"unknown field; allowed: {', '.join(_fields_at(model, err['loc'][:-1]))}"
            elif err["type"] == "missing":
                msg = "is required"
            value = err.get("input")
            shown = "" if err["type"] == "missing" or isinstance(value, dict) else f" (got {value!r})"
            problems.append(f"{loc}: {msg}{shown}")
        field = ".".join(str(p) for p in exc.errors()[0]["loc"])
        error = SpecError(field, data.get(field.split(".")[0]), "; ".join(problems))
        error.args = (f"invalid {model.__name__} in {source}:\n  " + "\n  ".join(problems),)
        raise error from None


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` merged in, mapping by mapping: {a: {b: 1}} + {a: {c: 2}} = {a: {b: 1, c: 2}}."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def with_overrides(spec: BaseModel, overrides: dict[str, Any], source: str = "overrides"):
    """A validated copy of `spec` with `overrides` merged in (see `merged`)."""
    if not overrides:
        return spec
    return load_spec(type(spec), merged(spec.model_dump(mode="json", exclude_unset=True), overrides), source=source)


def load_spec_file(model: type[BaseModel], path: str | Path):
    """Read a YAML (or JSON) spec file."""
    p = Path(path)
    if not p.is_file():
        raise SpecError("file", str(path), "a YAML spec file that exists")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise SpecError("file", str(path), f"a YAML file that parses ({exc})") from exc
    return load_spec(model, data, source=str(path))


_MODEL_REF = re.compile(r"^[A-Za-z0-9][\w.-]*(@[\w-]+|/\d+)$")


def is_mlflow_uri(model: str) -> bool:
    """models:/name/version, models:/name@alias or runs:/run_id/path."""
    return re.match(r"^(models|runs):/", model) is not None


def is_registry_ref(model: str) -> bool:
    """`name@alias` or `name/version` (a path must then be written ./dir or file://...)."""
    return "://" not in model and bool(_MODEL_REF.match(model))

