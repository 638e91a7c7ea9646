"""Label order, condition ids and forgiving parsing (utils/labels.py)."""

import pytest
from datasets import ClassLabel, Features, Image, Value

from utils import labels


def test_all_126_ids_round_trip():
    seen = set()
    for condition_id in range(labels.NUM_CONDITIONS):
        age, gender, race = labels.decode_condition(condition_id)
        assert labels.encode_condition(age, gender, race) == condition_id
        seen.add((age, gender, race))
    assert len(seen) == 126 == 9 * 2 * 7


def test_formula_and_descriptions():
    assert labels.encode_condition(4, 0, 2) == 4 * 14 + 0 * 7 + 2 == 58
    assert labels.describe_condition(58) == "30-39 Male Black"
    assert labels.describe_condition(125) == "more than 70 Female Southeast Asian"
    assert labels.describe(None, 1, None) == "any age Female any race"
    assert labels.slug(8, 1, 5) == "70plus_female_latino-hispanic"


@pytest.mark.parametrize("attribute,text,index", [
    ("gender", "female", 1), ("gender", "MALE", 0), ("race", "Latino Hispanic", 5), ("race", "latino_hispanic", 5),
    ("race", "east asian", 0), ("race", "Southeast-Asian", 6), ("age", "70+", 8), ("age", "more than 70", 8),
    ("age", "20-29", 3), ("age", "3", 3), ("age", 0, 0), ("race", "any", None), ("gender", None, None),
])
def test_parse_label_is_forgiving(attribute, text, index):
    assert labels.parse_label(attribute, text) == index


@pytest.mark.parametrize("attribute,text", [("race", "martian"), ("age", "9"), ("gender", "2"), ("race", "asian")])
def test_parse_label_rejects_with_valid_values(attribute, text):
    with pytest.raises(ValueError, match="valid:"):
        labels.parse_label(attribute, text)


@pytest.mark.parametrize("bad", [-1, 126, 1000])
def test_out_of_range_ids(bad):
    with pytest.raises(ValueError, match="out of range"):
        labels.decode_condition(bad)


def _features(race_names):
    return Features({"image": Image(), "age": ClassLabel(names=list(labels.AGES)),
                     "gender": ClassLabel(names=list(labels.GENDERS)), "race": ClassLabel(names=race_names),
                     "service_test": Value("bool")})


def test_dataset_label_check():
    labels.check_dataset_labels(_features(list(labels.RACES)))
    swapped = list(labels.RACES)
    swapped[2], swapped[3] = swapped[3], swapped[2]
    with pytest.raises(ValueError, match="silently mislabelled"):
        labels.check_dataset_labels(_features(swapped))


def test_label_table_has_every_id():
    table = labels.label_table_markdown().splitlines()
    assert len(table) == 2 + 126
    assert table[2 + 58] == "| 58 | 30-39 | Male | Black |"
