"""Evaluation metrics for the MemVP paper's tasks: ScienceQA, VQAv2, GQA, COCO captions, and the
LLaVA-1.5 benchmarks of its Table 9: POPE, MME, MMBench; and the multiple-choice video QA of its
Table 8 (TVQA, How2QA).

Pure Python; depends on nothing else in memvp.  ``cider_d`` additionally needs
``pycocoevalcap`` (imported lazily, only when called).

All accuracies are returned in percent and are not rounded (the official scripts round to
two decimals only when printing).  A group with no samples gets ``math.nan``.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping

__all__ = [
    "extract_choice_letter",
    "scienceqa_accuracy",
    "normalize_vqa_answer",
    "vqa_score",
    "vqa_accuracy",
    "gqa_accuracy",
    "ptb_tokenize",
    "cider_d",
    "pope_answer",
    "pope_metrics",
    "MME_PERCEPTION",
    "MME_COGNITION",
    "mme_answer",
    "mme_scores",
    "mmbench_accuracy",
    "multiple_choice_accuracy",
]


# --------------------------------------------------------------------------- shared helpers
def _percent(values: list[float]) -> float:
    return 100.0 * sum(values) / len(values) if values else math.nan


def _check_same_ids(predictions: Mapping, references: Mapping) -> None:
    if predictions.keys() != references.keys():
        missing = list(references.keys() - predictions.keys())[:5]
        extra = list(predictions.keys() - references.keys())[:5]
        raise ValueError(
            "predictions and references must have the same ids "
            f"(missing predictions e.g. {missing}, unknown ids e.g. {extra})"
        )


def _summarise(scores: dict[Hashable, float], types: Mapping | None) -> dict:
    """{"overall": %, "count": n} plus {"per_type": {type: %}} when ``types`` is given."""
    out: dict = {"overall": _percent(list(scores.values())), "count": len(scores)}
    if types is not None:
        groups: dict[str, list[float]] = defaultdict(list)
        for qid, score in scores.items():
            groups[types[qid]].append(score)
        out["per_type"] = {t: _percent(v) for t, v in sorted(groups.items())}
    return out


# --------------------------------------------------------------------------- ScienceQA
_ANSWER_IS_RE = re.compile(r"The answer is \(?([A-Z])\b")
_LEADING_LETTER_RE = re.compile(r"^\(?([A-Z])(?:\)|[.:](?:\s|$))")
_CAPITAL_RE = re.compile(r"([A-Z])")
CHOICE_RULES = ("default", "memvp")
"""How a multiple-choice answer's letter is read: 'default' (tolerant, below) or 'memvp' (the
official MemVP ``eval.py``: the first capital letter of the generated text)."""


def extract_choice_letter(prediction: str, num_choices: int, rule: str = "default") -> str | None:
    """The option letter a model's ScienceQA output picks, or None.

    'default' rules, in order (those of LLaVA's ``eval_science_qa.py`` / LaVIN / MemVP's ``eval.py``,
    made a little more tolerant): the stripped text is a bare letter ("B"); it contains
    "The answer is B" / "The answer is (B)"; it starts with "B." / "B:" / "(B)" / "B)".
    Upper case only, so the article in "A cat ..." is not read as option A. 'memvp': the first
    capital letter anywhere (``re.findall(r'([A-Z])', ...)[0]``; the official code generates one token
    after "The answer is"). A letter beyond the first ``num_choices`` options gives None (the
    official scripts count it as wrong).
    """
    if rule not in CHOICE_RULES:
        raise ValueError(f"unknown multiple-choice rule {rule!r}; rules: {list(CHOICE_RULES)}")
    text = prediction.strip()
    valid = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:num_choices]
    if rule == "memvp":
        if not (match := _CAPITAL_RE.search(text)):
            return None
        letter = match.group(1)
    elif len(text) == 1:
        letter = text
    elif match := _ANSWER_IS_RE.search(text) or _LEADING_LETTER_RE.match(text):
        letter = match.group(1)
    else:
        return None
    return letter if letter in valid else None


_SCIENCEQA_SUBJECTS = {"NAT": "natural science", "SOC": "social science", "LAN": "language science"}


def scienceqa_accuracy(records: Iterable[Mapping], rule: str = "default") -> dict[str, float]:
    """ScienceQA accuracy (%) as in Table 2 of the MemVP paper.

    Each record: ``prediction`` (raw model text), ``answer`` (correct letter), ``num_choices``,
    ``subject``, ``grade`` ("grade1".."grade12"), ``has_text_context`` (non-empty hint),
    ``has_image_context``.  Columns follow lupantech/ScienceQA ``tools/evaluate_acc.py``:
    TXT = has a text context (with or without image), IMG = has an image (with or without
    text), so TXT and IMG overlap; NO = neither; G1-6 / G7-12 by grade number.
    Returns keys Average, NAT, SOC, LAN, TXT, IMG, NO, G1-6, G7-12 (NaN when a column has no
    samples), count, and the letter-reading ``rule`` (``extract_choice_letter``).
    """
    columns: dict[str, list[float]] = {
        k: [] for k in ("Average", "NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12")
    }
    for r in records:
        correct = float(extract_choice_letter(r["prediction"], r["num_choices"], rule) == r["answer"])
        grade = int(r["grade"].removeprefix("grade"))
        memberships = {
            "Average": True,
            **{col: r["subject"] == subject for col, subject in _SCIENCEQA_SUBJECTS.items()},
            "TXT": r["has_text_context"],
            "IMG": r["has_image_context"],
            "NO": not r["has_text_context"] and not r["has_image_context"],
            "G1-6": 1 <= grade <= 6,
            "G7-12": 7 <= grade <= 12,
        }
        for col, member in memberships.items():
            if member:
                columns[col].append(correct)
    out: dict = {col: _percent(values) for col, values in columns.items()}
    out["count"] = len(columns["Average"])
    out["rule"] = rule
    return out


# --------------------------------------------------------------------------- VQAv2
# Tables and rules ported from the official evaluation, GT-Vision-Lab/VQA
# PythonEvaluationTools/vqaEvaluation/vqaEval.py (VQAEval.__init__, processPunctuation,
# processDigitArticle, evaluate).  Quirks are kept on purpose (see comments).
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}  # fmt: skip
_MANUAL_MAP = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = {"a", "an", "the"}
# "(?!<=\d)" is the official typo for a look-behind; kept verbatim so behaviour is identical.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
          ">", "<", "@", "`", ",", "?", "!"]  # fmt: skip


def _process_punctuation(text: str) -> str:
    out = text
    for p in _PUNCT:
        # The test looks at the *input* text while edits accumulate in `out` (as official).
        if p + " " in text or " " + p in text or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    # Official passes re.UNICODE (== 32) positionally as `count`: at most 32 periods go.
    return _PERIOD_STRIP.sub("", out, count=int(re.UNICODE))


def _process_digit_article(text: str) -> str:
    words = [_MANUAL_MAP.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalize_vqa_answer(text: str) -> str:
    """Official VQA normalisation of a predicted answer: newlines/tabs to spaces, strip,
    punctuation handling, lower-case, number words to digits, articles dropped,
    contractions restored ("Two dogs." -> "2 dogs", "isnt" -> "isn't")."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(text))


def vqa_score(prediction: str, answers: list[str]) -> float:
    """Official VQA accuracy of one prediction against the human answers, in [0, 1].

    For each leave-one-out subset of the humans (the 10-choose-9 subsets for the usual 10
    answers; with fewer answers the same over what is there, so a single answer always gives
    0), min(#humans in the subset that match / 3, 1), averaged over the subsets.
    As in the official vqaEval.py the prediction gets the full normalisation, while the
    human answers (expected in the annotation files' already-normalised form) only get the
    punctuation step, and only when they are not all identical.
    """
    if not answers:
        raise ValueError("vqa_score needs at least one human answer")
    pred = normalize_vqa_answer(prediction)
    if len(set(answers)) > 1:
        answers = [_process_punctuation(a) for a in answers]
    matches = sum(a == pred for a in answers)
    # Leaving out a matching answer leaves matches-1 in the subset, otherwise matches.
    total = sum(min(1.0, (matches - (a == pred)) / 3) for a in answers)
    return total / len(answers)


def vqa_accuracy(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, list[str]],
    types: Mapping[Hashable, str] | None = None,
) -> dict:
    """VQAv2 accuracy (%): {"overall", "count"} and, given ``types`` (question id ->
    answer type, e.g. "yes/no", "number", "other"), {"per_type": {type: %}}.
    ``predictions`` and ``references`` must have the same question ids."""
    _check_same_ids(predictions, references)
    scores = {qid: vqa_score(predictions[qid], refs) for qid, refs in references.items()}
    return _summarise(scores, types)


# --------------------------------------------------------------------------- GQA
def _normalize_gqa_answer(text: str) -> str:
    return text.strip().lower().rstrip(".").strip()


def gqa_accuracy(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, str],
    types: Mapping[Hashable, str] | None = None,
) -> dict:
    """GQA accuracy (%): exact match after lower-casing, stripping and dropping trailing
    periods (the official GQA script compares exact strings; LLaVA-style evaluation strips the
    period and lower-cases first).  Same output shape as :func:`vqa_accuracy`."""
    _check_same_ids(predictions, references)
    scores = {
        qid: float(_normalize_gqa_answer(predictions[qid]) == _normalize_gqa_answer(ref))
        for qid, ref in references.items()
    }
    return _summarise(scores, types)


# --------------------------------------------------------------------------- COCO captions
# pycocoevalcap's PTBTokenizer runs Stanford CoreNLP 3.4.1 through a `java` subprocess, so it
# is not used here.  This is a pure-Python approximation of its output for captions
# (`-lowerCase`, then pycocoevalcap drops its PUNCTUATIONS tokens): lower-case; punctuation
# split off and dropped; words keep inner hyphens/apostrophes ("black-and-white", "o'clock");
# numbers keep inner "." and "," ("3.5", "1,000"); clitics split as PTB does ("man's" ->
# "man 's", "don't" -> "do n't", "cannot" -> "can not").  Other symbols ("&", "$", "%") stay
# as tokens, as in PTB.  Known differences: all brackets are dropped (PTB's -LSB-/-RSB- are
# not in pycocoevalcap's list) and rare PTB splits such as "gonna" -> "gon na" are not done.
_PTB_TOKEN_RE = re.compile(r"\d+(?:[.,]\d+)+|\w+(?:['-]\w+)*|[^\w\s]")
_PTB_CLITIC_RE = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
_PTB_DROPPED = set("'`\".?!,:;-()[]{}")


def ptb_tokenize(caption: str) -> str:
    """Space-joined tokens of ``caption``, mimicking pycocoevalcap's PTBTokenizer output."""
    tokens: list[str] = []
    for tok in _PTB_TOKEN_RE.findall(caption.lower()):
        if tok in _PTB_DROPPED:
            continue
        if tok == "cannot":
            tokens += ["can", "not"]
        elif m := _PTB_CLITIC_RE.match(tok):
            tokens += [m.group(1), m.group(2)]
        else:
            tokens.append(tok)
    return " ".join(tokens)


def cider_d(predictions: Mapping[Hashable, str], references: Mapping[Hashable, list[str]]) -> float:
    """Corpus CIDEr-D of COCO-style captions (the "CIDEr" of coco-caption / pycocoevalcap).

    Captions are tokenised with :func:`ptb_tokenize` and scored by pycocoevalcap's
    ``Cider`` (n-grams 1..4, idf from the references of the evaluated images, clipped
    tf-idf, Gaussian length penalty with sigma 6, x10, mean over images).  Because idf comes
    from the evaluated set, a corpus of one image always scores 0.
    """
    from pycocoevalcap.cider.cider import Cider  # optional dependency

    _check_same_ids(predictions, references)
    gts = {k: [ptb_tokenize(c) for c in refs] for k, refs in references.items()}
    res = {k: [ptb_tokenize(predictions[k])] for k in references}
    score, _ = Cider().compute_score(gts, res)
    return float(score)


# --------------------------------------------------------------------------- POPE
def pope_answer(prediction: str) -> str:
    """ "yes" or "no", as LLaVA's ``llava/eval/eval_pope.py`` reads a prediction: keep the text
    before the first ".", drop commas, split on single spaces; "no" when one of the words is
    exactly "No", "no" or "not", else "yes" (so an empty or unrelated answer counts as "yes",
    and so do "NO" and "No!" -- quirks of the official script, kept).  The text is stripped
    first, as LLaVA strips the model's output before writing it."""
    text = prediction.strip()
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if "No" in words or "not" in words or "no" in words else "yes"


def _ratio(num: int, den: int) -> float:
    return 100.0 * num / den if den else math.nan


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def pope_metrics(records: Iterable[Mapping]) -> dict:
    """POPE scores (%) per split, as LLaVA's ``eval_pope.py`` computes them for each annotation file.

    Each record: ``prediction`` (raw model text, read by :func:`pope_answer`), ``label``
    ("yes" / "no") and ``split`` ("random", "popular", "adversarial").  "yes" is the positive
    class.  Returns ``{"per_split": {split: {"accuracy", "precision", "recall", "f1",
    "yes_ratio", "TP", "FP", "TN", "FN", "count"}}, "accuracy", "precision", "recall", "f1",
    "yes_ratio", "count"}``; the top-level scores are the means over the splits (LLaVA-1.5
    reports POPE as the mean F1).  Where the official script would divide by zero (no "yes"
    predicted: precision; no "yes" label: recall) the value is NaN; F1 is 0 when precision
    and recall are both 0.
    """
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"TP": 0, "FP": 0, "TN": 0, "FN": 0})
    for r in records:
        label = r["label"].strip().lower()
        if label not in ("yes", "no"):
            raise ValueError(f"POPE label must be 'yes' or 'no', got {r['label']!r}")
        yes = pope_answer(r["prediction"]) == "yes"
        key = ("TP" if label == "yes" else "FP") if yes else ("FN" if label == "yes" else "TN")
        counts[r["split"]][key] += 1
    per_split = {}
    for split, c in sorted(counts.items()):
        n = sum(c.values())
        precision, recall = _ratio(c["TP"], c["TP"] + c["FP"]), _ratio(c["TP"], c["TP"] + c["FN"])
        if math.isnan(precision) or math.isnan(recall):
            f1 = math.nan
        else:
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_split[split] = {
            "accuracy": _ratio(c["TP"] + c["TN"], n),
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "yes_ratio": _ratio(c["TP"] + c["FP"], n),
            **c,
            "count": n,
        }
    out: dict = {"per_split": per_split}
    for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
        out[key] = _mean([m[key] for m in per_split.values()])
    out["count"] = sum(m["count"] for m in per_split.values())
    return out


# --------------------------------------------------------------------------- MME
MME_PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def mme_answer(prediction: str) -> str:
    """ "yes", "no" or "other", as MME's official ``eval_tool/calculation.py`` (``parse_pred_ans``)
    reads a prediction: lower-cased; the whole text when it is "yes" / "no", else "yes" when the
    first 4 characters contain "yes", else "no" when they contain "no", else "other" (counted
    wrong).  Stripped first, as LLaVA strips the model's output."""
    text = prediction.strip().lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def mme_scores(records: Iterable[Mapping]) -> dict:
    """MME scores as the official ``eval_tool/calculation.py`` computes them.

    Each record: ``prediction`` (raw text, read by :func:`mme_answer`), ``answer`` ("Yes" /
    "No", any case), ``subtask`` (the MME folder name) and ``image`` (any key shared by the
    questions of one image).  Per subtask: acc = % of questions right, acc_plus = % of
    images whose questions are all right (MME has two per image), score = acc + acc_plus
    (the official (acc + acc+) x 100 with fractions).  ``perception`` / ``cognition`` = the
    sum of the scores of the :data:`MME_PERCEPTION` (10, max 2000) / :data:`MME_COGNITION`
    (4, max 800) subtasks present (NaN when none is); other subtasks are only listed.
    Returns ``{"perception", "cognition", "per_subtask": {subtask: {"acc", "acc_plus",
    "score", "count", "images", "other"}}, "count"}`` ("other": answers that are neither
    yes nor no).
    """
    questions: dict[str, list[float]] = defaultdict(list)
    other: dict[str, int] = defaultdict(int)
    images: dict[str, dict[Hashable, bool]] = defaultdict(dict)
    for r in records:
        answer = r["answer"].strip().lower()
        if answer not in ("yes", "no"):
            raise ValueError(f"MME answers are yes or no, got {r['answer']!r}")
        pred = mme_answer(r["prediction"])
        subtask, right = r["subtask"], pred == answer
        questions[subtask].append(float(right))
        other[subtask] += pred == "other"
        images[subtask][r["image"]] = images[subtask].get(r["image"], True) and right
    per_subtask = {}
    for subtask in sorted(questions):
        acc, acc_plus = _percent(questions[subtask]), _percent([float(v) for v in images[subtask].values()])
        per_subtask[subtask] = {
            "acc": acc,
            "acc_plus": acc_plus,
            "score": acc + acc_plus,
            "count": len(questions[subtask]),
            "images": len(images[subtask]),
            "other": other[subtask],
        }

    def total(names: tuple[str, ...]) -> float:
        present = [per_subtask[n]["score"] for n in names if n in per_subtask]
        return sum(present) if present else math.nan

    return {
        "perception": total(MME_PERCEPTION),
        "cognition": total(MME_COGNITION),
        "per_subtask": per_subtask,
        "count": sum(len(v) for v in questions.values()),
    }


# --------------------------------------------------------------------------- MMBench
def mmbench_accuracy(records: Iterable[Mapping]) -> dict:
    """MMBench accuracy (%) with circular evaluation.

    Each record is one rotation of a question: ``prediction`` (raw text; the option letter is
    read by :func:`extract_choice_letter`), ``answer`` (the correct letter of this rotation),
    ``num_choices``, ``group`` (shared by the rotations of one question), ``category``, and
    optionally ``l2_category`` and ``rotation`` (0 = options in their original order).  A
    question counts as right only when every one of its rotations is answered right.
    Returns ``{"overall", "count" (questions), "rotations" (records), "per_category",
    "per_l2_category" (when given), "vanilla"}``; "vanilla" is the single-pass accuracy of
    the rotation-0 records (NaN without any).
    """
    groups: dict[Hashable, list[bool]] = defaultdict(list)
    info: dict[Hashable, Mapping] = {}
    vanilla: list[float] = []
    for r in records:
        right = extract_choice_letter(r["prediction"], r["num_choices"]) == r["answer"]
        groups[r["group"]].append(right)
        info.setdefault(r["group"], r)
        if r.get("rotation") == 0:
            vanilla.append(float(right))
    scores = {g: float(all(v)) for g, v in groups.items()}
    out: dict = {
        "overall": _percent(list(scores.values())),
        "count": len(scores),
        "rotations": sum(len(v) for v in groups.values()),
    }
    for key, name in (("category", "per_category"), ("l2_category", "per_l2_category")):
        if any(info[g].get(key) for g in scores):
            by: dict[str, list[float]] = defaultdict(list)
            for g, score in scores.items():
                by[info[g].get(key) or ""].append(score)
            out[name] = {k: _percent(v) for k, v in sorted(by.items())}
    out["vanilla"] = _percent(vanilla)
    return out


# --------------------------------------------------------------------------- multiple choice (TVQA, How2QA)
def multiple_choice_accuracy(records: Iterable[Mapping]) -> dict:
    """Accuracy (%) of single-pass multiple-choice answers (TVQA, How2QA: the paper's Table 8).

    Each record: ``prediction`` (raw model text; its option letter is read by
    :func:`extract_choice_letter`, so "The answer is B" and "(B) ..." count, a letter beyond the
    options or no letter is wrong), ``answer`` (the correct letter), ``num_choices`` and optionally
    ``question_type`` (TVQA: the show).  Returns ``{"overall", "count", "per_type"}``.
    """
    scores: dict[int, float] = {}
    types: dict[int, str] = {}
    for i, r in enumerate(records):
        scores[i] = float(extract_choice_letter(r["prediction"], r["num_choices"]) == r["answer"])
        types[i] = r.get("question_type") or ""
    return _summarise(scores, types)
