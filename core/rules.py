"""Rules: which W&B events earn which action, and the arguments a payload may carry.

A rule is data (adnanh/webhook's idea): event types, optional alias and name globs, an
action, and declared arguments with types and bounds. Anything a payload sends that its
rule did not declare is refused before anything is queued.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.errors import ConfigError, Rejection
from core.event import EVENT_TYPES, Event, canonical_event_type
from core.names import text_problem
from core.sections import ARCHS
from core.tables import Table

ACTIONS = ("download", "retrain", "deploy", "command")
ARTIFACT_ACTIONS = frozenset({"download", "retrain", "deploy"})
ARG_TYPES = ("str", "int", "float", "bool")
ARG_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")
# What artifact actions may see by default: the W&B key (from the worker's own secret) and
# the SDK's non-secret settings.
WANDB_ENV = (
    "WANDB_API_KEY",
    "WANDB_BASE_URL",
    "WANDB_MODE",
    "WANDB_ENTITY",
    "WANDB_PROJECT",
    "WANDB_INIT_TIMEOUT",
)
_INT_TEXT = re.compile(r"[+-]?[0-9]{1,18}")
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
ArgValue = str | int | float | bool


@dataclass(frozen=True)
class ArgSpec:
    """One declared argument. W&B renders template values as strings, so "3" is a valid int."""

    name: str
    type: str
    default: ArgValue | None = None
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    max_length: int = 256
    pattern: str | None = None
    choices: tuple[ArgValue, ...] | None = None
    allow_control: bool = False  # tabs, newlines and the like; NUL and surrogates never

    def coerce(self, raw: Any) -> ArgValue:
        """Return the typed value or raise Rejection(422) naming the argument."""
        value = self._typed(raw)
        if self.choices is not None and value not in self.choices:
            self._refuse(f"must be one of {list(self.choices)}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if self.minimum is not None and value < self.minimum:
                self._refuse(f"must be >= {_num(self.minimum)}")
            if self.maximum is not None and value > self.maximum:
                self._refuse(f"must be <= {_num(self.maximum)}")
        if (
            isinstance(value, str)
            and self.pattern is not None
            and not re.fullmatch(self.pattern, value)
        ):
            self._refuse("does not match the allowed pattern")
        return value

    def _typed(self, raw: Any) -> ArgValue:
        if self.type == "str":
            if not isinstance(raw, str):
                self._refuse("must be a string")
            if len(raw) > self.max_length:
                self._refuse(f"is longer than {self.max_length} characters")
            # Refused here, not when the job starts: a value that cannot be an environment
            # variable or an argv entry would fail the job on every attempt.
            problem = text_problem(raw, allow_control=self.allow_control)
            if problem is not None:
                self._refuse(problem)
            return str(raw)
        if self.type == "bool":
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
                return raw.strip().lower() in _TRUE
            self._refuse("must be true or false")
        if self.type == "int":
            if isinstance(raw, int) and not isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and _INT_TEXT.fullmatch(raw.strip()):
                return int(raw.strip())
            self._refuse("must be a whole number")
        # float
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            number = float(raw)
        elif isinstance(raw, str) and len(raw) <= 64:
            try:
                number = float(raw.strip())
            except ValueError:
                self._refuse("must be a number")
        else:
            self._refuse("must be a number")
        if not math.isfinite(number):
            self._refuse("must be a finite number")
        return number

    def _refuse(self, problem: str) -> Any:
        raise Rejection(422, "bad_arg", f"argument '{self.name}' {problem}")


@dataclass(frozen=True)
class Rule:
    """Which events a rule accepts, what it runs, and how (the worker reads the run settings)."""

    name: str
    events: frozenset[str]
    action: str
    aliases: frozenset[str] | None = None
    entity: str | None = None
    project: str | None = None
    collection: str | None = None
    args: tuple[ArgSpec, ...] = ()
    command: tuple[str, ...] = ()
    env_allow: tuple[str, ...] = ()
    timeout_s: float = 3600.0
    max_retries: int = 3
    coalesce: bool = True

    def matches(self, event: Event) -> bool:
        if event.event_type not in self.events:
            return False
        if self.aliases is not None and event.alias not in self.aliases:
            return False
        return all(
            pattern is None or (value is not None and fnmatch.fnmatchcase(value, pattern))
            for pattern, value in (
                (self.entity, event.entity),
                (self.project, event.project),
                (self.collection, event.collection),
            )
        )

    def validate_args(self, given: Mapping[str, Any]) -> dict[str, ArgValue]:
        """Typed arguments for a job: declared ones only, defaults filled in."""
        specs = {spec.name: spec for spec in self.args}
        for name in given:
            if name not in specs:
                # At most 64 characters of a name the caller chose, escaped to printable ASCII.
                shown = name[:64].encode("unicode_escape").decode("ascii")
                raise Rejection(
                    422,
                    "undeclared_arg",
                    f"argument '{shown}' is not declared by rule '{self.name}'",
                )
        out: dict[str, ArgValue] = {}
        for spec in self.args:
            if spec.name in given:
                out[spec.name] = spec.coerce(given[spec.name])
            elif spec.required:
                raise Rejection(422, "missing_arg", f"argument '{spec.name}' is required")
            elif spec.default is not None:
                out[spec.name] = spec.default
        return out


def match(rules: tuple[Rule, ...], event: Event) -> Rule | None:
    """The first rule, in config order, that accepts the event."""
    return next((rule for rule in rules if rule.matches(event)), None)


TRAINING_ARGS = (
    ArgSpec("epochs", "int", minimum=1, maximum=100),  # none given: from the dataset's size
    ArgSpec("lr", "float", default=0.003, minimum=1e-5, maximum=1.0),
    ArgSpec("batch_size", "int", default=64, minimum=1, maximum=512),
    ArgSpec("seed", "int", default=0, minimum=0, maximum=2**31 - 1),
    # these override the config's [training] table when given
    ArgSpec("arch", "str", choices=ARCHS),
    ArgSpec("input_size", "int", minimum=8, maximum=512),
    ArgSpec("hflip", "bool"),
    ArgSpec("time_budget", "int", minimum=10, maximum=604800),
)

# What the original demo did: an alias `download` or `retrain` on an artifact retrains.
DEFAULT_RULES = (
    Rule(
        name="default-retrain",
        events=frozenset({"ADD_ARTIFACT_ALIAS"}),
        aliases=frozenset({"download", "retrain"}),
        action="retrain",
        args=TRAINING_ARGS,
        env_allow=WANDB_ENV,
    ),
)


def parse_rules(tables: list[Table]) -> tuple[Rule, ...]:
    """Rules from the config's [[rules]] tables; no tables means DEFAULT_RULES."""
    if not tables:
        return DEFAULT_RULES
    rules = tuple(_parse_rule(table) for table in tables)
    names = [rule.name for rule in rules]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(
                "rules", f"two rules are named '{name}'", "give each rule its own name"
            )
    return rules


def _parse_rule(t: Table) -> Rule:
    name = t.text("name")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
        raise ConfigError(
            t.key("name"),
            f"'{name}' is not a valid rule name",
            "use letters, digits, '-', '_' or '.', at most 64",
        )
    events = frozenset(_event_type(t, e) for e in t.str_list("event", allow_str=True))
    if not events:
        raise ConfigError(t.key("event"), "is empty", f"name one of {sorted(EVENT_TYPES)}")
    action = t.text("action")
    if action not in ACTIONS:
        raise ConfigError(t.key("action"), f"'{action}' is not an action", f"use one of {ACTIONS}")
    aliases = t.str_list("alias", None, allow_str=True)
    command = t.str_list("command", ())
    if action == "command" and not command:
        raise ConfigError(
            t.key("command"),
            "is required for action 'command'",
            'give the argv to run, e.g. command = ["/usr/local/bin/notify"]',
        )
    if action != "command" and command:
        raise ConfigError(
            t.key("command"),
            f"is only used by action 'command', not '{action}'",
            'remove it or set action = "command"',
        )
    if command and not command[0].startswith("/"):
        raise ConfigError(
            t.key("command"),
            f"'{command[0]}' is not an absolute path",
            "give the program's full path (no shell, no PATH lookup)",
        )
    default_env = WANDB_ENV if action in ARTIFACT_ACTIONS else ()
    rule = Rule(
        name=name,
        events=events,
        action=action,
        aliases=frozenset(aliases) if aliases is not None else None,
        entity=t.text("entity", None),
        project=t.text("project", None),
        collection=t.text("collection", None),
        args=_parse_args(t.table("args")),
        command=command,
        env_allow=_env_allow(t, default_env),
        timeout_s=t.number("timeout_s", 3600.0, minimum=1.0, maximum=7 * 86400.0),
        max_retries=t.integer("max_retries", 3, minimum=0, maximum=20),
        coalesce=t.flag("coalesce", action == "retrain"),
    )
    t.finish()
    return rule


def _env_allow(t: Table, default: tuple[str, ...]) -> tuple[str, ...]:
    names: tuple[str, ...] = t.str_list("env_allow", default)
    for name in names:
        if not ENV_NAME.fullmatch(name):
            raise ConfigError(
                t.key("env_allow"),
                f"'{name}' is not an environment variable name",
                "use names like PATH or WANDB_BASE_URL",
            )
        if name.startswith("EDGEHOOK_"):
            raise ConfigError(
                t.key("env_allow"),
                f"'{name}' would hand a job edgehook's own settings or secrets",
                "remove it",
            )
    return names


def _event_type(t: Table, value: str) -> str:
    canonical = canonical_event_type(value)
    if canonical not in EVENT_TYPES:
        raise ConfigError(
            t.key("event"),
            f"'{value}' is not a W&B event type",
            f"use one of {sorted(EVENT_TYPES)}",
        )
    return canonical


def _parse_args(t: Table) -> tuple[ArgSpec, ...]:
    specs = []
    for name in list(t._data):
        if not ARG_NAME.fullmatch(name):
            raise ConfigError(
                t.key(name),
                "is not a valid argument name",
                "use lower-case letters, digits and '_', starting with a letter",
            )
        spec_table = t.table(name)
        specs.append(_parse_arg(name, spec_table))
    t.finish()
    return tuple(specs)


def _parse_arg(name: str, t: Table) -> ArgSpec:
    kind = t.text("type")
    if kind not in ARG_TYPES:
        raise ConfigError(
            t.key("type"), f"'{kind}' is not an argument type", f"use one of {ARG_TYPES}"
        )
    pattern = t.text("pattern", None)
    if pattern is not None:
        if kind != "str":
            raise ConfigError(t.key("pattern"), 'only applies to type "str"', "remove it")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(
                t.key("pattern"), f"is not a valid regex ({exc})", "fix the regex"
            ) from exc
    choices = t.raw("choices")
    spec = ArgSpec(
        name=name,
        type=kind,
        required=t.flag("required", False),
        minimum=t.number("min", None),
        maximum=t.number("max", None),
        max_length=t.integer("max_length", 256, minimum=1, maximum=4096),
        pattern=pattern,
        allow_control=t.flag("allow_control", False),
    )
    if spec.allow_control and kind != "str":
        raise ConfigError(t.key("allow_control"), 'only applies to type "str"', "remove it")
    checked_choices = None
    if choices is not None:
        if not isinstance(choices, list) or not choices:
            raise ConfigError(
                t.key("choices"), "must be a non-empty list", "list the allowed values"
            )
        try:
            checked_choices = tuple(spec._typed(c) for c in choices)
        except Rejection as exc:
            raise ConfigError(t.key("choices"), exc.detail, f"give {kind} values") from exc
    default = t.raw("default")
    spec = ArgSpec(**{**spec.__dict__, "choices": checked_choices})
    if default is not None:
        try:
            default = spec.coerce(default)
        except Rejection as exc:
            raise ConfigError(
                t.key("default"), exc.detail, "give a default inside the bounds"
            ) from exc
    t.finish()
    return ArgSpec(**{**spec.__dict__, "default": default})


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
