"""The app as users reach it: build without loading weights, then drive the API with gradio_client."""

import socket

import numpy as np
import pytest
from PIL import Image

from weights.loaders import MODEL_CACHE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_build_app_loads_no_model():
    import app

    MODEL_CACHE.clear()
    demo = app.build_app()
    assert MODEL_CACHE.keys() == []
    api_names = {dep.api_name for dep in demo.fns.values()}
    assert {"detect", "segment", "pairs"} <= api_names


def test_host_and_port_come_from_flags_or_environment(monkeypatch):
    import app

    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "9001")
    assert (app.parse_args([]).host, app.parse_args([]).port) == ("0.0.0.0", 9001)
    assert app.parse_args(["--host", "127.0.0.2", "--port", "7000"]).port == 7000


@pytest.fixture(scope="module")
def client(tiny_hub_pairs):
    from gradio_client import Client

    import app

    demo = app.build_app()
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                max_file_size=app.MAX_UPLOAD_BYTES)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory):
    from weights.shapes.world import render_scene

    path = tmp_path_factory.mktemp("api") / "scene.png"
    Image.fromarray(render_scene(10_000_777).image).save(path)
    return str(path)


def test_pairs_endpoint(client):
    pairs = client.predict(api_name="/pairs")
    by_name = {p["name"]: p for p in pairs}
    assert by_name["shapes-detection"]["source"] == "builtin"
    assert by_name["rtdetr-r101vd-to-r18vd"]["teacher"] == "PekingU/rtdetr_r101vd_coco_o365"
    assert "non-commercial" in by_name["segformer-b5-to-b0-ade"]["licence"]
    assert {p["task"] for p in pairs} <= {"detection", "segmentation", "classification", "image-classification",
                                          "generation"}
    lite = by_name["efficientnet-lite2-to-lite0"]
    assert lite["status"] == "installed" and lite["source"] == "package" and lite["teacher_params"] == 6_092_072


def test_detect_endpoint(client, scene_file):
    from gradio_client import handle_file

    teacher_img, student_img, report = client.predict(handle_file(scene_file), "shapes-detection", 0.3,
                                                      api_name="/detect")
    assert np.asarray(Image.open(teacher_img)).shape[2] == 3 and student_img
    assert report["pair"] == "shapes-detection"
    assert report["teacher"]["detections"] and {"matched", "missed", "extra"} <= set(report["agreement"])
    box = report["teacher"]["detections"][0]["box"]
    assert len(box) == 4 and 0 <= box[0] < box[2] <= 128


def test_segment_endpoint(client, scene_file):
    from gradio_client import handle_file

    _, _, report, npz = client.predict(handle_file(scene_file), "shapes-segmentation", api_name="/segment")
    assert report["agreement"]["pixel_agreement"] > 0.5
    assert np.load(npz)["student"].shape == (128, 128)


def test_hub_pair_through_the_api(client, scene_file, tiny_hub_pairs):
    from gradio_client import handle_file

    _, _, report = client.predict(handle_file(scene_file), tiny_hub_pairs["detection"], 0.0, api_name="/detect")
    assert report["teacher"]["detections"]


def test_errors_reach_the_client_and_the_app_keeps_serving(client, scene_file, tmp_path):
    from gradio_client import handle_file

    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    cases = [((handle_file(str(corrupt)), "shapes-detection", 0.3), "Could not read the file as an image"),
             ((handle_file(scene_file), "nope", 0.3), "Unknown detection pair"),
             ((handle_file(scene_file), "rtdetr-r50vd-to-r18vd", 0.3), "HF_HUB_OFFLINE")]
    for args, message in cases:
        with pytest.raises(Exception, match=message):
            client.predict(*args, api_name="/detect")
    _, _, report = client.predict(handle_file(scene_file), "shapes-detection", 0.3, api_name="/detect")
    assert report["pair"] == "shapes-detection"


def test_consensus_and_attention_endpoints(client, scene_file):
    from gradio_client import handle_file

    gallery, report = client.predict(handle_file(scene_file), "shapes-segmentation", 0.1, api_name="/consensus")
    assert len(gallery) == 2 * len(report["stages"]) and report["cka"]["matrix"]
    assert {"teacher_layer", "student_layer", "consensus_mean", "consensus_foreground", "consensus_background",
            "energy_foreground_teacher", "energy_foreground_student"} <= set(report["stages"][0])
    *images, report = client.predict(handle_file(scene_file), "shapes-detection", "", api_name="/attention")
    assert len(images) == 3 and report["method"]["teacher"] and report["target"]["kind"] == "box"
    with pytest.raises(Exception, match=r"tau must lie in \[0.001, 100\], got 0"):  # our one check, named
        client.predict(handle_file(scene_file), "shapes-segmentation", 0, api_name="/consensus")
    with pytest.raises(Exception, match="not in the list of choices"):  # the Radio checks its choices
        client.predict(handle_file(scene_file), "shapes-segmentation", 0.1, "magic", api_name="/consensus")


def test_clip_endpoints(client, tmp_path, monkeypatch):
    from gradio_client import handle_file

    from weights import prompt_store

    monkeypatch.setattr(prompt_store, "PROMPT_DIR", tmp_path / "prompts")
    _, report = client.predict(handle_file("demos/examples/single_0.png"), "shapes-clip", "circle, square, triangle",
                               "", "a {}", api_name="/classify")
    assert set(report["teacher"]["probs"]) == {"circle", "square", "triangle"} and "agreement" in report
    name, figures = client.predict("shapes-clip", "red circle, blue square", "coop", "api-prompt", None, 1, 3,
                                   api_name="/tune_prompts")
    assert name == "api-prompt" and figures["method"] == "coop"
    listed = client.predict(api_name="/prompts")
    assert [p["name"] for p in listed if not p["builtin"]] == ["api-prompt"]
    shipped = {p["student"]: p for p in listed if p["builtin"]}  # the shipped boosting prompt of each student
    assert set(shipped) == {"clip-kd", "narrow-captions"} and {p["method"] for p in shipped.values()} == {"caspl"}
    for args, message in ((("circle",), "at least two"), (("circle, square", "../../x"), "Unknown prompt")):
        with pytest.raises(Exception, match=message):
            client.predict(handle_file("demos/examples/single_0.png"), "shapes-clip", *args, api_name="/classify")


def test_generate_endpoint(client, tiny_hub_pairs):
    teacher, student, report = client.predict("a red circle", tiny_hub_pairs["generation"], 1, 64, 64, 2, 4.0,
                                              True, True, api_name="/generate")
    assert np.asarray(Image.open(teacher)).shape == (64, 64, 3) and student
    assert set(report["teacher"]) >= {"seconds", "peak_mem_mb"} and report["settings"]["raunet"]
    with pytest.raises(Exception, match="Enter a prompt"):
        client.predict("", tiny_hub_pairs["generation"], 1, 64, 64, 2, 4.0, False, False, api_name="/generate")
    generation = [p for p in client.predict(api_name="/pairs") if p["task"] == "generation"]
    assert all({"width", "height", "steps", "guidance"} <= set(p) for p in generation)


def test_generate_takes_the_size_of_the_chosen_pair(client, tiny_hub_pairs):
    """/generate bounds width and height by the chosen pair's own native side (4x), not by the page's sliders (set
    for the builtin 64 px pair): 512 x 512 passes on a pair with SD's native 512 px (tiny local models of SD's
    classes), and is refused, with the pair's limit named, on the builtin pair."""
    import dataclasses

    from weights.registry import get_pair, register_pair, unregister_pair

    sd_like = dataclasses.replace(get_pair(tiny_hub_pairs["generation"]), name="tiny-sd-512",
                                  native={"width": 512, "height": 512, "steps": 1, "guidance": 4.0})
    register_pair(sd_like)
    try:
        teacher, _, report = client.predict("a red circle", "tiny-sd-512", 1, 512, 512, 1, 4.0, False, False,
                                            api_name="/generate")
        assert np.asarray(Image.open(teacher)).shape == (512, 512, 3)
        assert (report["settings"]["width"], report["settings"]["height"]) == (512, 512)
    finally:
        unregister_pair("tiny-sd-512")
    with pytest.raises(Exception, match="native 64 px"):
        client.predict("a red circle", "shapes-diffusion", 1, 512, 512, 1, 4.0, False, False, api_name="/generate")


def test_students_through_the_api(client, scene_file):
    """Every model-running endpoint takes ``students`` (a comma-separated string); left out, the first student."""
    from gradio_client import handle_file

    rows = {p["name"]: p for p in client.predict(api_name="/pairs")}
    names = [s["name"] for s in rows["shapes-segmentation"]["students"]]
    assert len(names) >= 2 and all(s["method"] and s["params"] for s in rows["shapes-segmentation"]["students"])
    both = ",".join(names[:2])
    _, _, report, _ = client.predict(handle_file(scene_file), "shapes-segmentation", both, api_name="/segment")
    assert list(report["students"]) == names[:2] and len(report["ranking"]) == 2
    _, _, report = client.predict(handle_file(scene_file), "shapes-detection", 0.3, names[1], api_name="/detect")
    assert list(report["students"]) == [names[1]]
    gallery, report = client.predict(handle_file(scene_file), "shapes-segmentation", 0.1, "affinity", both,
                                     api_name="/consensus")
    assert list(report["students"]) == names[:2] and len(gallery) == sum(
        2 * len(block["stages"]) for block in report["students"].values())
    with pytest.raises(Exception, match="no student 'ghost'"):
        client.predict(handle_file(scene_file), "shapes-detection", 0.3, "ghost", api_name="/detect")
