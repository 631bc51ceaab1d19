from receiver.auth import bearer_valid

TOKEN = (b"t" * 40,)


def test_bearer_scheme_any_case_and_spacing() -> None:
    assert bearer_valid("Bearer " + "t" * 40, TOKEN)
    assert bearer_valid("bearer " + "t" * 40, TOKEN)
    assert bearer_valid("  BEARER   " + "t" * 40 + " ", TOKEN)


def test_wrong_missing_or_other_scheme_fails() -> None:
    assert not bearer_valid(None, TOKEN)
    assert not bearer_valid("", TOKEN)
    assert not bearer_valid("Bearer", TOKEN)
    assert not bearer_valid("Bearer " + "t" * 39, TOKEN)
    assert not bearer_valid("Basic " + "t" * 40, TOKEN)
    assert not bearer_valid("t" * 40, TOKEN)
    assert not bearer_valid("Bearer \udcff" + "t" * 39, TOKEN)


def test_any_of_several_tokens_during_a_rotation() -> None:
    old, new = b"o" * 40, b"n" * 40
    assert bearer_valid("Bearer " + "o" * 40, (new, old))
    assert bearer_valid("Bearer " + "n" * 40, (new, old))
    assert not bearer_valid("Bearer " + "x" * 40, (new, old))
    assert not bearer_valid("Bearer " + "o" * 40, (new,))
