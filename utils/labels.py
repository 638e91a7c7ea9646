"""FairFace labels and the condition id that combines them.

FairFace annotates every face with three perceived attributes. Their order here is the order of the
``ClassLabel`` features of ``HuggingFaceM4/FairFace`` on the Hub; ``check_dataset_labels`` verifies it against
the dataset actually loaded, so a re-ordered or re-labelled copy is refused instead of silently mislabelled.

    condition_id = age * 14 + gender * 7 + race        (9 ages x 2 genders x 7 races = 126 ids)

An attribute may also be *unknown* (``None`` in Python, ``-1`` in tensors): the model then draws it from its
learned distribution. That is how partial conditions (``--gender female`` alone) and classifier-free
guidance (all three unknown) work.

*Framing* is an optional fourth condition, SDXL-style micro-conditioning: FairFace's configs ``0.25`` and
``1.25`` are the same faces cropped with little and with wide margin, and a model trained on both learns
which one it draws (``tight`` = 0.25, ``wide`` = 1.25). It is not part of the condition id.
"""

import re

AGES = ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70")
GENDERS = ("Male", "Female")
RACES = ("East Asian", "Indian", "Black", "White", "Middle Eastern", "Latino_Hispanic", "Southeast Asian")
ATTRIBUTES = {"age": AGES, "gender": GENDERS, "race": RACES}
NUM_CONDITIONS = len(AGES) * len(GENDERS) * len(RACES)  # 126
UNKNOWN = -1
FRAMINGS = ("tight", "wide")
CONFIG_FRAMING = {"0.25": 0, "1.25": 1}  # FairFace config (face padding) -> framing index; other configs: unknown

# Extra spellings people type for a label; everything is also matched case-, space- and punctuation-insensitively.
_ALIASES = {
    "age": {"70+": 8, ">70": 8, "70-": 8, "70 and over": 8, "over 70": 8, "baby": 0, "child": 1, "teen": 2},
    "gender": {"m": 0, "man": 0, "men": 0, "f": 1, "woman": 1, "women": 1},
    "race": {"latino": 5, "hispanic": 5, "asian": None, "se asian": 6, "mideast": 4},
}


def _key(text):
    return re.sub(r"[^a-z0-9+>]", "", str(text).lower())


def parse_label(attribute, value):
    """Index of ``value`` for ``attribute`` ('age', 'gender' or 'race'); forgiving about case and spelling.

    Accepts the FairFace name (``"Latino_Hispanic"``), loose spellings (``"latino hispanic"``, ``"female"``,
    ``"70+"``), the integer index, and ``None``/``"any"``/``"unknown"`` for an unknown attribute (returns None).
    Raises ValueError listing the valid values.
    """
    names = ATTRIBUTES[attribute]
    if value is None or _key(value) in ("", "any", "unknown", "none", "-1"):
        return None
    if isinstance(value, int) or str(value).strip().isdigit():
        index = int(value)
        if 0 <= index < len(names):
            return index
    else:
        wanted = _key(value)
        for index, name in enumerate(names):
            if _key(name) == wanted:
                return index
        aliases = {_key(k): v for k, v in _ALIASES[attribute].items()}
        if aliases.get(wanted) is not None:
            return aliases[wanted]
    raise ValueError(f"unknown {attribute} {value!r}; valid: {', '.join(repr(n) for n in names)} (or 0-{len(names) - 1})")


def parse_framing(value):
    """Index of a framing name (``"tight"``/``"wide"``, or the config names ``"0.25"``/``"1.25"``); None for
    None/``"any"``. Raises ValueError listing the valid values."""
    if value is None or _key(value) in ("", "any", "unknown", "none", "-1"):
        return None
    if _key(value) in FRAMINGS:
        return FRAMINGS.index(_key(value))
    if isinstance(value, int) and 0 <= value < len(FRAMINGS):
        return value
    if str(value).strip() in CONFIG_FRAMING:
        return CONFIG_FRAMING[str(value).strip()]
    raise ValueError(f"unknown framing {value!r}; valid: {', '.join(repr(n) for n in FRAMINGS)} (or any)")


def encode_condition(age, gender, race):
    """Condition id (0-125) of three attribute indices."""
    for attribute, index in (("age", age), ("gender", gender), ("race", race)):
        if not 0 <= int(index) < len(ATTRIBUTES[attribute]):
            raise ValueError(f"{attribute} index {index} out of range 0-{len(ATTRIBUTES[attribute]) - 1}")
    return int(age) * 14 + int(gender) * 7 + int(race)


def decode_condition(condition_id):
    """(age, gender, race) indices of a condition id."""
    condition_id = int(condition_id)
    if not 0 <= condition_id < NUM_CONDITIONS:
        raise ValueError(f"condition id {condition_id} out of range 0-{NUM_CONDITIONS - 1}")
    return condition_id // 14, (condition_id % 14) // 7, condition_id % 7


def describe(age=None, gender=None, race=None):
    """Human description of attribute indices, e.g. ``describe(4, 0, 2) == "30-39 Male Black"``; unknown ones are 'any'."""
    parts = [names[i] if i is not None and i != UNKNOWN else f"any {attr}"
             for attr, names, i in (("age", AGES, age), ("gender", GENDERS, gender), ("race", RACES, race))]
    return " ".join(parts)


def describe_condition(condition_id):
    """``describe_condition(42) == "20-29 Male East Asian"``; ``describe_condition(58) == "30-39 Male Black"``."""
    return describe(*decode_condition(condition_id))


def slug(age=None, gender=None, race=None):
    """File-name friendly description: ``30-39_male_black``; unknown attributes are ``anyage`` etc."""
    parts = [re.sub(r"[^a-z0-9-]+", "-", names[i].lower()) if i is not None and i != UNKNOWN else f"any{attr}"
             for attr, names, i in (("age", AGES, age), ("gender", GENDERS, gender), ("race", RACES, race))]
    return "_".join(parts).replace("more-than-70", "70plus")


def check_dataset_labels(features):
    """Raise ValueError unless ``features`` (a datasets.Features) has age/gender/race ClassLabels in our order."""
    for attribute, expected in ATTRIBUTES.items():
        feature = features.get(attribute)
        names = getattr(feature, "names", None)
        if names is None:
            raise ValueError(f"dataset has no ClassLabel column {attribute!r} (columns: {', '.join(features)})")
        if tuple(names) != expected:
            raise ValueError(f"dataset {attribute} labels {list(names)} differ from FairFace's {list(expected)}; "
                             "refusing to train on labels that would be silently mislabelled")


def label_table_markdown():
    """The 126-row id -> attributes table, as markdown (README and model card)."""
    rows = ["| id | age | gender | race |", "|---:|---|---|---|"]
    for condition_id in range(NUM_CONDITIONS):
        age, gender, race = decode_condition(condition_id)
        rows.append(f"| {condition_id} | {AGES[age]} | {GENDERS[gender]} | {RACES[race]} |")
    return "\n".join(rows)
