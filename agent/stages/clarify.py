"""clarify + ask (planned policy, chat): one question to the user when the prompt is ambiguous in
a way research cannot settle ("my dog", a name with several very different meanings).

Cheap rules decide whether the question is worth considering at all (first-person references,
gaps the analysis itself calls ambiguous, well-known homonyms); a small structured LLM call
decides whether to ask and words the question. `ask` is its own node because a LangGraph
`interrupt` re-runs its node on resume: the LLM decision is not repeated, only the wait for the
answer. The answer joins the prompt and analysis runs again with it. At most one question a
turn; never when `agent.ask_questions` is off (`groundwork run`, `chat --no-questions`).
"""

from __future__ import annotations

import re
from typing import Any

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.types import interrupt
from pydantic import BaseModel, Field

from agent.llm import LLMError
from agent.stage import Result, StageRun
from agent.state import RunState

SYSTEM = """\
A user asked for an image. Before drawing, the assistant will research the named things on the
web. Decide whether the prompt is ambiguous in a way that research CANNOT settle:
- it refers to something only the user knows (their pet, their house, how a person looks), or
- a name has several very different meanings and the prompt does not say which.
If so, set ask=true and write ONE short question to the user that settles it. If research or
common sense can settle it, or the ambiguity would not change the picture, set ask=false.
Answer with a JSON object only."""

USER = """\
Image prompt: {prompt}
What research will look up:
{gaps}
Why this was flagged: {flags}"""


class Clarification(BaseModel):
    """Whether to ask the user one question before researching."""

    ask: bool
    question: str = Field(default="", max_length=300)
    why: str = Field(default="", max_length=300)


_FIRST_PERSON = re.compile(r"\b(my|our|mine|ours|me|us|myself|ourselves)\b", re.IGNORECASE)
_AMBIGUOUS_WHY = re.compile(
    r"\b(ambiguous|ambiguity|could (mean|refer|be)|unclear|several meanings|which one)\b",
    re.IGNORECASE,
)
HOMONYMS = frozenset(
    {
        "jaguar", "puma", "mustang", "beetle", "apple", "blackberry", "mercury", "python",
        "java", "amazon", "corona", "dove", "shell", "galaxy", "phoenix", "titan", "saturn",
        "orion", "nova", "eclipse", "genesis", "polo", "golf", "jetta", "ranger", "bronco",
    }
)  # fmt: skip
"""Names whose meanings look nothing alike (an animal or a car, a fruit or a company)."""


def flags(state: RunState) -> list[str]:
    """Why the prompt may need a question; empty = not worth an LLM call."""
    prompt = state.get("prompt") or ""
    out: list[str] = []
    person = _FIRST_PERSON.search(prompt)
    if person:
        out.append(f"first-person reference {person.group(0)!r}")
    for gap in (state.get("gaps") or {}).get("gaps") or []:
        span = str(gap.get("span", ""))
        if _AMBIGUOUS_WHY.search(str(gap.get("why", ""))):
            out.append(f"the analysis calls {span!r} ambiguous")
        elif {w.lower() for w in re.findall(r"[A-Za-z]+", span)} & HOMONYMS:
            out.append(f"{span!r} names several different things")
    return out


def asked_this_turn(state: RunState) -> bool:
    return (state.get("clarification") or {}).get("turn") == state.get("turn", 1)


def fallback_question(why: list[str]) -> str | None:
    """The question to ask without a usable LLM wording: what only the user can know (their
    own things), or which of a name's meanings they mean."""
    for reason in why:
        if reason.startswith("first-person"):
            return (
                "Research cannot see what is yours: what does it look like (kind, colours, "
                "notable details)?"
            )
    for reason in why:
        match = re.search(r"'([^']+)'", reason)
        if match:
            return f"Which {match.group(1)} do you mean (what should it look like)?"
    return None


async def clarify(run: StageRun) -> Result:
    """Decide whether to ask; the record it writes is what the graph routes on (a question
    without an answer goes to `ask`)."""
    state = run.state
    why = flags(state)
    gaps = (state.get("gaps") or {}).get("gaps") or []
    try:
        decision = await run.structured(
            "clarify",
            Clarification,
            [
                SystemMessage(SYSTEM),
                HumanMessage(
                    USER.format(
                        prompt=state.get("prompt", ""),
                        gaps="\n".join(f"- {g['kind']}: {g['span']}" for g in gaps) or "(nothing)",
                        flags="; ".join(why),
                    )
                ),
            ],
        )
    except LLMError as exc:
        # Without the LLM only the clearest case is asked: what only the user can know.
        person = [w for w in why if w.startswith("first-person")]
        if not person:
            return Result({}, f"no question (the LLM failed: {exc})")
        decision = Clarification(ask=True, question=fallback_question(person) or "", why=person[0])
    question = " ".join(decision.question.split())
    if decision.ask and not question:
        # A weak model says "ask" and leaves the question empty: ask the rule-made one.
        question = fallback_question(why) or ""
    if not decision.ask or not question:
        return Result({}, f"no question ({'; '.join(why)})")
    record = {"turn": state.get("turn", 1), "question": question, "answer": None, "why": why}
    return Result({"clarification": record}, f"asking: {question[:80]}")


def waiting_for_answer(state: RunState) -> bool:
    """A question was asked this turn and has no answer yet."""
    record = state.get("clarification") or {}
    return asked_this_turn(state) and bool(record.get("question")) and record.get("answer") is None


def answered(state: RunState) -> bool:
    """This turn's question got a non-empty answer (analysis runs again with it)."""
    return asked_this_turn(state) and bool((state.get("clarification") or {}).get("answer"))


async def ask(run: StageRun) -> Result:
    """Wait for the user's answer (a LangGraph interrupt); the graph then analyses again with
    it, or goes on without one."""
    state = run.state
    record: dict[str, Any] = dict(state.get("clarification") or {})
    answer = " ".join(str(interrupt({"question": record.get("question", "")}) or "").split())
    record["answer"] = answer
    prompt = state.get("prompt", "")
    if not answer:
        return Result(
            {"clarification": record, "notices": ["no answer to the question; went on without"]},
            "no answer",
        )
    return Result(
        {"clarification": record, "prompt": f"{prompt} ({answer})"}, f"answer: {answer[:80]}"
    )
