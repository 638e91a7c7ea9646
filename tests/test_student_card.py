"""A distilled student's model card carries its teacher's licence and attribution (utils/hub/student_card.py).

The teacher is a tiny untrained release saved in this process with the card train_fairface.py gives a FairFace run
(CC BY 4.0, FairFace's attribution). It is read as a local folder and as a Hub repo id: the Hub repo is laid out as
real files in the Hub cache (``models--user--name/snapshots/REV/``, ``refs/main``) under the session's temporary
HF_HOME with HF_HUB_OFFLINE=1 (tests/conftest.py), as ``hf download`` leaves it. Nothing is trained or run as a
process: the cards are built in process from the real flags of distill_fairface.py and train_fairface.py.
"""

import os
import shutil
import uuid

import huggingface_hub
import pytest
from huggingface_hub import constants

from conftest import save_tiny_pipeline

REVISION = "0123456789abcdef0123456789abcdef01234567"
NEWER = "fedcba9876543210fedcba9876543210fedcba98"
TEACHER_SECTION = "## The teacher's model card"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """An untrained tiny teacher release: pipeline (safetensors, shipped code) and the card of a FairFace run."""
    import train_fairface
    from utils.hub import model_card

    folder = tmp_path_factory.mktemp("teacher") / "fairface-teacher"
    pipe, _ = save_tiny_pipeline(folder)
    args = train_fairface.parse_args(["--output_dir", str(folder)])  # FairFace, configs 0.25 + 1.25: CC BY 4.0
    card = model_card.build_model_card(pipe, args, 86_744, 50_000, repo_id="someone/fairface-teacher")
    card.save(str(folder / "README.md"))
    return str(folder)


def hub_repo(folder, card=True, repo_id=None, revision=REVISION):
    """``folder`` laid out in the Hub cache as the repo's ``revision``, refs/main pointing at it (without its
    README.md: an older repo that has no card). Returns the repo id."""
    assert constants.HF_HUB_OFFLINE and constants.HF_HUB_CACHE.startswith(os.environ["HF_HOME"])  # conftest's
    repo_id = repo_id or f"someone/teacher-{uuid.uuid4().hex[:8]}"
    repo = os.path.join(constants.HF_HUB_CACHE, f"models--{repo_id.replace('/', '--')}")
    shutil.copytree(folder, os.path.join(repo, "snapshots", revision),
                    ignore=None if card else shutil.ignore_patterns("README.md"))
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(revision)
    return repo_id


def student_card(teacher_id, tmp_path):
    """The student's card as distill_fairface.py builds it (its flags, the teacher identity), saved and read back."""
    import distill_fairface
    from utils.hub.student_card import build_card, teacher_identity

    args = distill_fairface.parse_args(["--teacher", teacher_id, "--method", "guidance", "--num_inference_steps",
                                        "3"])
    args.guidance_scale, args.num_train_timesteps, args.num_segments = 2.0, 1000, 1  # as main() sets them
    card = build_card(args, teacher_identity(teacher_id), 400, 120.0, 504, "someone/fairface-student")
    card.save(str(tmp_path / "README.md"))
    return huggingface_hub.ModelCard.load(str(tmp_path / "README.md"))


def own_part(card):
    """The student's own sections: everything above the teacher's card, which it reproduces below."""
    assert card.text.count(TEACHER_SECTION) <= 1
    return card.text.split(TEACHER_SECTION)[0]


@pytest.mark.parametrize("kind", ["hub", "local"])
def test_student_card_carries_the_teachers_licence_and_attribution(teacher, kind, tmp_path):
    teacher_id = hub_repo(teacher) if kind == "hub" else teacher
    card = student_card(teacher_id, tmp_path)
    assert card.data.license == "cc-by-4.0" and card.data.datasets == ["HuggingFaceM4/FairFace"]
    own = own_part(card)
    assert "## License and attribution" in own
    # The teacher's licence reasoning, FairFace's attribution and citation, and the teacher's data, in the student's
    # own part of the card (not only in the teacher's card reproduced below it).
    assert "License: CC BY 4.0." in own and "credit Kärkkäinen & Joo" in own
    assert "FairFace: Kimmo Kärkkäinen and Jungseock Joo" in own and "karkkainen2021fairface" in own
    assert "[HuggingFaceM4/FairFace](https://huggingface.co/datasets/HuggingFaceM4/FairFace)" in own
    assert "86,744 images" in own  # the teacher's training data, not the student's 504
    assert TEACHER_SECTION in card.text and "not found" not in card.text
    if kind == "hub":
        assert card.data.base_model == teacher_id
        assert f"(https://huggingface.co/{teacher_id}/tree/{REVISION})" in own  # a link to the teacher's commit
    else:
        assert card.data.base_model is None and "fairface-teacher" in own
        assert os.path.dirname(teacher) not in card.text  # no local path beyond the folder's name


@pytest.mark.parametrize("kind", ["hub", "local"])
def test_teacher_without_a_card_is_said_plainly_and_named(teacher, kind, tmp_path):
    """An older teacher saved without README.md: the run does not fail; the card says so and names the teacher."""
    if kind == "hub":
        teacher_id = hub_repo(teacher, card=False)
    else:
        teacher_id = str(shutil.copytree(teacher, tmp_path / "old-teacher",
                                         ignore=shutil.ignore_patterns("README.md")))
    card = student_card(teacher_id, tmp_path)
    own = own_part(card)
    assert card.data.license is None and TEACHER_SECTION not in card.text
    assert "The teacher's model card (README.md) was not found" in own
    assert "licence and the attribution its training data asks for are unknown" in own
    if kind == "hub":
        assert card.data.base_model == teacher_id
        assert f"[{teacher_id}](https://huggingface.co/{teacher_id}/tree/{REVISION})" in own
    else:
        assert "`old-teacher`" in own


def test_hub_teacher_card_is_read_at_the_revision_its_weights_came_from(teacher, tmp_path):
    """refs/main moves on (a newer card, another licence) after the weights were taken: the student's card still
    carries the card of the commit it was distilled from."""
    from utils.hub.student_card import build_card, teacher_identity

    import distill_fairface

    teacher_id = hub_repo(teacher)
    args = distill_fairface.parse_args(["--teacher", teacher_id, "--method", "guidance"])
    args.guidance_scale, args.num_train_timesteps, args.num_segments, args.num_inference_steps = 2.0, 1000, 1, 3
    identity = teacher_identity(teacher_id)
    newer = tmp_path / "newer"
    shutil.copytree(teacher, newer)
    card = huggingface_hub.ModelCard.load(str(newer / "README.md"))
    card.data.license = "mit"
    card.save(str(newer / "README.md"))
    hub_repo(str(newer), repo_id=teacher_id, revision=NEWER)
    card = build_card(args, identity, 400, 120.0, 504, "someone/fairface-student")
    assert identity["revision"] == REVISION and card.data.license == "cc-by-4.0"
