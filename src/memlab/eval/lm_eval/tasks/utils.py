"""Prompt and metric of the context-given QA tasks (based_nq, based_triviaqa, based_drop)."""

from __future__ import annotations

import re

# TriviaQA's evidence documents carry paragraph, document and title markers
_MARKERS = re.compile(r"\[PAR\]|\[DOC\]|\[TLE\]")


def passage_then_question(doc: dict) -> str:
    """The passage (without a copy of the question at its end), a full stop, the question."""
    context = _MARKERS.sub("", doc["context"]).strip()
    question = doc["question"].strip()
    while question and context.lower().endswith(question.lower()):
        context = context[: -len(question)]
    return context.strip().strip(".") + ". " + question


def first_answer(doc: dict) -> str:
    return " " + (doc["answers"][0] if doc["answers"] else "unanswerable")


def contains_answer(prediction: str, answers: list[str]) -> float:
    """1.0 if any answer occurs in the prediction, ignoring case."""
    return float(any(a.lower() in prediction.lower() for a in answers))


def contains(doc: dict, results: list[str]) -> dict[str, float]:
    return {"contains": contains_answer(results[0], doc["answers"])}
