"""Every long job stops when its caller stops: a ``gradio_client`` job cancelled mid-run ends the server's work at
its next step (nothing saved), and the models serve the next call; each tab's Stop stops its own job only."""

from __future__ import annotations

import socket
import threading
import time
import zipfile

import pytest
from PIL import Image


@pytest.fixture(scope="module")
def server():
    from gradio_client import Client

    import app

    demo = app.build_app()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, show_error=True)
    try:
        yield lambda: Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()


def recorded(module, name: str, monkeypatch) -> list:
    """Wrap ``module.name`` so that each call's outcome (its result, or the exception it raised) is recorded."""
    real, outcomes = getattr(module, name), []

    def spy(*args, **kwargs):
        try:
            result = real(*args, **kwargs)
        except BaseException as error:
            outcomes.append(error)
            raise
        outcomes.append(result)
        return result

    monkeypatch.setattr(module, name, spy)
    return outcomes


def cancel_when_running(job, started: threading.Event | None = None, after: float = 1.0) -> None:
    from gradio_client.utils import Status

    deadline = time.monotonic() + 60
    while job.status().code != Status.PROCESSING and time.monotonic() < deadline:
        time.sleep(0.05)
    if started is not None:
        started.wait(60)
    time.sleep(after)
    job.cancel()


def wait_for(outcomes: list, timeout: float = 120) -> object:
    deadline = time.monotonic() + timeout
    while not outcomes and time.monotonic() < deadline:
        time.sleep(0.1)
    assert outcomes, "the server's run never ended"
    return outcomes[-1]


def test_an_api_cancel_stops_a_generation_within_a_step(server, monkeypatch, slow_steps):
    from compare.jobs import Cancelled
    from demos import diffusion

    outcomes = recorded(diffusion, "generate", monkeypatch)
    client = server()
    job = client.submit("a red circle", "shapes-diffusion", 0, 64, 64, 150, 4.0, False, False, api_name="/generate")
    cancel_when_running(job)
    outcome = wait_for(outcomes)
    assert isinstance(outcome, Cancelled) and "stopped at the" in str(outcome), outcome  # before its last step
    assert "student's step 150/150" not in str(outcome)
    # the models are free for the next call
    *_, report = server().predict("a blue square", "shapes-diffusion", 1, 64, 64, 2, 4.0, False, False,
                                  api_name="/generate")
    assert report["teacher"]["steps"] == 2


def test_an_api_cancel_stops_prompt_tuning_and_saves_nothing(server, monkeypatch, tmp_path, slow_steps):
    from compare.jobs import Cancelled
    from demos import classification
    from weights import prompt_store

    monkeypatch.setattr(prompt_store, "PROMPT_DIR", tmp_path)
    outcomes = recorded(classification, "tune_prompts", monkeypatch)
    job = server().submit("shapes-clip", "red circle, blue square", "coop", "", None, 4, 500, "", "",
                          api_name="/tune_prompts")
    cancel_when_running(job)
    outcome = wait_for(outcomes)
    assert isinstance(outcome, Cancelled) and "nothing was saved" in str(outcome), outcome
    assert [p for p in prompt_store.list_prompts(tmp_path) if not p["builtin"]] == []


def test_an_api_cancel_stops_a_dataset_run(server, monkeypatch, tmp_path, slow_steps):
    from gradio_client import handle_file

    from demos import dataset
    from weights.shapes.world import render_scene

    archive = tmp_path / "scenes.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for i in range(500):  # the tab's most
            path = tmp_path / f"scene_{i:03d}.png"
            Image.fromarray(render_scene(10_000_600 + i).image).save(path)
            bundle.write(path, path.name)
    outcomes = recorded(dataset, "run_dataset", monkeypatch)
    job = server().submit(handle_file(str(archive)), "shapes-detection", "", None, "circle, square", 0.3,
                          api_name="/dataset")
    cancel_when_running(job, after=0.5)
    assert wait_for(outcomes) is None  # stopped before the end: no summary


def test_each_stop_button_stops_its_own_job_only():
    from demos.jobs import request_stop, stop_flag

    generation, prompts = stop_flag("session", "generation"), stop_flag("session", "prompts")
    request_stop("session", "dataset")  # the Dataset tab's Stop, with no dataset run going
    assert not generation.is_set() and not prompts.is_set()
    request_stop("session", "prompts")
    assert prompts.is_set() and not generation.is_set()


def test_two_clients_prompts_are_kept_apart(server, monkeypatch, tmp_path):
    """Each caller sees, saves and is limited to its own prompts: no one can evict or overwrite another's."""
    from weights import prompt_store

    monkeypatch.setattr(prompt_store, "PROMPT_DIR", tmp_path)
    monkeypatch.setattr(prompt_store, "MAX_PROMPTS_PER_PAIR", 1)
    alice, bob = server(), server()
    args = ("shapes-clip", "red circle, blue square", "coop", "mine", None, 1, 1, "", "")
    assert alice.predict(*args, api_name="/tune_prompts")[0] == "mine"
    assert bob.predict(*args, api_name="/tune_prompts")[0] == "mine"  # the same name, in bob's own folder
    bob.predict(*args[:3], "bobs-second", *args[4:], api_name="/tune_prompts")  # bob's limit evicts bob's only
    own = {name: [p["name"] for p in client.predict(api_name="/prompts") if not p["builtin"]]
           for name, client in (("alice", alice), ("bob", bob))}
    assert own == {"alice": ["mine"], "bob": ["bobs-second"]}
    from gradio_client import handle_file

    image = handle_file(str(prompt_store.BUILTIN_PROMPT_DIR.parent.parent / "demos/examples/single_0.png"))
    *_, report = alice.predict(image, "shapes-clip", "red circle, blue square", "mine", "", "", api_name="/classify")
    assert "learned prompt 'mine'" in report["students"]["clip-kd"]["prompt"]


def test_stop_is_an_outcome_on_the_page_not_an_error():
    """A stopped job empties its tab's outputs and says where it stopped, in words and a neutral notice; other
    errors still reach the page as errors."""
    from compare.inputs import InputError
    from compare.jobs import Cancelled
    from demos.jobs import stopped_as_outcome, user_errors

    def stopped():
        raise Cancelled("Generation stopped at the teacher's step 3/25.")

    def failed():
        raise InputError("Give a prompt.")

    assert user_errors(stopped_as_outcome(stopped, 3, message_at=1))() == (
        None, "**Stopped.** Generation stopped at the teacher's step 3/25.", None)
    assert stopped_as_outcome(lambda: ("a", "b"), 2)() == ("a", "b")
    import gradio as gr

    with pytest.raises(gr.Error, match="Give a prompt"):
        user_errors(stopped_as_outcome(failed, 2))()
