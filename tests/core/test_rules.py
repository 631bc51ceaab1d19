import pytest

from core.errors import ConfigError, Rejection
from core.event import Event
from core.rules import DEFAULT_RULES, ArgSpec, Rule, match, parse_rules
from core.tables import Table

ALIAS = "ADD_ARTIFACT_ALIAS"


def rules_from(*tables: dict[str, object]) -> tuple[Rule, ...]:
    return parse_rules([Table(t, f"rules[{i}]") for i, t in enumerate(tables)])


def test_default_rule_retrains_on_download_or_retrain_alias() -> None:
    assert match(DEFAULT_RULES, Event(ALIAS, alias="retrain")) is DEFAULT_RULES[0]
    assert match(DEFAULT_RULES, Event(ALIAS, alias="download")) is DEFAULT_RULES[0]
    assert match(DEFAULT_RULES, Event(ALIAS, alias="production")) is None
    assert match(DEFAULT_RULES, Event("CREATE_ARTIFACT")) is None
    assert DEFAULT_RULES[0].action == "retrain"


def test_first_matching_rule_wins_and_globs_apply() -> None:
    rules = rules_from(
        {
            "name": "models",
            "event": ALIAS,
            "alias": "retrain",
            "collection": "model-*",
            "action": "deploy",
        },
        {"name": "any", "event": [ALIAS, "LINK_ARTIFACT"], "action": "download"},
    )

    def name(event: Event) -> str | None:
        found = match(rules, event)
        return None if found is None else found.name

    assert name(Event(ALIAS, alias="retrain", collection="model-a")) == "models"
    assert name(Event(ALIAS, alias="retrain", collection="data")) == "any"
    assert name(Event("LINK_MODEL")) == "any"
    assert name(Event("RUN_STATE")) is None


def test_args_strings_from_wandb_are_typed_and_defaults_filled() -> None:
    rule = DEFAULT_RULES[0]
    assert rule.validate_args({"epochs": "5", "lr": "0.1"}) == {
        "epochs": 5,
        "lr": 0.1,
        "batch_size": 64,
        "seed": 0,
    }


@pytest.mark.parametrize(
    ("given", "reason", "name"),
    [
        ({"epochs": "101"}, "bad_arg", "epochs"),
        ({"arch": "vgg16"}, "bad_arg", "arch"),
        ({"input_size": "4"}, "bad_arg", "input_size"),
        ({"epochs": "0"}, "bad_arg", "epochs"),
        ({"epochs": "3.5"}, "bad_arg", "epochs"),
        ({"epochs": True}, "bad_arg", "epochs"),
        ({"lr": "nan"}, "bad_arg", "lr"),
        ({"lr": "inf"}, "bad_arg", "lr"),
        ({"shell": "rm -rf /"}, "undeclared_arg", "shell"),
    ],
)
def test_bad_args_are_422_naming_the_arg(given: dict[str, object], reason: str, name: str) -> None:
    with pytest.raises(Rejection) as exc:
        DEFAULT_RULES[0].validate_args(given)
    assert (exc.value.status, exc.value.reason) == (422, reason)
    assert f"'{name}'" in exc.value.detail


def test_str_args_pattern_length_choices_and_required() -> None:
    rule = rules_from(
        {
            "name": "notify",
            "event": ALIAS,
            "action": "command",
            "command": ["/usr/bin/env"],
            "args": {
                "message": {
                    "type": "str",
                    "max_length": 10,
                    "pattern": "^[a-z ]*$",
                    "required": True,
                },
                "level": {"type": "str", "choices": ["info", "warn"], "default": "info"},
                "loud": {"type": "bool", "default": False},
            },
        }
    )[0]
    assert rule.validate_args({"message": "hi there", "loud": "true"}) == {
        "message": "hi there",
        "level": "info",
        "loud": True,
    }
    for given in (
        {"message": "HI"},
        {"message": "a" * 11},
        {"message": "ok", "level": "debug"},
        {"message": 5},
        {},
    ):
        with pytest.raises(Rejection) as exc:
            rule.validate_args(given)
        assert exc.value.status == 422


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"name": "x", "event": "NOPE", "action": "download"}, "rules[0].event"),
        ({"name": "x", "event": ALIAS, "action": "explode"}, "rules[0].action"),
        ({"name": "x", "event": ALIAS, "action": "command"}, "rules[0].command"),
        (
            {"name": "x", "event": ALIAS, "action": "command", "command": ["env"]},
            "rules[0].command",
        ),
        (
            {"name": "x", "event": ALIAS, "action": "download", "colection": "a"},
            "rules[0].colection",
        ),
        (
            {
                "name": "x",
                "event": ALIAS,
                "action": "download",
                "args": {"n": {"type": "int", "min": 1, "max": 3, "default": 9}},
            },
            "rules[0].args.n.default",
        ),
        (
            {
                "name": "x",
                "event": ALIAS,
                "action": "download",
                "args": {"Bad-Name": {"type": "int"}},
            },
            "rules[0].args.Bad-Name",
        ),
        (
            {
                "name": "x",
                "event": ALIAS,
                "action": "download",
                "args": {"n": {"type": "int", "pattern": "a"}},
            },
            "rules[0].args.n.pattern",
        ),
    ],
)
def test_bad_rule_config_names_the_key(table: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        rules_from(table)
    assert exc.value.key == key


def test_unknown_key_suggests_the_close_one() -> None:
    with pytest.raises(ConfigError) as exc:
        rules_from({"name": "x", "event": ALIAS, "action": "download", "colection": "a"})
    assert "did you mean 'rules[0].collection'" in str(exc.value)


def test_duplicate_rule_names_refused() -> None:
    with pytest.raises(ConfigError):
        rules_from(
            {"name": "x", "event": ALIAS, "action": "download"},
            {"name": "x", "event": ALIAS, "action": "retrain"},
        )


def test_arg_spec_float_bounds() -> None:
    spec = ArgSpec("lr", "float", minimum=0.001, maximum=1.0)
    assert spec.coerce("0.5") == 0.5
    assert spec.coerce(1) == 1.0
    with pytest.raises(Rejection):
        spec.coerce("0.0001")
