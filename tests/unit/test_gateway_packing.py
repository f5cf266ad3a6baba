"""Prompt packing: building the packed prompt, splitting the answer, and the packer's fallbacks
(the stage call is a fake boundary here; tests/integration/test_gateway_packing.py has a real one).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from penstock.dataplane.gateway.answers import Answer, Failure, Outcome
from penstock.dataplane.gateway.packing import (
    CallerHeaders,
    Packer,
    PackItem,
    PackSettings,
    build_prompt,
    split_answer,
)

SETTINGS = PackSettings(template="Answer {count}:\n{items}", max_prompt_bytes=200)


def test_build_prompt_numbers_the_items() -> None:
    prompt, used = build_prompt(["a?", "b?"], SETTINGS)
    assert (prompt, used) == ("Answer 2:\n1. a?\n2. b?", 2)


def test_build_prompt_stops_before_the_byte_limit() -> None:
    prompt, used = build_prompt(["x" * 90, "y" * 90, "z" * 90], SETTINGS)
    assert used == 2 and len(prompt.encode()) <= 200
    # A first item larger than the limit is still sent (alone, by the packer).
    assert build_prompt(["x" * 500], SETTINGS)[1] == 1


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ('["one", "two", "three"]', ["one", "two", "three"]),
        ('Sure! Here you go:\n["one", "two", "three"]\nAnything else?', ["one", "two", "three"]),
        ('["one", "", 3]', ["one", None, "3"]),
        ('["only one"]', [None, None, None]),  # whose one is it? nobody's
        ('["A", "B1", "B2", "C"]', [None, None, None]),
        ('```json\n["one", "two", "three"]\n```', ["one", "two", "three"]),
        ("1. 42\n2. [3, 4]\n3. x", ["42", "[3, 4]", "x"]),  # brackets inside a numbered list
        ("1. one\n2. two\n3. three", ["one", "two", "three"]),
        ("1) one\ncontinued\n3) three", ["one continued", None, "three"]),
        ("**1.** bold\n**2.** also", ["bold", "also", None]),
        ("1. a\n1. again\n2. b\n9. beyond", [None, "b", None]),  # which 1. is it?
        ("no structure at all", [None, None, None]),
        ("1. pi is\n3.14 or so\n2. two", ["pi is 3.14 or so", "two", None]),
        ("[not json", [None, None, None]),
    ],
)
def test_split_answer(text: str, parts: list[str | None]) -> None:
    assert split_answer(text, 3) == parts


class FakeStage:
    """Answers a packed prompt with numbered answers, leaving out the items in ``drop``."""

    def __init__(self, drop: frozenset[str] = frozenset(), status: int = 200) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.identities: list[CallerHeaders] = []
        self.drop = drop
        self.status = status

    async def call(self, body: bytes, identity: CallerHeaders = ()) -> Outcome:
        document = json.loads(body)
        self.bodies.append(document)
        self.identities.append(identity)
        prompt = str(document["prompt"])
        lines = re.findall(r"^(\d+)\. (.*)$", prompt, re.M)
        if lines:
            text = "\n".join(f"{n}. answer to {q}" for n, q in lines if q not in self.drop)
        else:
            text = f"answer to {prompt}"
        answer = {"text": text, "model": "fake"}
        return Answer(self.status, (), json.dumps(answer).encode(), held_seconds=0.01)


def packer(stage: FakeStage, seen: list[Any]) -> Packer:
    return Packer(
        stage.call,
        SETTINGS,
        stage="llm",
        on_pack=lambda count: seen.append(("pack", count)),
        on_fallback=lambda reason: seen.append(("fallback", reason)),
    )


ALICE: CallerHeaders = (("authorization", "Bearer alice"),)


def bodies(*prompts: str, **rest: Any) -> list[PackItem]:
    """One caller's requests."""
    return [PackItem(json.dumps({"prompt": p, **rest}).encode(), ALICE) for p in prompts]


def texts(outcomes: list[Outcome]) -> list[str]:
    return [json.loads(o.body)["text"] for o in outcomes if isinstance(o, Answer)]


def test_one_call_answers_every_caller_with_its_own_part() -> None:
    stage, seen = FakeStage(), []
    outcomes = asyncio.run(packer(stage, seen).send(bodies("a", "b", "c", max_tokens=5)))
    assert texts(outcomes) == ["answer to a", "answer to b", "answer to c"]
    assert len(stage.bodies) == 1 and stage.bodies[0]["max_tokens"] == 5
    assert seen == [("pack", 3)]
    assert all(isinstance(o, Answer) and o.batch_size == 3 for o in outcomes)
    assert json.loads(outcomes[0].body)["model"] == "fake"  # the rest of the answer is kept


def test_a_missing_part_is_asked_alone() -> None:
    stage, seen = FakeStage(drop=frozenset({"b"})), []
    outcomes = asyncio.run(packer(stage, seen).send(bodies("a", "b", "c")))
    assert texts(outcomes) == ["answer to a", "answer to b", "answer to c"]
    assert [b["prompt"] for b in stage.bodies][1:] == ["b"]
    assert ("fallback", "missing") in seen


def test_different_options_are_never_packed_together() -> None:
    stage, seen = FakeStage(), []
    items = [*bodies("a", "b", temperature=0), *bodies("c", temperature=1)]
    outcomes = asyncio.run(packer(stage, seen).send(items))
    assert texts(outcomes) == ["answer to a", "answer to b", "answer to c"]
    assert sorted(b.get("temperature") for b in stage.bodies) == [0, 1]
    assert seen == [("pack", 2)]  # c went alone: nothing to pack it with, not a fallback


def test_bodies_without_a_string_prompt_go_alone() -> None:
    stage, seen = FakeStage(), []
    items = [*bodies("a", "b"), PackItem(json.dumps({"prompt": ["x"]}).encode(), ALICE)]
    outcomes = asyncio.run(packer(stage, seen).send(items))
    assert len(outcomes) == 3 and ("fallback", "not_packable") in seen


def test_a_failed_packed_call_falls_back_and_failures_stay_per_item() -> None:
    stage, seen = FakeStage(status=500), []
    outcomes = asyncio.run(packer(stage, seen).send(bodies("a", "b")))
    assert seen.count(("fallback", "error")) == 2
    assert [o.status for o in outcomes] == [500, 500]  # each caller gets its own answer


def test_items_beyond_the_byte_limit_go_alone() -> None:
    stage, seen = FakeStage(), []
    outcomes = asyncio.run(packer(stage, seen).send(bodies("x" * 90, "y" * 90, "z" * 90)))
    assert texts(outcomes)[2] == "answer to " + "z" * 90
    assert ("fallback", "too_large") in seen


def test_a_failure_is_the_items_own() -> None:
    async def failing(_body: bytes, _identity: CallerHeaders) -> Outcome:
        return Failure(504, "slow", "llm", "timeout")

    outcomes = asyncio.run(Packer(failing, SETTINGS, stage="llm").send(bodies("a")))
    assert isinstance(outcomes[0], Failure) and outcomes[0].status == 504


def test_callers_never_share_a_call() -> None:
    stage, seen = FakeStage(), []
    alice = (("authorization", "Bearer alice"),)
    bob = (("authorization", "Bearer bob"),)
    items = [
        PackItem(item.body, who)
        for item, who in zip(bodies("a", "b", "c", "d"), [alice, bob] * 2, strict=True)
    ]
    outcomes = asyncio.run(packer(stage, seen).send(items))
    assert texts(outcomes) == ["answer to a", "answer to b", "answer to c", "answer to d"]
    assert sorted(stage.identities) == sorted([alice, bob])  # one packed call each
    packed = {who: body["prompt"] for who, body in zip(stage.identities, stage.bodies, strict=True)}
    assert "a" in packed[alice] and "c" in packed[alice] and "b" not in packed[alice]


def test_callers_that_cannot_be_told_apart_are_never_packed() -> None:
    stage, seen = FakeStage(), []
    anonymous = [PackItem(item.body, (("accept", "*/*"),)) for item in bodies("a", "b", "c")]
    outcomes = asyncio.run(packer(stage, seen).send(anonymous))
    assert texts(outcomes) == ["answer to a", "answer to b", "answer to c"]
    assert [b["prompt"] for b in stage.bodies] == ["a", "b", "c"] and not seen


def test_an_overloaded_stage_is_not_asked_again_per_item() -> None:
    stage, seen = FakeStage(status=503), []
    outcomes = asyncio.run(packer(stage, seen).send(bodies("a", "b", "c")))
    assert len(stage.bodies) == 1 and [o.status for o in outcomes] == [503] * 3


def test_a_part_keeps_the_sharing_rules_and_not_the_calls_usage() -> None:
    async def call(body: bytes, _identity: CallerHeaders) -> Outcome:
        text = json.dumps({"text": '["x", "y"]', "usage": {"output_tokens": 9}})
        return Answer(200, (("Cache-Control", "private"),), text.encode())

    outcomes = asyncio.run(Packer(call, SETTINGS, stage="llm").send(bodies("a", "b")))
    assert isinstance(outcomes[0], Answer)
    assert ("Cache-Control", "private") in outcomes[0].headers
    assert json.loads(outcomes[0].body) == {"text": "x"}


def test_a_lone_surrogate_in_the_answer_fails_nobody() -> None:
    async def call(body: bytes, _identity: CallerHeaders) -> Outcome:
        return Answer(200, (), b'{"text": "[\\"cut \\ud83d\\", \\"ok\\"]"}')

    outcomes = asyncio.run(Packer(call, SETTINGS, stage="llm").send(bodies("a", "b")))
    assert [o.status for o in outcomes] == [200, 200]
    assert json.loads(outcomes[1].body)["text"] == "ok"
