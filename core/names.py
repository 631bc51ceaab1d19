"""W&B names as W&B itself allows them, and how a name becomes one safe path component.

The rules are the wandb SDK's own (wandb/sdk/artifacts/_validators.py, 0.31):
  - `NAME_MAXLEN = 128` for project and artifact names;
  - `validate_project_name`: not empty, none of `INVALID_URL_CHARS` = / \\ # ? % : CR LF;
  - `validate_artifact_name`: none of `INVALID_ARTIFACT_NAME_CHARS` = /;
  - `validate_aliases`: none of `ARTIFACT_SEP_CHARS` = / :.
Spaces are fine everywhere ("quantized edge training" is a real project name). On top of
the SDK we refuse what no W&B name carries and what cannot travel to a job: control
characters and lone surrogates. A collection name may not hold ':' either: the SDK's
`ArtifactPath.from_str` splits a path at its first ':', so such a name could not be looked up.
Entities (users, teams) are held to the project rules: the SDK validates them nowhere.
"""

from __future__ import annotations

import unicodedata

NAME_MAXLEN = 128
PROJECT_FORBIDDEN = frozenset("/\\#?%:\r\n")
COLLECTION_FORBIDDEN = frozenset("/:")
ALIAS_FORBIDDEN = frozenset("/:")


def name_problem(value: str, forbidden: frozenset[str]) -> str | None:
    """Why `value` is not a name W&B sends (None when it is one)."""
    if not value:
        return "is empty"
    if len(value) > NAME_MAXLEN:
        return f"is longer than {NAME_MAXLEN} characters"
    bad = sorted(forbidden.intersection(value))
    if bad:
        return f"contains {' '.join(repr(c) for c in bad)}, which W&B does not allow"
    return text_problem(value)


def text_problem(value: str, *, allow_control: bool = False) -> str | None:
    """Why `value` cannot travel as an environment variable or argv (None when it can).

    NUL ends a C string and a lone surrogate has no UTF-8 form: either one makes
    `subprocess` raise. Other control characters travel, but only a rule that says so
    (`allow_control`) accepts them."""
    for char in value:
        if char == "\0":
            return "contains a NUL character"
        if "\ud800" <= char <= "\udfff":
            return "contains a lone surrogate (not valid Unicode text)"
        if not allow_control and unicodedata.category(char) == "Cc":
            return f"contains the control character U+{ord(char):04X}"
    return None


def path_component(name: str) -> str:
    """`name` as one directory entry: '%', '/', '\\', NUL and control characters are
    %-encoded (injective: '%' itself is), and '.' or '..' become '%2E' / '%2E%2E', so a
    name can never climb out of, or alias, the directory it is placed in."""
    if name in (".", ".."):
        return "%2E" * len(name)
    out = []
    for char in name:
        if char in "%/\\" or unicodedata.category(char) == "Cc":
            out.append("".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass")))
        else:
            out.append(char)
    return "".join(out) or "%00"


LABEL_MAXLEN = 200


def label_problem(value: str) -> str | None:
    """Why `value` cannot be a class name (None when it can): text that prints, is valid
    UTF-8 (no lone surrogates: a folder name that was not UTF-8) and has no control
    characters, at most LABEL_MAXLEN characters."""
    if not value:
        return "is empty"
    if len(value) > LABEL_MAXLEN:
        return f"is longer than {LABEL_MAXLEN} characters"
    problem = text_problem(value)
    if problem is None and any(unicodedata.category(c) in ("Zl", "Zp") for c in value):
        return "contains a line separator"
    return problem


def printable(value: str) -> str:
    """`value` for a terminal: control characters, lone surrogates and line separators
    escaped (\\x1b, \\udcff), everything else as it is."""
    out = []
    for char in value:
        if "\ud800" <= char <= "\udfff" or unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            out.append(char.encode("unicode_escape", "backslashreplace").decode("ascii"))
        else:
            out.append(char)
    return "".join(out)
