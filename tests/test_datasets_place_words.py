import pytest

from memvp.datasets import ASKED_BOX, Sample, asked_region, place_box

LEFT, RIGHT, TOP, BOTTOM = (0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0), (0.0, 0.0, 1.0, 0.5), (0.0, 0.5, 1.0, 1.0)


@pytest.mark.parametrize(
    ("question", "answer", "box"),
    [
        ("What is in the top right?", "cat", (0.5, 0.0, 1.0, 0.5)),  # the question names the place
        ("what is in the top-left corner of the image?", "cat", (0.0, 0.0, 0.5, 0.5)),
        ("What is on the left?", "dog", LEFT),
        ("What is in the middle?", "dog", (0.25, 0.25, 0.75, 0.75)),
        ("What is in the middle left?", "dog", (0.0, 0.25, 0.5, 0.75)),
        ("What is in the left photo?", "dog", LEFT),
        ("Which item is in the upper-right quadrant?", "dog", (0.5, 0.0, 1.0, 0.5)),
        ("What is at top left?", "dog", (0.0, 0.0, 0.5, 0.5)),  # no article
        ("What do you see in the bottom left square of the grid?", "dog", (0.0, 0.5, 0.5, 1.0)),
        ("Where is the camera?", "bottom right", (0.5, 0.5, 1.0, 1.0)),  # the answer does
        ("Where is the man?", "on the left", LEFT),
        ("Where is it?", "upper left", (0.0, 0.0, 0.5, 0.5)),
        ("Where is the bag?", "top-left square", (0.0, 0.0, 0.5, 0.5)),
        ("Is the red object on the left or right?", "right", RIGHT),  # both sides asked: the answer
        ("Is the cat at the top or the bottom?", "bottom", BOTTOM),
        ("What is on top of the table?", "cup", None),  # relational, not the image's frame
        ("What is to the left of the car?", "man", None),
        ("What is in top of the box?", "toy", None),
        ("Is the man on the left wearing a hat?", "yes", None),  # the place goes on: not claimed
        ("Is this the right answer?", "yes", None),
        ("How many animals are there?", "2", None),
        ("Is the red object on the left or right?", None, None),
    ],
)
def test_place_box_reads_the_place_a_question_or_its_answer_names(question, answer, box):
    assert place_box(question, answer) == box


def test_asked_region_prefers_the_box_and_skips_conversations():
    boxed = Sample(
        id="1", prompt="What is in the top left?", answers=["cat"], metadata={ASKED_BOX: [0.1, 0.1, 0.2, 0.2]}
    )
    assert asked_region(boxed) == (0.1, 0.1, 0.2, 0.2)
    worded = Sample(id="2", prompt="Where is the cat?", answers=["top left"])
    assert asked_region(worded) == (0.0, 0.0, 0.5, 0.5)
    assert asked_region(worded, place_words=False) is None
    turn = Sample(id="3", prompt="Where is the cat?", answers=["top left"], metadata={"history": [["hi", "hello"]]})
    assert asked_region(turn) is None
