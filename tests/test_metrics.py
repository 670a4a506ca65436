"""Tests of memvp.metrics; expected values are computed by hand in the comments."""

import math
import shutil

import pytest

import memvp.metrics as metrics_module
from memvp.metrics import (
    MME_COGNITION,
    MME_PERCEPTION,
    caption_tokenizer,
    cider_d,
    evalai_answer,
    extract_choice_letter,
    gqa_accuracy,
    mmbench_accuracy,
    mme_answer,
    mme_scores,
    normalize_vqa_answer,
    pope_answer,
    pope_metrics,
    ptb_tokenize,
    ptb_tokenize_java,
    scienceqa_accuracy,
    vqa_accuracy,
    vqa_score,
)


# ------------------------------------------------------------------------------- ScienceQA
@pytest.mark.parametrize(
    "prediction, num_choices, expected",
    [
        ("B", 3, "B"),
        (" C\n", 4, "C"),
        ("The answer is B.", 3, "B"),
        ("Because ... The answer is (A).", 2, "A"),
        ("(B) cat", 2, "B"),
        ("B: cat", 2, "B"),
        ("B. cat", 2, "B"),
        ("D", 3, None),  # only A-C are options
        ("The answer is E.", 4, None),
        ("A cat sits on the mat.", 2, None),  # article, not option A
        ("The answer is Blue.", 2, None),  # "B" of a word is not a letter
        ("b", 2, None),  # lower case is not accepted
        ("I don't know", 4, None),
        ("", 4, None),
    ],
)
def test_extract_choice_letter(prediction, num_choices, expected):
    assert extract_choice_letter(prediction, num_choices) == expected


@pytest.mark.parametrize(
    "prediction, num_choices, expected",
    [  # LLaVA's eval_science_qa.py, rule by rule
        ("B", 3, "B"),  # the whole text is an option letter
        (" C\n", 3, "C"),  # stripped first, as model_vqa_science.py writes it
        ("B. cat", 3, "B"),  # a letter, ". " and more
        ("The answer is C.", 3, "C"),
        ("Because ... The answer is A, I think", 3, "A"),  # the pattern's "." is any character
        ("B.", 3, None),  # neither a bare letter nor "X. " with more, and no "The answer is"
        ("The answer is C", 3, None),  # nothing after the letter: the pattern needs one more character
        ("The answer is (C).", 3, None),  # the letter must follow "is " directly
        ("The answer is A. The answer is B.", 3, None),  # found twice: FAILED
        ("(B) cat", 3, None),
        ("A cat.", 2, None),  # "A" then " c", not ". "
        ("E", 5, "E"),
        ("F", 6, None),  # its options are A-E only
        ("D", 3, None),  # beyond the question's choices: wrong (get_pred_idx)
        ("b", 3, None),
    ],
)
def test_llava_rule_reads_letters_as_eval_science_qa(prediction, num_choices, expected):
    assert extract_choice_letter(prediction, num_choices, "llava") == expected


MMB_OPTIONS = ["red", "blue", "green", "yellow"]


@pytest.mark.parametrize(
    "prediction, expected",
    [  # VLMEvalKit's can_infer: option letters (can_infer_option), else option text (can_infer_text)
        ("B", "B"),
        ("(C) green", "C"),  # ".()[],:;!*#{}" are spaces; one letter among the words
        ("**D**", "D"),
        ("A red square", "A"),  # the article is a letter among the words (its VERBOSE check is off)
        ("B is the answer because the shape is round", None),  # the one letter is not in the last 4 words
        ("B C", None),  # two letters, and no option's text
        ("green", "C"),  # the text of one option
        ("It is the blue one", "B"),
        ("The answer is dark red", "D"),  # "answer is d..." (case-insensitive [ABCD]) comes before the text
        ("red or blue", None),  # the text of two options
        ("it is definitely the blue one, no doubt about it", None),  # 47 characters > 2 x 18 of the options
        ("Cannot determine the answer", None),  # a refusal: 'Z', not an option
        ("Failed to obtain answer via API red", "A"),  # no letter is read after an API failure, the text is
        ("E", None),  # not one of the 4 options
    ],
)
def test_vlmevalkit_rule_matches_letters_and_option_text(prediction, expected):
    assert extract_choice_letter(prediction, 4, "vlmevalkit", MMB_OPTIONS) == expected


def test_rules_are_checked():
    with pytest.raises(ValueError, match="give the options' texts"):
        extract_choice_letter("B", 4, "vlmevalkit")
    with pytest.raises(ValueError, match=r"unknown multiple-choice rule 'strict'; rules: \['default', 'memvp', "
                       r"'llava', 'vlmevalkit'\]"):  # fmt: skip
        extract_choice_letter("B", 4, "strict")  # 'strict' is a format's choice (datasets.resolve_rule)


def _sqa(prediction, answer, subject, grade, txt, img, n=4):
    return dict(prediction=prediction, answer=answer, num_choices=n, subject=subject,
                grade=grade, has_text_context=txt, has_image_context=img)  # fmt: skip


def test_scienceqa_columns():
    records = [
        _sqa("The answer is A.", "A", "natural science", "grade3", True, True),  # 1 right
        _sqa("B", "C", "natural science", "grade8", False, True),  # 2 wrong
        _sqa("(C) red", "C", "social science", "grade5", True, False),  # 3 right
        _sqa("D: blue", "D", "social science", "grade10", False, False),  # 4 right
        _sqa("I don't know", "A", "language science", "grade2", False, False),  # 5 wrong
        _sqa("B. cat", "B", "language science", "grade12", True, False, n=2),  # 6 right
        _sqa("C", "C", "natural science", "grade7", False, False, n=2),  # 7 wrong: C > 2 opts
    ]
    got = scienceqa_accuracy(records)
    expected = {
        "Average": 100 * 4 / 7,  # right: 1, 3, 4, 6
        "NAT": 100 * 1 / 3,  # 1, 2, 7
        "SOC": 100.0,  # 3, 4
        "LAN": 50.0,  # 5, 6
        "TXT": 100.0,  # hint non-empty: 1, 3, 6 (1 also has an image)
        "IMG": 50.0,  # image: 1, 2 (1 also has text)
        "NO": 100 * 1 / 3,  # neither: 4, 5, 7
        "G1-6": 100 * 2 / 3,  # grades 3, 5, 2 -> 1, 3, 5
        "G7-12": 50.0,  # grades 8, 10, 12, 7 -> 2, 4, 6, 7
        "count": 7,
        "rule": "default",
    }
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == (pytest.approx(value) if key != "rule" else value), key


def test_scienceqa_empty_column_is_nan():
    got = scienceqa_accuracy([_sqa("A", "A", "natural science", "grade1", False, True)])
    assert got["NAT"] == 100.0 and got["IMG"] == 100.0 and got["G1-6"] == 100.0
    for key in ("SOC", "LAN", "TXT", "NO", "G7-12"):
        assert math.isnan(got[key]), key


# ------------------------------------------------------------------------------- VQAv2
@pytest.mark.parametrize(
    "text, expected",
    [
        ("Two dogs.", "2 dogs"),  # period stripped (not before a digit), two -> 2
        ("a cat", "cat"),  # article dropped
        ("The Ten", "10"),
        ("none", "0"),
        ("isnt", "isn't"),  # contraction table
        ("dont know", "don't know"),
        ("Yes!", "yes"),  # "!" not next to a space -> replaced by " ", then split
        ("yes !", "yes"),  # "!" next to a space -> removed
        ("black-and-white", "black and white"),
        ("3.5", "3.5"),  # period before a digit is kept
        ("1,000", "1000"),  # digit,digit present -> punctuation removed, not spaced
        ("  left\nside\t", "left side"),
    ],
)
def test_normalize_vqa_answer(text, expected):
    assert normalize_vqa_answer(text) == expected


@pytest.mark.parametrize(
    "matches, expected",
    [
        (0, 0.0),
        # 1 match: the 9 subsets that keep it give 1/3, the one that drops it 0.
        (1, (9 * (1 / 3) + 1 * 0) / 10),  # 0.3
        # 2 matches: 2 subsets drop one (1/3), 8 keep both (2/3) -> 0.6
        (2, (2 * (1 / 3) + 8 * (2 / 3)) / 10),
        # 3 matches: 3 subsets drop one (2/3), 7 keep all three (1) -> 0.9
        (3, (3 * (2 / 3) + 7 * 1) / 10),
        # 4 matches: every subset keeps >= 3 -> 1
        (4, 1.0),
        (10, 1.0),
    ],
)
def test_vqa_score_ten_answers(matches, expected):
    answers = ["2"] * matches + ["3"] * (10 - matches)
    assert vqa_score("Two.", answers) == pytest.approx(expected)


def test_vqa_score_fewer_answers_and_official_quirks():
    # 4 answers, 2 match: leave-one-out subsets -> (1/3 + 1/3 + 2/3 + 2/3) / 4 = 0.5
    assert vqa_score("cat", ["cat", "cat", "dog", "dog"]) == pytest.approx(0.5)
    assert vqa_score("cat", ["cat"]) == 0.0  # one answer: its only subset is empty
    with pytest.raises(ValueError):
        vqa_score("cat", [])
    # Disagreeing human answers get the punctuation step: 3 x "black and white" -> 0.9
    answers = ["black-and-white"] * 3 + ["gray"] * 7
    assert vqa_score("black and white", answers) == pytest.approx(0.9)
    # ...unanimous ones do not (official vqaEval.py), so the hyphenated form never matches.
    assert vqa_score("black-and-white", ["black-and-white"] * 10) == 0.0


def test_vqa_accuracy_overall_and_per_type():
    predictions = {1: "yes", 2: "two", 3: "red"}
    references = {1: ["yes"] * 10, 2: ["2"] * 3 + ["3"] * 7, 3: ["blue"] * 10}
    types = {1: "yes/no", 2: "number", 3: "other"}
    got = vqa_accuracy(predictions, references, types)
    # scores 1.0, 0.9, 0.0 -> overall 100 * 1.9 / 3
    assert got["overall"] == pytest.approx(100 * 1.9 / 3)
    assert got["count"] == 3
    assert got["per_type"] == pytest.approx({"number": 90.0, "other": 0.0, "yes/no": 100.0})
    assert "per_type" not in vqa_accuracy(predictions, references)
    with pytest.raises(ValueError):
        vqa_accuracy({1: "yes"}, references)


# ------------------------------------------------------------------------------- GQA
def test_gqa_accuracy():
    predictions = {"a": "Yes.", "b": " left ", "c": "the cup", "d": "No"}
    references = {"a": "yes", "b": "left", "c": "cup", "d": "yes"}
    types = {"a": "verify", "b": "query", "c": "query", "d": "verify"}
    got = gqa_accuracy(predictions, references, types)
    # right: a (period and case), b (spaces); wrong: c (no article removal), d
    assert got["overall"] == 50.0 and got["count"] == 4
    assert got["per_type"] == {"query": 50.0, "verify": 50.0}


# ------------------------------------------------------------------------------- CIDEr-D
def test_ptb_tokenize():
    assert ptb_tokenize("A man's dog, on the grass.") == "a man 's dog on the grass"
    assert ptb_tokenize("He \"can't\" (won't) -- ok...") == "he ca n't wo n't ok"
    assert ptb_tokenize("A black-and-white cat; 3.5 & 1,000 cats!") == ("a black-and-white cat 3.5 & 1,000 cats")


@pytest.mark.parametrize(
    "text, expected",
    [  # LLaVA's EvalAIAnswerProcessor (VQAv2 test-server answers)
        ("Two dogs.", "2 dogs"),
        ("Yes", "yes"),
        ("It's a cat?", "it 's cat"),  # "?" dropped, "'s" split off (the VQA score's normalisation keeps "it's")
        ("1,000 people", "1000 people"),  # commas dropped first
        ("the answer\tis\nthree", "answer is 3"),
        ("", ""),
    ],
)
def test_evalai_answer(text, expected):
    assert evalai_answer(text) == expected


def test_evalai_answer_differs_from_the_vqa_score_normalisation():
    assert normalize_vqa_answer("It's a cat?") == "it's cat" != evalai_answer("It's a cat?")


requires_java = pytest.mark.skipif(shutil.which("java") is None, reason="needs java (run.sh test installs it)")


@requires_java
def test_java_ptb_tokenizer_is_pycocoevalcaps():
    # Stanford PTBTokenizer -lowerCase: brackets become -lrb- / -lsb- (pycocoevalcap's "-LRB-" entries never
    # match them), "gonna" splits, a final "a." is an abbreviation; its punctuation tokens are dropped.
    captions = ["A man's dog (gonna) sit.", 'Don\'t "stop" -- ok...', "", "[x] a."]
    assert ptb_tokenize_java(captions) == [
        "a man 's dog -lrb- gon na -rrb- sit",
        "do n't stop ok",
        "",
        "-lsb- x -rsb- a.",
    ]
    assert [ptb_tokenize(c) for c in captions] == ["a man 's dog gonna sit", "do n't stop ok", "", "x a"]
    assert ptb_tokenize_java(["a", "", ""]) == ["a", "", ""]  # blank captions at the end keep their lines


CAPTION_REFS = {1: ["x (y)"], 2: ["z"]}
CAPTION_PREDS = {1: "x y", 2: "z"}


def test_cider_d_with_the_python_tokenizer_when_java_is_missing(monkeypatch):
    monkeypatch.setattr(metrics_module.shutil, "which", lambda name: None)
    assert caption_tokenizer() == "ptb-python"
    # "x (y)" -> "x y": both images' captions equal their references; n = 1, 2 give cosine 1 for image 1
    # (10 * 2/4 = 5), n = 1 only for image 2 (10 * 1/4 = 2.5): mean 3.75
    assert cider_d(CAPTION_PREDS, CAPTION_REFS) == pytest.approx(3.75)
    with pytest.raises(ValueError, match="needs java on PATH"):
        ptb_tokenize_java(["x"])


@requires_java
def test_cider_d_with_the_java_tokenizer():
    assert caption_tokenizer() == "ptb-java"
    # "x (y)" -> "x -lrb- y -rrb-" (4 unigrams of idf ln 2): image 1's unigram cosine is 2 ln2^2 / (sqrt(2) ln2 *
    # 2 ln2) = 1/sqrt(2), its bigram "x y" is not in the reference; length penalty from the bigram counts
    # (1 vs 3): exp(-4 / 72). Image 1: 10 * exp(-1/18) / sqrt(2) / 4; image 2: 2.5.
    expected = (2.5 * math.exp(-1 / 18) / math.sqrt(2) + 2.5) / 2
    assert cider_d(CAPTION_PREDS, CAPTION_REFS) == pytest.approx(expected)
    assert cider_d(CAPTION_PREDS, CAPTION_REFS, "ptb-python") == pytest.approx(3.75)


def test_cider_d_hand_values():
    # One-word captions, 2 images, disjoint words: idf = log(2) - log(1) for both.
    # Unigram cosine 1, n = 2..4 have no n-grams (0), no length penalty -> 10 * 1/4 = 2.5
    refs = {1: ["cat"], 2: ["dog"]}
    assert cider_d({1: "Cat.", 2: "dog"}, refs) == pytest.approx(2.5)
    # "cat cat" vs "cat": clipped unigram term min(2i, i) * i / (2i * i) = 0.5; the length
    # penalty uses the bigram count (1 vs 0): exp(-1 / (2 * 6**2)).
    # Image 1: 10 * 0.5 * exp(-1/72) / 4; image 2 as before 2.5.
    expected = (1.25 * math.exp(-1 / 72) + 2.5) / 2
    assert cider_d({1: "cat cat", 2: "dog"}, refs) == pytest.approx(expected)


def test_cider_d_ordering():
    refs = {
        1: ["a dog runs on the grass", "a dog runs on the grass"],
        2: ["two cats sleep on a red sofa", "two cats sleep on a red sofa"],
        3: ["a plane flies over snowy mountains", "a plane flies over snowy mountains"],
    }
    identical = {k: v[0] for k, v in refs.items()}
    partial = {1: "a dog on the grass", 2: "two cats on a sofa", 3: "a plane over mountains"}
    unrelated = {1: "blue umbrella", 2: "blue umbrella", 3: "blue umbrella"}
    # A prediction equal to all its references has the same tf-idf vectors, so cosine 1 for
    # n = 1..4 (n-grams in every image, like "a", get idf 0 on both sides) -> 10 * 1 = 10.
    assert cider_d(identical, refs) == pytest.approx(10.0)
    assert 0.0 < cider_d(partial, refs) < 10.0
    assert cider_d(unrelated, refs) == 0.0  # no shared n-gram


# ------------------------------------------------------------------------------- POPE
@pytest.mark.parametrize(
    "prediction, expected",
    [
        ("Yes", "yes"),
        ("No", "no"),
        (" no\n", "no"),  # stripped, as LLaVA strips the output
        ("No, there is not.", "no"),  # comma dropped -> "No" is a word
        ("There is no car.", "no"),
        ("It is not a car", "no"),
        ("Yes, there is a car.", "yes"),
        ("Yes. No.", "yes"),  # only the first sentence counts
        ("I don't know", "yes"),  # neither word: "yes" (official)
        ("", "yes"),
        ("NO", "yes"),  # official quirk: only "No", "no", "not" are words for no
        ("No!", "yes"),  # official quirk: "No!" is not the word "No"
        ("Nothing", "yes"),
    ],
)
def test_pope_answer(prediction, expected):
    assert pope_answer(prediction) == expected


def _pope(prediction, label, split):
    return {"prediction": prediction, "label": label, "split": split}


def test_pope_metrics_hand_values():
    records = [
        # random: TP, TN, FN, FP -> every score 50
        _pope("Yes, there is a snowboard.", "yes", "random"),
        _pope("No.", "no", "random"),
        _pope("There is no person.", "yes", "random"),
        _pope("I think so", "no", "random"),
        # popular: all-yes predictions -> TP 1, FP 3
        _pope("Yes", "yes", "popular"),
        _pope("Yes", "no", "popular"),
        _pope("yes", "no", "popular"),
        _pope("Yes.", "no", "popular"),
    ]
    got = pope_metrics(records)
    assert got["per_split"]["random"] == {
        "accuracy": 50.0,
        "precision": 50.0,
        "recall": 50.0,
        "f1": 50.0,
        "yes_ratio": 50.0,
        "TP": 1,
        "FP": 1,
        "TN": 1,
        "FN": 1,
        "count": 4,
    }
    popular = got["per_split"]["popular"]
    # accuracy 1/4; precision 1/(1+3); recall 1/1; F1 = 2 * 25 * 100 / 125 = 40; yes-ratio 4/4
    assert popular == {
        "accuracy": 25.0,
        "precision": 25.0,
        "recall": 100.0,
        "f1": pytest.approx(40.0),
        "yes_ratio": 100.0,
        "TP": 1,
        "FP": 3,
        "TN": 0,
        "FN": 0,
        "count": 4,
    }
    assert list(got["per_split"]) == ["popular", "random"]
    # the top level is the mean over the splits
    assert got["accuracy"] == 37.5 and got["precision"] == 37.5 and got["recall"] == 75.0
    assert got["f1"] == pytest.approx(45.0) and got["yes_ratio"] == 75.0 and got["count"] == 8


def test_pope_metrics_undefined_ratios_are_nan():
    # all-no predictions on all-no labels: no "yes" predicted (precision 0/0), no "yes" label (recall 0/0)
    got = pope_metrics([_pope("No", "no", "adversarial"), _pope("not sure", "no", "adversarial")])
    split = got["per_split"]["adversarial"]
    assert split["accuracy"] == 100.0 and split["yes_ratio"] == 0.0 and split["TN"] == 2
    assert math.isnan(split["precision"]) and math.isnan(split["recall"]) and math.isnan(split["f1"])
    assert math.isnan(got["f1"])
    # no true positive but defined ratios: precision = recall = 0 -> F1 0
    got = pope_metrics([_pope("Yes", "no", "random"), _pope("No", "yes", "random")])["per_split"]["random"]
    assert (got["precision"], got["recall"], got["f1"], got["accuracy"]) == (0.0, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="POPE label must be 'yes' or 'no', got 'maybe'"):
        pope_metrics([_pope("Yes", "maybe", "random")])


# ------------------------------------------------------------------------------- MME
@pytest.mark.parametrize(
    "prediction, expected",
    [
        ("Yes", "yes"),
        ("no", "no"),
        (" NO ", "no"),
        ("Yes, there is.", "yes"),
        ("No, there is not.", "no"),
        ("Not really", "no"),  # "not " contains "no"
        ("nope", "no"),
        ("I don't know", "other"),
        ("The answer is yes", "other"),  # official: only the first 4 characters are read
        ("", "other"),
    ],
)
def test_mme_answer(prediction, expected):
    assert mme_answer(prediction) == expected


def _mme(prediction, answer, subtask, image):
    return {"prediction": prediction, "answer": answer, "subtask": subtask, "image": image}


def test_mme_scores_hand_values():
    records = [
        # existence: 3 of 4 questions right (75), 1 of 2 images with both right (50) -> 125
        _mme("Yes", "Yes", "existence", "a"),
        _mme("No, there is not.", "No", "existence", "a"),
        _mme("yes", "Yes", "existence", "b"),
        _mme("Yes", "No", "existence", "b"),
        # artwork: "There is" reads as other (wrong) -> acc 50, acc+ 0 -> 50
        _mme("There is", "Yes", "artwork", "c"),
        _mme("no", "No", "artwork", "c"),
        # code_reasoning (cognition): both right -> 200
        _mme("Yes", "yes", "code_reasoning", "d"),
        _mme("No", "no", "code_reasoning", "d"),
        # a subtask that is neither perception nor cognition is listed, not summed
        _mme("Yes", "Yes", "custom", "e"),
        _mme("Yes", "No", "custom", "e"),
    ]
    got = mme_scores(records)
    assert got["per_subtask"]["existence"] == {
        "acc": 75.0,
        "acc_plus": 50.0,
        "score": 125.0,
        "count": 4,
        "images": 2,
        "other": 0,
    }
    assert got["per_subtask"]["artwork"] == {
        "acc": 50.0,
        "acc_plus": 0.0,
        "score": 50.0,
        "count": 2,
        "images": 1,
        "other": 1,
    }
    assert got["per_subtask"]["code_reasoning"]["score"] == 200.0
    assert got["per_subtask"]["custom"]["score"] == 50.0
    assert got["perception"] == 175.0 and got["cognition"] == 200.0 and got["count"] == 10
    assert len(MME_PERCEPTION) == 10 and len(MME_COGNITION) == 4 and "OCR" in MME_PERCEPTION
    only = mme_scores([_mme("Yes", "Yes", "OCR", "x"), _mme("No", "No", "OCR", "x")])
    assert only["perception"] == 200.0 and math.isnan(only["cognition"])
    with pytest.raises(ValueError, match="MME answers are yes or no, got 'Maybe'"):
        mme_scores([_mme("Yes", "Maybe", "OCR", "x")])


# ------------------------------------------------------------------------------- MMBench
def _mmb(prediction, answer, group, rotation, category="cat", l2="l2", n=4):
    return {
        "prediction": prediction,
        "answer": answer,
        "num_choices": n,
        "group": group,
        "rotation": rotation,
        "category": category,
        "l2_category": l2,
    }


def test_mmbench_circular_accuracy_hand_values():
    records = [
        # question 0: 4 rotations, all right (letters read as ScienceQA's extract_choice_letter does)
        _mmb("B", "B", "0", 0, "attr", "FP-S"),
        _mmb("A. red", "A", "0", 1, "attr", "FP-S"),
        _mmb("The answer is D.", "D", "0", 2, "attr", "FP-S"),
        _mmb("(C)", "C", "0", 3, "attr", "FP-S"),
        # question 1: right at rotation 0, a failed rotation -> wrong
        _mmb("A", "A", "1", 0, "phys", "AR", n=2),
        _mmb("A", "B", "1", 1, "phys", "AR", n=2),
        # question 2: wrong at rotation 0 only; a letter beyond the options is wrong
        _mmb("D", "A", "2", 0, "attr", "FP-S", n=3),
        _mmb("C", "C", "2", 1, "attr", "FP-S", n=3),
        _mmb("B", "B", "2", 2, "attr", "FP-S", n=3),
    ]
    got = mmbench_accuracy(records)
    assert got["overall"] == pytest.approx(100 / 3) and got["count"] == 3 and got["rotations"] == 9
    assert got["per_category"] == {"attr": 50.0, "phys": 0.0}
    assert got["per_l2_category"] == {"AR": 0.0, "FP-S": 50.0}
    assert got["vanilla"] == pytest.approx(200 / 3)  # rotation 0: questions 0 and 1 right, 2 wrong
    # all rotations right -> 100
    assert mmbench_accuracy(records[:4])["overall"] == 100.0
    # without l2 categories or rotations
    got = mmbench_accuracy([{"prediction": "A", "answer": "A", "num_choices": 2, "group": 7, "category": "x"}])
    assert got["overall"] == 100.0 and "per_l2_category" not in got and math.isnan(got["vanilla"])
    assert got["rule"] == "default"


def test_mmbench_accuracy_with_vlmevalkits_matching():
    def rotation(prediction, answer, r, shown):
        return {**_mmb(prediction, answer, "0", r, n=len(shown)), "choices": shown}

    records = [  # one question, options red / blue (right), asked twice: answered with the option's text
        rotation("blue", "B", 0, ["red", "blue"]),
        rotation("It is blue.", "A", 1, ["blue", "red"]),
    ]
    got = mmbench_accuracy(records, "vlmevalkit")
    assert got["overall"] == 100.0 and got["rule"] == "vlmevalkit"
    assert mmbench_accuracy(records)["overall"] == 0.0  # 'default' reads no letter in either
