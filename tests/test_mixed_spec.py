"""The mixed-precision request (bench.mixed.spec): `--bits mixed:B` and the matrix entry, its tag (the cell's
bits label in tables and keys), what a record keeps, and the held-out score batch's size."""
from __future__ import annotations

import pytest

from bench.errors import ConfigError
from bench.mixed.spec import MixedSpec, parse_mixed


def test_cli_and_matrix_forms_give_the_same_request_and_tag():
    assert parse_mixed("mixed:4") == parse_mixed({"mixed": 4}) == parse_mixed({"mixed": {"like": 4}}) == MixedSpec(4)
    assert MixedSpec(4).tag == "mixed4" and parse_mixed(4) is None and parse_mixed("w4a8") is None
    spec = parse_mixed({"mixed": {"like": 3, "criterion": "hawq-v2", "candidates": [2, 8]}})
    assert spec.tag == "mixed3-hawq-v2-c2.8" and spec.candidates == ((2, 2), (8, 8))


def test_score_batch_size_is_part_of_the_request():
    spec = parse_mixed({"mixed": {"like": 4, "refine": 1, "score_n": 16, "score_patch": 48}})
    assert spec.tag == "mixed4-r1-s16x48"
    assert spec.score_size(32, 64) == (16, 48) and MixedSpec(4).score_size(32, 64) == (32, 64)
    assert MixedSpec(4, score_n=8).score_size(32, 64) == (8, 64) and MixedSpec(4, score_n=8).tag == "mixed4-s8x"
    assert spec.to_dict()["score_n"] == 16 and spec.to_dict()["score_patch"] == 48
    # A request without them is recorded as before (records of earlier runs compare equal).
    assert MixedSpec(4).to_dict() == {"like": 4, "candidates": [[2, 2], [3, 3], [4, 4], [6, 6], [8, 8]],
                                      "criterion": "mse", "context": "context", "refine": 0}


@pytest.mark.parametrize("body, message", [
    ({"like": 4, "score_n": 0}, "score_n=0 must be a positive integer"),
    ({"like": 4, "score_patch": "48"}, "score_patch='48' must be a positive integer"),
    ({"like": 4, "score": 16}, "keys: candidates, context, criterion, like, refine, score_n, score_patch"),
    ({"like": 4, "refine": -1}, "refine=-1 must be an integer >= 0"),
])
def test_bad_entries_are_one_line_errors(body, message):
    with pytest.raises(ConfigError) as info:
        parse_mixed({"mixed": body})
    assert message in str(info.value) and "\n" not in str(info.value)
