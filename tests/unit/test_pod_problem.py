"""Why a stage's pods do not start, as the Pipeline status reports it (controller/status.py)."""

from __future__ import annotations

from typing import Any

from penstock.controller.status import pod_problem


def pod(
    name: str = "p", init: list[Any] | None = None, main: list[Any] | None = None, **meta: Any
) -> Any:
    return {
        "metadata": {"name": name, **meta},
        "status": {"initContainerStatuses": init or [], "containerStatuses": main or []},
    }


def test_a_failed_preload_is_named_with_its_exit_code_and_log_tail() -> None:
    preload = {
        "name": "preload",
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 1, "message": "error: sha256\n  mismatch"}},
    }
    assert pod_problem([pod(init=[preload])]) == (
        "init container preload failed (exit 1): error: sha256 mismatch"
    )


def test_an_image_that_is_not_on_the_node_is_named() -> None:
    stage = {
        "name": "stage",
        "state": {"waiting": {"reason": "ErrImageNeverPull", "message": "x:1"}},
    }
    assert pod_problem([pod(main=[stage])]) == "container stage: ErrImageNeverPull: x:1"


def test_starting_running_and_deleted_pods_are_no_problem() -> None:
    starting = {"name": "stage", "state": {"waiting": {"reason": "ContainerCreating"}}}
    running = {"name": "stage", "state": {"running": {}}, "lastState": {}}
    # A container that failed once but runs again is not stuck.
    recovered = {
        "name": "stage",
        "state": {"running": {}},
        "lastState": {"terminated": {"exitCode": 2}},
    }
    gone = pod(
        main=[{"name": "s", "state": {"waiting": {"reason": "ImagePullBackOff"}}}],
        deletionTimestamp="t",
    )
    assert (
        pod_problem([pod(main=[starting]), pod(main=[running]), pod(main=[recovered]), gone])
        is None
    )
    assert pod_problem([]) is None


def test_a_crash_looping_stage_and_a_long_message_is_cut() -> None:
    crash = {
        "name": "stage",
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
    }
    assert pod_problem([pod(main=[crash])]) == "container stage failed (exit 137): OOMKilled"
    long = {"name": "preload", "state": {"terminated": {"exitCode": 1, "message": "y" * 1000}}}
    assert len(pod_problem([pod(init=[long])]) or "") == 300
