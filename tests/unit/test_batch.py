"""penstock batch, the pure parts: items, the ordered output and its checkpoint, the
concurrency controller, the plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from penstock.api import PipelineSpec
from penstock.batch.checkpoint import CheckpointError, OrderedOutput, checkpoint_path, fingerprint
from penstock.batch.control import ConcurrencyController
from penstock.batch.floors import FloorsError, parse_target, plan_floors, raise_patch, restore_patch
from penstock.batch.items import count_lines, parse_item
from penstock.batch.plan import balance
from penstock.batch.progress import Progress


def test_a_line_is_an_item_or_an_error_naming_the_line() -> None:
    item = parse_item(0, b'{"b": 1, "a": "x", "id": 7}\n', "id", 100)
    assert (item.body, item.id, item.error) == (b'{"a":"x","b":1,"id":7}', 7, None)
    assert parse_item(2, b"{nope\n", None, 100).error.startswith("input line 3 is not valid JSON")  # type: ignore[union-attr]
    assert (
        parse_item(0, b"  \r\n", None, 100).error
        == "input line 1: empty line (one JSON value per line)"
    )
    assert "over --max-line-bytes" in str(parse_item(0, b'"' + b"x" * 200 + b'"', None, 100).error)
    assert "NaN" in str(parse_item(0, b'{"a": NaN}', None, 100).error)
    assert parse_item(0, b"[1, 2]", "id", 100).id is None


def test_count_lines_counts_a_last_line_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"1\n2\n3")
    assert count_lines(str(path)) == 3
    path.write_bytes(b"1\n2\n")
    assert count_lines(str(path)) == 2
    assert count_lines("-") is None
    assert count_lines("https://example.invalid/x") is None


def test_records_are_written_in_input_order(tmp_path: Path) -> None:
    output = OrderedOutput(tmp_path / "out.jsonl", "run")
    assert output.open() == 0
    for index in (2, 0, 3, 1):
        output.put(index, {"index": index})
    assert output.done == 4
    output.close(complete=True)
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == [0, 1, 2, 3]
    state = json.loads(checkpoint_path(tmp_path / "out.jsonl").read_text())
    assert (state["done"], state["complete"]) == (4, True)
    again = OrderedOutput(tmp_path / "out.jsonl", "run")
    assert again.open() == 4
    assert again.complete
    with pytest.raises(CheckpointError, match="input line 2 has a record already"):
        again.put(1, {})
    again.close(complete=True)


def test_a_resumed_output_drops_what_came_after_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    first = OrderedOutput(path, "run", sync_seconds=3600)
    first.open()
    first.put(0, {"index": 0})
    first.put(1, {"index": 1})
    first.sync()
    first.put(2, {"index": 2})
    assert first._file is not None
    first._file.write(b'{"index": 3, "torn')  # killed mid-write: never synced
    first._file.flush()
    # no close(): the process died
    resumed = OrderedOutput(path, "run")
    assert resumed.open() == 2
    resumed.put(2, {"index": 2})
    resumed.close(complete=True)
    assert [json.loads(line)["index"] for line in path.read_text().splitlines()] == [0, 1, 2]


def test_an_output_of_another_run_or_without_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    output = OrderedOutput(path, fingerprint("http://a/", "in.jsonl", {}))
    output.open()
    output.close()
    other = OrderedOutput(path, fingerprint("http://b/", "in.jsonl", {}))
    with pytest.raises(CheckpointError, match="belongs to another batch run"):
        other.open()
    stray = tmp_path / "results.jsonl"
    stray.write_text("precious\n")
    with pytest.raises(CheckpointError, match="not a batch output to resume"):
        OrderedOutput(stray, "run").open()
    assert stray.read_text() == "precious\n"


def simulate(
    controller: ConcurrencyController,
    capacity: float,
    knee: int,
    seconds: int,
    shed_above: int | None = None,
) -> list[int]:
    """A server that serves `capacity` items/s once `knee` are in flight (less below), whose
    latency grows with queueing beyond the knee, and that sheds load above `shed_above`."""
    now, limits = 0.0, []
    for _ in range(seconds * 4):
        limit = controller.limit
        rate = capacity * min(limit, knee) / knee
        latency = max(limit / rate, 1 / capacity * knee)
        for _ in range(int(rate / 4)):
            shed = shed_above is not None and limit > shed_above
            controller.record(latency, ok=not shed, overloaded=shed)
        now += 0.25
        controller.tick(now)
        limits.append(controller.limit)
    return limits


def test_the_controller_climbs_to_the_knee_and_stays_near_it() -> None:
    controller = ConcurrencyController(0.0, start=1, high=256)
    limits = simulate(controller, capacity=400, knee=16, seconds=60)
    settled = limits[len(limits) // 2 :]
    assert min(settled) >= 16 and max(settled) <= 40, settled
    assert controller.peak < 64


def test_the_controller_backs_off_when_the_pipeline_sheds_load() -> None:
    controller = ConcurrencyController(0.0, start=8, high=256)
    limits = simulate(controller, capacity=400, knee=64, seconds=60, shed_above=20)
    assert any(d.reason == "overloaded" for d in controller.history)
    settled = limits[len(limits) // 2 :]
    shed_share = sum(1 for limit in settled if limit > 20) / len(settled)
    assert shed_share < 0.25, settled


def test_a_fixed_concurrency_never_moves() -> None:
    controller = ConcurrencyController(0.0, start=64, low=64, high=64)
    assert set(simulate(controller, capacity=400, knee=16, seconds=10, shed_above=8)) == {64}


def test_the_plan_balances_stages_for_one_rate() -> None:
    spec = PipelineSpec.model_validate(
        {
            "stages": [
                {"name": "a", "image": "x:1", "scaling": {"maxReplicas": 8}},
                {
                    "name": "b",
                    "image": "x:1",
                    "dependsOn": ["a"],
                    "scaling": {"maxReplicas": 4, "targetUtilization": 0.5},
                },
                {
                    "name": "c",
                    "image": "x:1",
                    "dependsOn": ["b"],
                    "scaling": {"targetThroughputPerReplica": 1000},
                },
            ]
        }
    )
    times = {"c": [1.0], "b": [10.0, 10.0], "a": [50.0, 50.0]}
    plan = balance(times, spec, 42.0, 2)
    by_name = {stage.name: stage for stage in plan.stages}
    assert [stage.name for stage in plan.stages] == ["a", "b", "c"]
    # a: 20/s per replica at 0.7 -> ceil(42 / 14) = 3; b: 100/s at 0.5 -> 1; c: declared 1000/s
    assert (by_name["a"].replicas, by_name["b"].replicas, by_name["c"].replicas) == (3, 1, 1)
    assert by_name["c"].capacity_per_replica == 1000
    assert plan.bottleneck == "a"
    widest = balance(times, spec, None, 2)
    assert widest.target_rps == pytest.approx(20 * 8 * 0.7)
    assert {s.name: s.replicas for s in widest.stages}["a"] == 8


def test_floors_are_raised_to_the_plan_never_lowered_and_restored_only_if_unchanged() -> None:
    pipeline = {
        "spec": {
            "stages": [
                {"name": "a", "image": "x:1"},
                {"name": "b", "image": "x:1", "scaling": {"minReplicas": 5, "maxReplicas": 9}},
                {"name": "c", "image": "x:1", "scaling": {"minReplicas": 1, "maxReplicas": 2}},
                {"name": "d", "image": "x:1"},
            ]
        }
    }
    spec = PipelineSpec.model_validate(pipeline["spec"])
    plan = balance({"a": [50.0], "b": [50.0], "c": [50.0], "d": [0.5]}, spec, 60.0, 1)
    floors = plan_floors(pipeline, plan)
    # a: 20/s at 0.7 -> 5; b: already 5 (kept: 5 is not below the plan); c: capped at its max 2;
    # d: one replica suffices, nothing to raise.
    assert [(f.stage, f.before, f.during) for f in floors] == [("a", None, 5), ("c", 1, 2)]
    assert raise_patch(floors) == [
        {"op": "test", "path": "/spec/stages/0/name", "value": "a"},
        {"op": "add", "path": "/spec/stages/0/scaling", "value": {}},
        {"op": "add", "path": "/spec/stages/0/scaling/minReplicas", "value": 5},
        {"op": "test", "path": "/spec/stages/2/name", "value": "c"},
        {"op": "add", "path": "/spec/stages/2/scaling/minReplicas", "value": 2},
    ]
    assert restore_patch(floors[0])[-1] == {
        "op": "remove",
        "path": "/spec/stages/0/scaling/minReplicas",
    }
    assert restore_patch(floors[1]) == [
        {"op": "test", "path": "/spec/stages/2/name", "value": "c"},
        {"op": "test", "path": "/spec/stages/2/scaling/minReplicas", "value": 2},
        {"op": "replace", "path": "/spec/stages/2/scaling/minReplicas", "value": 1},
    ]
    with pytest.raises(FloorsError, match="expected NAMESPACE/NAME"):
        parse_target("just-a-name")


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere() -> None:
    import io

    terminal = io.StringIO()
    bar = Progress(200, terminal, terminal=True)
    bar.update(done=50, failed=2, rate=10.0, concurrency=8)
    bar.finish()
    text = terminal.getvalue()
    assert text.startswith("\r\x1b[2K[######..................] 50/200")
    assert "10.0 items/s  ETA 0:00:15  errors 2  in flight <= 8" in text
    assert text.endswith("\n")
    log = io.StringIO()
    lines = Progress(None, log, terminal=False, every_seconds=0)
    lines.update(done=5, failed=0, rate=2.5, concurrency=4)
    lines.update(done=9, failed=1, rate=3.0, concurrency=4)
    assert log.getvalue().splitlines() == [
        "penstock batch: 5 done  2.5 items/s  errors 0  in flight <= 4",
        "penstock batch: 9 done  3.0 items/s  errors 1  in flight <= 4",
    ]


def test_an_answer_no_json_line_can_hold_is_an_error_record_and_odd_waits_are_bounded() -> None:
    from penstock.batch.items import Item
    from penstock.batch.runner import _answered, _retry_after

    item = Item(4, b"{}", id="x", position=4)
    assert _answered(item, b'{"a": [1, "\\u00e9"]}') == {
        "index": 4,
        "id": "x",
        "output": {"a": [1, "é"]},
    }
    cut = _answered(item, b'{"text": "cut \\ud83d"}')  # a lone surrogate: an emoji cut in two
    assert "lone surrogate" in cut["error"]["message"] and cut["error"]["status"] == 200
    assert "range of a double" in _answered(item, b'{"x": 1e999}')["error"]["message"]
    assert _answered(item, b"data: one\n\ndata: two\n\n")["output"] == {
        "text": "data: one\n\ndata: two\n\n"
    }
    assert _retry_after({"Retry-After": "\u00b2"}, 0) == 0.5  # not ASCII digits: the backoff
    assert _retry_after({"Retry-After": "0"}, 3) == 0.05  # a floor: no hot loop
    assert _retry_after({"Retry-After": "120"}, 0) == 10.0
