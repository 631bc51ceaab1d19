"""receiver/names.py: W&B's own name rules, and names made safe as path components."""

from __future__ import annotations

import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.names import (
    ALIAS_FORBIDDEN,
    COLLECTION_FORBIDDEN,
    PROJECT_FORBIDDEN,
    name_problem,
    path_component,
    text_problem,
)


@pytest.mark.parametrize(
    "name", ["quantized edge training", "edge-demo", "Ünïcode ok", "a" * 128, "v1.2_final"]
)
def test_project_names_the_sdk_allows_pass(name: str) -> None:
    assert name_problem(name, PROJECT_FORBIDDEN) is None


@pytest.mark.parametrize(
    ("name", "forbidden", "problem"),
    [
        ("", PROJECT_FORBIDDEN, "is empty"),
        ("a" * 129, PROJECT_FORBIDDEN, "is longer than 128 characters"),
        ("a/b", PROJECT_FORBIDDEN, "contains '/', which W&B does not allow"),
        ("50%?", PROJECT_FORBIDDEN, "contains '%' '?', which W&B does not allow"),
        ("a:b", COLLECTION_FORBIDDEN, "contains ':', which W&B does not allow"),
        ("prod/x", ALIAS_FORBIDDEN, "contains '/', which W&B does not allow"),
        ("a\tb", COLLECTION_FORBIDDEN, "contains the control character U+0009"),
        ("a\x00b", ALIAS_FORBIDDEN, "contains a NUL character"),
    ],
)
def test_names_the_sdk_refuses_are_refused_saying_why(
    name: str, forbidden: frozenset[str], problem: str
) -> None:
    assert name_problem(name, forbidden) == problem


def test_collection_names_may_hold_what_project_names_may_not() -> None:
    assert name_problem("photos #3 (50%)?", COLLECTION_FORBIDDEN) is None


def test_text_that_cannot_be_an_environment_variable() -> None:
    assert text_problem("a\ud800") == "contains a lone surrogate (not valid Unicode text)"
    assert text_problem("tab\there", allow_control=True) is None
    assert text_problem("nul\x00", allow_control=True) == "contains a NUL character"


@pytest.mark.parametrize(
    ("name", "component"),
    [
        ("my photos", "my photos"),
        (".", "%2E"),
        ("..", "%2E%2E"),
        ("a/b", "a%2Fb"),
        ("50%", "50%25"),
        ("back\\slash", "back%5Cslash"),
        ("bell\x07", "bell%07"),
    ],
)
def test_path_component_examples(name: str, component: str) -> None:
    assert path_component(name) == component


@given(st.text(min_size=1, max_size=40))
def test_path_component_is_one_safe_component_and_injective(name: str) -> None:
    component = path_component(name)
    assert "/" not in component and "\x00" not in component
    assert component not in (".", "..", "")
    # Injective: '%' is always encoded, so decoding gives the name back.
    assert urllib.parse.unquote(component, errors="surrogatepass") == name
