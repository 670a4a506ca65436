"""Evaluation metrics for the MemVP paper's tasks: ScienceQA, VQAv2, GQA, COCO captions, and the
LLaVA-1.5 benchmarks of its Table 9: POPE, MME, MMBench; and the multiple-choice video QA of its
Table 8 (TVQA, How2QA).

Pure Python; depends on nothing else in memvp.  ``cider_d`` additionally needs
``pycocoevalcap`` (imported lazily, only when called), and tokenizes with its Java PTB tokenizer when
``java`` is on PATH (:func:`caption_tokenizer`).

All accuracies are returned in percent and are not rounded (the official scripts round to
two decimals only when printing).  A group with no samples gets ``math.nan``.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import string
import subprocess
import tempfile
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence

__all__ = [
    "CHOICE_RULES",
    "FULL_RESPONSE_RULES",
    "extract_choice_letter",
    "scienceqa_accuracy",
    "normalize_vqa_answer",
    "evalai_answer",
    "vqa_score",
    "vqa_accuracy",
    "gqa_accuracy",
    "ptb_tokenize",
    "ptb_tokenize_java",
    "CAPTION_TOKENIZERS",
    "caption_tokenizer",
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
CHOICE_RULES = ("default", "memvp", "llava", "vlmevalkit")
"""How a multiple-choice answer's letter is read (:func:`extract_choice_letter`): 'default' (tolerant),
'memvp' (the official MemVP ``eval.py``), 'llava' (LLaVA's ``eval_science_qa.py``) or 'vlmevalkit'
(VLMEvalKit's ``can_infer``: option letters and option text)."""
FULL_RESPONSE_RULES = ("llava", "vlmevalkit")
"""Rules of tools that read a model's whole answer (the ``text`` of LLaVA's answers file), so a scorer gives
them the answer prefix a generation prompt ended with too ("The answer is" + "B." -> "The answer is B.");
the others read only what the model generated after it, as the official MemVP ``eval.py`` does."""


def extract_choice_letter(
    prediction: str, num_choices: int, rule: str = "default", choices: Sequence[str] | None = None
) -> str | None:
    """The option letter a model's multiple-choice output picks, or None.

    'default' rules, in order (those of LLaVA's ``eval_science_qa.py`` / LaVIN / MemVP's ``eval.py``,
    made a little more tolerant): the stripped text is a bare letter ("B"); it contains
    "The answer is B" / "The answer is (B)"; it starts with "B." / "B:" / "(B)" / "B)".
    Upper case only, so the article in "A cat ..." is not read as option A. 'memvp': the first
    capital letter anywhere (``re.findall(r'([A-Z])', ...)[0]``; the official code generates one token
    after "The answer is"). 'llava': LLaVA's ``eval_science_qa.py`` exactly (:func:`_llava_letter`).
    'vlmevalkit': VLMEvalKit's ``can_infer`` exactly (:func:`_vlmevalkit_letter`), which also matches
    the text of an option, so it needs ``choices`` (the options' texts in letter order). A letter
    beyond the first ``num_choices`` options gives None (the official scripts count it as wrong).
    """
    if rule not in CHOICE_RULES:
        raise ValueError(f"unknown multiple-choice rule {rule!r}; rules: {list(CHOICE_RULES)}")
    valid = string.ascii_uppercase[:num_choices]
    if rule == "llava":
        letter = _llava_letter(prediction, num_choices)
    elif rule == "vlmevalkit":
        if choices is None:
            raise ValueError("the 'vlmevalkit' rule matches option text too: give the options' texts (choices)")
        letter = _vlmevalkit_letter(prediction, dict(zip(valid, (str(c) for c in choices))))
    elif rule == "memvp":
        match = _CAPITAL_RE.search(prediction.strip())
        letter = match.group(1) if match else None
    else:
        text = prediction.strip()
        if len(text) == 1:
            letter = text
        elif match := _ANSWER_IS_RE.search(text) or _LEADING_LETTER_RE.match(text):
            letter = match.group(1)
        else:
            letter = None
    return letter if letter is not None and letter in valid else None


# LLaVA (haotian-liu/LLaVA, llava/eval/eval_science_qa.py at c121f04): its --options default (A-E, so a sixth
# option is never read) and the pattern it searches for, whose "." is any character, not a period.
_LLAVA_OPTIONS = ("A", "B", "C", "D", "E")
_LLAVA_ANSWER_IS_RE = re.compile(r"The answer is ([A-Z]).")


def _llava_letter(text: str, num_choices: int) -> str | None:
    """LLaVA's ``eval_science_qa.py``: the whole text is an option letter; or it is a letter, ". " and
    more; or ``The answer is X.`` (any character after X, so a bare "The answer is B" at the end is not
    read) occurs exactly once. Then ``get_pred_idx``: a letter beyond the question's choices is wrong.
    The text is stripped first, as LLaVA's ``model_vqa_science.py`` strips the output it writes."""
    text = text.strip()
    if text in _LLAVA_OPTIONS:
        answer = text
    elif len(text) >= 3 and text[0] in _LLAVA_OPTIONS and text[1:3] == ". ":
        answer = text[0]
    else:
        found = _LLAVA_ANSWER_IS_RE.findall(text)
        answer = found[0] if len(found) == 1 else None
    return answer if answer in _LLAVA_OPTIONS[:num_choices] else None


# VLMEvalKit (open-compass/VLMEvalKit, vlmeval/utils/matching_util.py at e8e78f05: can_infer_option,
# can_infer_text, can_infer), as its MMBench evaluation uses it without a judge model ("exact_matching":
# vlmeval/dataset/utils/multiple_choice.py, extract_answer_from_item; no match there is option 'Z', wrong).
_VLMEVALKIT_REJECTIONS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_VLMEVALKIT_VERBOSE_RE = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")


def _vlmevalkit_option(answer: str, choices: dict[str, str]) -> str | bool:
    """``can_infer_option`` with ``VERBOSE`` unset (its default: the "A might be a quantifier" check is off)."""
    if "Failed to obtain answer via API" in answer:
        return False
    if any(err in answer for err in _VLMEVALKIT_REJECTIONS):
        return "Z"
    answer_mod = answer
    for c in ".()[],:;!*#{}":
        answer_mod = answer_mod.replace(c, " ")
    splits = [x.strip() for x in answer_mod.split()]
    count = sum(c in splits for c in choices)
    if count == 1:
        for ch in choices:
            if ch in splits and splits.index(ch) > len(splits) - 5:
                return ch
    elif count == 0 and sum(c in splits for c in ("Z", "")) == 1:
        return "Z"
    match = _VLMEVALKIT_VERBOSE_RE.search(answer or "")
    if match and match.group(1).upper() in choices:
        return match.group(1).upper()
    return False


def _vlmevalkit_text(answer: str, choices: dict[str, str]) -> str | bool:
    """``can_infer_text``: the one option whose text (lower-cased) occurs in the answer, when the answer is
    at most twice as long as all the options together."""
    answer = answer.lower()
    if len(answer) > 2 * sum(len(v) for v in choices.values()):
        return False
    found = [k for k, v in choices.items() if v.lower() in answer]
    return found[0] if len(found) == 1 else False


def _vlmevalkit_letter(answer: str, choices: dict[str, str]) -> str | None:
    """``can_infer``: the option letter, else the option text; None for no match (and for 'Z', a refusal)."""
    found = _vlmevalkit_option(answer, choices) or _vlmevalkit_text(answer, choices)
    return found if found and found in choices else None


_SCIENCEQA_SUBJECTS = {"NAT": "natural science", "SOC": "social science", "LAN": "language science"}


def scienceqa_accuracy(records: Iterable[Mapping], rule: str = "default") -> dict[str, float]:
    """ScienceQA accuracy (%) as in Table 2 of the MemVP paper.

    Each record: ``prediction`` (raw model text), ``answer`` (correct letter), ``num_choices``,
    ``subject``, ``grade`` ("grade1".."grade12"), ``has_text_context`` (non-empty hint),
    ``has_image_context``, and ``choices`` (the options' texts) for the 'vlmevalkit' rule.  Columns follow
    lupantech/ScienceQA ``tools/evaluate_acc.py``: TXT = has a text context (with or without image), IMG =
    has an image (with or without text), so TXT and IMG overlap; NO = neither; G1-6 / G7-12 by grade number.
    Returns keys Average, NAT, SOC, LAN, TXT, IMG, NO, G1-6, G7-12 (NaN when a column has no
    samples), count, and the letter-reading ``rule`` (``extract_choice_letter``).
    """
    columns: dict[str, list[float]] = {
        k: [] for k in ("Average", "NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12")
    }
    for r in records:
        correct = float(extract_choice_letter(r["prediction"], r["num_choices"], rule, r.get("choices")) == r["answer"])
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


# LLaVA's VQAv2 submission (scripts/convert_vqav2_for_submission.py) passes every answer through
# EvalAIAnswerProcessor (llava/eval/m4c_evaluator.py, from facebookresearch/mmf): the tables above (the same
# ones), but a word step first and a comma test of its own.
_EVALAI_COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")


def evalai_answer(text: str) -> str:
    """An answer as LLaVA's ``EvalAIAnswerProcessor`` writes it for the VQAv2 test server: lower-cased,
    "," and "?" dropped, "'s" split off (" 's"), newlines and tabs to spaces, stripped, then the VQA
    punctuation, number-word and article steps ("Two dogs." -> "2 dogs")."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    out = text
    for p in _PUNCT:
        if p + " " in text or " " + p in text or _EVALAI_COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD_STRIP.sub("", out, count=int(re.UNICODE))  # re.UNICODE passed as the count, as there
    return _process_digit_article(out)


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
# The official COCO caption evaluation (pycocoevalcap's PTBTokenizer) tokenizes with Stanford CoreNLP 3.4.1
# through a `java` subprocess: `ptb_tokenize_java` runs that jar the same way, `ptb_tokenize` is a
# pure-Python approximation for machines without Java, and `caption_tokenizer` picks (the metrics name it).
# The approximation of the Java output for captions (`-lowerCase`, then pycocoevalcap drops its
# PUNCTUATIONS tokens): lower-case; punctuation split off and dropped; words keep inner hyphens/apostrophes
# ("black-and-white", "o'clock"); numbers keep inner "." and "," ("3.5", "1,000"); clitics split as PTB does
# ("man's" -> "man 's", "don't" -> "do n't", "cannot" -> "can not").  Other symbols ("&", "$", "%") stay
# as tokens, as in PTB.  Known differences: brackets are dropped, where the Java tokenizer writes
# "-lrb-" / "-rrb-" / "-lsb-" ... (lower-cased, so pycocoevalcap's "-LRB-" entries never drop them), and
# rare PTB splits such as "gonna" -> "gon na" are not done.
_PTB_TOKEN_RE = re.compile(r"\d+(?:[.,]\d+)+|\w+(?:['-]\w+)*|[^\w\s]")
_PTB_CLITIC_RE = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
_PTB_DROPPED = set("'`\".?!,:;-()[]{}")
CAPTION_TOKENIZERS = ("ptb-java", "ptb-python")
"""'ptb-java': pycocoevalcap's Stanford PTB tokenizer (needs ``java``), as the official COCO caption
evaluation; 'ptb-python': :func:`ptb_tokenize`."""


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


def ptb_tokenize_java(captions: Sequence[str]) -> list[str]:
    """Space-joined tokens of each caption by pycocoevalcap's PTBTokenizer: its command (``java -cp
    stanford-corenlp-3.4.1.jar edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase``) on one
    caption per line, then its PUNCTUATIONS tokens dropped. Run here rather than through
    ``PTBTokenizer.tokenize``, which writes its temporary file into the installed package's folder."""
    from pycocoevalcap.tokenizer import ptbtokenizer  # optional dependency

    java = shutil.which("java")
    if java is None:
        raise ValueError("the Java PTB tokenizer needs java on PATH (apt-get install default-jre-headless)")
    jar = os.path.join(os.path.dirname(os.path.abspath(ptbtokenizer.__file__)), ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    command = [java, "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"]
    with tempfile.TemporaryDirectory(prefix="memvp-ptb-") as folder:
        path = os.path.join(folder, "captions.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(c.replace("\n", " ") for c in captions))
        done = subprocess.run([*command, path], capture_output=True)
    lines = done.stdout.decode("utf-8").split("\n")
    blank_tail = len(captions) - len(lines)
    if done.returncode == 0 and blank_tail > 0 and not "".join(captions[len(lines) :]).strip():
        lines += [""] * blank_tail  # the tokenizer leaves out the line breaks of blank captions at the end
    if done.returncode != 0 or len(lines) < len(captions):
        problem = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        raise ValueError(
            f"the Java PTB tokenizer ({jar}) failed: {problem[0]}; fix java, or take it off PATH to use the "
            "Python tokenizer"
        )
    dropped = set(ptbtokenizer.PUNCTUATIONS)
    return [" ".join(w for w in line.rstrip().split(" ") if w not in dropped) for line in lines[: len(captions)]]


def caption_tokenizer() -> str:
    """The tokenizer :func:`cider_d` uses by default: 'ptb-java' when ``java`` is on PATH (the official
    evaluation's), else 'ptb-python'."""
    return "ptb-java" if shutil.which("java") else "ptb-python"


def cider_d(
    predictions: Mapping[Hashable, str], references: Mapping[Hashable, list[str]], tokenizer: str | None = None
) -> float:
    """Corpus CIDEr-D of COCO-style captions (the "CIDEr" of coco-caption / pycocoevalcap).

    Captions are tokenised by ``tokenizer`` (:data:`CAPTION_TOKENIZERS`; None: :func:`caption_tokenizer`)
    and scored by pycocoevalcap's ``Cider`` (n-grams 1..4, idf from the references of the evaluated images,
    clipped tf-idf, Gaussian length penalty with sigma 6, x10, mean over images).  Because idf comes
    from the evaluated set, a corpus of one image always scores 0.
    """
    from pycocoevalcap.cider.cider import Cider  # optional dependency

    tokenizer = tokenizer or caption_tokenizer()
    if tokenizer not in CAPTION_TOKENIZERS:
        raise ValueError(f"unknown caption tokenizer {tokenizer!r}; tokenizers: {list(CAPTION_TOKENIZERS)}")
    _check_same_ids(predictions, references)
    keys = list(references)
    captions = [c for k in keys for c in (*references[k], predictions[k])]
    if tokenizer == "ptb-java":
        tokens = iter(ptb_tokenize_java(captions))  # one JVM for the whole corpus
    else:
        tokens = iter([ptb_tokenize(c) for c in captions])
    gts, res = {}, {}
    for k in keys:
        gts[k] = [next(tokens) for _ in references[k]]
        res[k] = [next(tokens)]
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
def mmbench_accuracy(records: Iterable[Mapping], rule: str = "default") -> dict:
    """MMBench accuracy (%) with circular evaluation.

    Each record is one rotation of a question: ``prediction`` (raw text; the option letter is
    read by :func:`extract_choice_letter` with ``rule``), ``answer`` (the correct letter of this
    rotation), ``num_choices``, ``group`` (shared by the rotations of one question), ``category``, and
    optionally ``l2_category``, ``rotation`` (0 = options in their original order) and ``choices``
    (the options' texts as shown; the 'vlmevalkit' rule, VLMEvalKit's matching, needs them).  A
    question counts as right only when every one of its rotations is answered right.
    Returns ``{"overall", "count" (questions), "rotations" (records), "per_category",
    "per_l2_category" (when given), "vanilla", "rule"}``; "vanilla" is the single-pass accuracy of
    the rotation-0 records (NaN without any).
    """
    groups: dict[Hashable, list[bool]] = defaultdict(list)
    info: dict[Hashable, Mapping] = {}
    vanilla: list[float] = []
    for r in records:
        right = extract_choice_letter(r["prediction"], r["num_choices"], rule, r.get("choices")) == r["answer"]
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
    out["rule"] = rule
    return out


# --------------------------------------------------------------------------- multiple choice (TVQA, How2QA)
def multiple_choice_accuracy(records: Iterable[Mapping], rule: str = "default") -> dict:
    """Accuracy (%) of single-pass multiple-choice answers (TVQA, How2QA: the paper's Table 8).

    Each record: ``prediction`` (raw model text; its option letter is read by
    :func:`extract_choice_letter` with ``rule``, so by 'default' "The answer is B" and "(B) ..." count; a
    letter beyond the options or no letter is wrong), ``answer`` (the correct letter), ``num_choices``,
    optionally ``question_type`` (TVQA: the show) and ``choices`` (the options' texts, which the
    'vlmevalkit' rule needs).  Returns ``{"overall", "count", "per_type", "rule"}``.
    """
    scores: dict[int, float] = {}
    types: dict[int, str] = {}
    for i, r in enumerate(records):
        letter = extract_choice_letter(r["prediction"], r["num_choices"], rule, r.get("choices"))
        scores[i] = float(letter == r["answer"])
        types[i] = r.get("question_type") or ""
    return {**_summarise(scores, types), "rule": rule}
