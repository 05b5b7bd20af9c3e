"""Tests for `orfeas.limits`: bounded JSON, clean file names, usable idempotency keys."""

from __future__ import annotations

import pytest

from orfeas.errors import InvalidOptions
from orfeas.limits import (
    MAX_IDEMPOTENCY_KEY_LENGTH,
    MAX_NAME_LENGTH,
    check_idempotency_key,
    clean_input_name,
    parse_json,
)
from orfeas.pipeline.options import GenerateOptions
from orfeas.store.schema import IDEMPOTENCY_KEY_LENGTH, INPUT_NAME_LENGTH


def test_the_bounds_match_the_columns():
    assert (MAX_NAME_LENGTH, MAX_IDEMPOTENCY_KEY_LENGTH) == (INPUT_NAME_LENGTH, IDEMPOTENCY_KEY_LENGTH)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 1000 + "]" * 1000, "nested deeper"),
        ("[" * 100_000 + "]" * 100_000, "nested deeper"),
        ('{"a": ' * 9 + "1" + "}" * 9, "nested deeper"),
        ('{"n": ' + "9" * 5000 + "}", "not usable JSON"),
        ('{"n": 9007199254740993}', "beyond"),
        ('{"n": NaN}', "not usable JSON"),
        ('{"n": -Infinity}', "not usable JSON"),
        ('{"n": 1e999}', "finite"),
        ('{"s": "a\\u0000b"}', "NUL"),
        ("[" + "1," * 2000 + "1]", "more than"),
        ("{not json", "not valid JSON"),
    ],
)
def test_parse_json_refuses_what_cannot_be_stored_or_used(text, message):
    with pytest.raises(InvalidOptions, match=message):
        parse_json(text, "field", max_bytes=10**7)


def test_parse_json_refuses_long_text_before_parsing():
    with pytest.raises(InvalidOptions, match="the limit is 10"):
        parse_json("[" + " " * 20 + "]", "field", max_bytes=10)


def test_parse_json_keeps_ordinary_values():
    assert parse_json(
        '{"steps": 5, "guidance_scale": 4.5, "decoder": "dense", "x": [1, {"y": null}]}', "f", max_bytes=999
    ) == {
        "steps": 5,
        "guidance_scale": 4.5,
        "decoder": "dense",
        "x": [1, {"y": None}],
    }


def test_generate_options_bound_seed_backend_and_generator_options():
    for values in ({"seed": 2**40}, {"seed": -1}, {"backend": "b" * 100}, {"generator_options": {"a": "x" * 20_000}}):
        with pytest.raises(InvalidOptions):
            GenerateOptions.build(**values)
    assert GenerateOptions.build(seed=2**32 - 1).seed == 2**32 - 1


@pytest.mark.parametrize(
    ("name", "cleaned"),
    [
        ("chair.png", "chair.png"),
        ("a\x00b\x1f\u200bc.png", "abc.png"),
        ("C:\\Users\\me\\mug.jpg", "mug.jpg"),
        ("../../x.png", "x.png"),
        ("", "image"),
        ("...", "image"),
        (None, "image"),
        ("x" * 300 + ".webp", "x" * 250 + ".webp"),
        ("y" * 300, "y" * 255),
    ],
)
def test_clean_input_name(name, cleaned):
    assert clean_input_name(name) == cleaned
    assert len(clean_input_name(name)) <= MAX_NAME_LENGTH


def test_idempotency_keys_must_be_short_visible_ascii():
    assert check_idempotency_key("retry-1") == "retry-1"
    assert check_idempotency_key("") is None and check_idempotency_key(None) is None
    for bad in ("k" * 201, "a b", "tab\t", "é"):
        with pytest.raises(InvalidOptions):
            check_idempotency_key(bad)
