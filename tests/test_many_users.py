"""Many users at once: overlapping calls see only their own state, wait in one GPU queue, and load models once."""

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from analysis.features import capture_modules
from demos.diffusion import generate
from weights.loaders import ModelCache


def test_overlapping_generate_calls_at_different_sizes_match_one_at_a_time(tiny_hub_pairs):
    """Two of three such calls failed when every call swapped modules on the shared UNet."""
    pair = tiny_hub_pairs["generation"]
    requests = [dict(width=w, height=h, seed=s) for w, h, s in ((128, 128, 1), (64, 96, 2), (96, 64, 3),
                                                                (128, 72, 4))]

    def run(r):
        return generate("a red circle", pair, steps=3, raunet=True, msw_msa=True, **r)

    alone = [run(r) for r in requests]
    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(run, requests * 2))
    for (t1, s1, _), (t2, s2, _) in zip(alone * 2, together, strict=True):
        assert np.array_equal(t1, t2) and np.array_equal(s1, s2)


def test_a_hugging_face_tokenizer_is_used_by_one_call_at_a_time(tiny_hub_pairs, monkeypatch):
    """The root of a race the test above caught once in ~40 runs: a fast tokenizer keeps its truncation and padding
    on the shared Rust object, and a call that counts a prompt's tokens (no truncation) while another call's
    pipeline encodes it (padded to 77) can hand the pipeline an unpadded prompt: a different image, no error. Every
    use goes through the tokenizer's one lock, the same that exclusive() takes for the pipeline's run."""
    from weights.families import shared_lock
    from weights.families.diffusers import load_generation_pair
    from weights.registry import get_pair

    tokenizer = load_generation_pair(get_pair(tiny_hub_pairs["generation"]))["teacher"].tokenizer
    # what makes it unsafe: one call's settings stay on the shared tokenizer for the next caller
    tokenizer("a red circle", padding="max_length", max_length=77, truncation=True)
    tokenizer("a red circle", truncation=False)
    assert tokenizer.backend_tokenizer.padding is None  # the first caller's padding is gone
    held, while_held = threading.Event(), []
    original = type(tokenizer).__call__

    def spy(self, *args, **kwargs):
        if self is tokenizer:
            while_held.append(held.is_set())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer), "__call__", spy)
    worker = threading.Thread(target=generate, args=("a red circle", tiny_hub_pairs["generation"]),
                              kwargs={"steps": 1, "width": 64, "height": 64})
    with shared_lock(tokenizer):  # another call is tokenizing for a while
        held.set()
        worker.start()
        time.sleep(1.0)
        held.clear()
    worker.join(60)
    assert while_held and not any(while_held)  # generate's notes and its pipelines' encoding all waited


def test_a_clip_predictors_tokenizer_calls_hold_the_shared_lock(tiny_hub_pairs):
    from weights.families import shared_lock
    from weights.predictors import predictors_for
    from weights.registry import get_pair

    spec = get_pair(tiny_hub_pairs["classification"])
    student = predictors_for(spec, students=spec.choose_students(None))[spec.students[0].name]
    tokenizer, done = student.processor[1], []
    assert student.tokenizer.wrapped is tokenizer and student.tokenizer.context_length == tokenizer.context_length
    with shared_lock(tokenizer):
        workers = [threading.Thread(target=lambda f=f: done.append(f())) for f in (
            lambda: student.tokenizer(["a circle"]), lambda: student.text_features(["a circle"]),
            lambda: student.family.token_counts(student, ["a circle"]))]
        for worker in workers:
            worker.start()
        time.sleep(1.0)
        assert done == []  # all three wait while another call holds the tokenizer
    for worker in workers:
        worker.join(30)
    assert len(done) == 3


def test_hooks_record_only_the_forwards_of_the_call_that_asked():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    inside, done = threading.Event(), threading.Event()
    recorded = {}

    def asker():
        with capture_modules(model, r"0") as captured:
            inside.set()
            done.wait(5)  # another user's forward runs now
            recorded["before"] = dict(captured)
            model(torch.ones(1, 4))
            recorded["after"] = dict(captured)

    thread = threading.Thread(target=asker)
    thread.start()
    inside.wait(5)
    model(torch.zeros(1, 4))  # someone else's call through the same cached model
    done.set()
    thread.join()
    assert recorded["before"] == {} and list(recorded["after"]) == ["0"]


def test_a_loading_model_blocks_only_the_calls_that_need_it():
    cache, loads = ModelCache(max_bytes=10**9, sizeof=lambda _v: 1), []

    def slow():
        loads.append("slow")
        time.sleep(0.5)
        return "big model"

    with ThreadPoolExecutor(4) as pool:
        waiting = [pool.submit(cache.get_or_load, "big", slow) for _ in range(3)]
        time.sleep(0.05)
        start = time.perf_counter()
        assert cache.get_or_load("small", lambda: "small model") == "small model"
        assert time.perf_counter() - start < 0.3  # did not wait for the big load
        assert [f.result() for f in waiting] == ["big model"] * 3
    assert loads == ["slow"]  # loaded once for all three callers


def test_every_event_that_runs_a_model_waits_in_the_one_gpu_queue():
    import app

    demo = app.build_app()
    running = {"detect", "segment", "classify", "consensus", "attention", "generate", "tune_prompts"}
    found = {fn.api_name: fn.concurrency_id for fn in demo.fns.values() if fn.api_name in running}
    assert set(found) == running and set(found.values()) == {"gpu"}


def test_identical_images_from_two_calls_are_served_from_files_of_their_own():
    """Gradio caches array outputs by content and rewrote one shared file while another request served it."""
    from PIL import Image

    from demos.served import served_files

    image = np.full((8, 8, 3), 200, dtype=np.uint8)
    first, second = served_files((image, [(image, "caption")], {"k": 1})), served_files((image, "text"))
    assert first[0] != second[0] and first[1][0][1] == "caption" and first[2] == {"k": 1}
    assert np.array_equal(np.asarray(Image.open(first[0])), image)


def test_the_output_folder_keeps_its_bound_with_dataset_folders_in_it(tmp_path, monkeypatch):
    """Dataset runs make folders among the served files; pruning the oldest entries removed files only and failed
    on a folder, which broke every later call once the folder was full."""
    from demos import served as common

    monkeypatch.setattr(common, "_folder", tmp_path)
    monkeypatch.setattr(common, "MAX_OUTPUT_FILES", 3)
    monkeypatch.setattr(common, "_written", iter(range(0, 1000, 100)))  # prune on every call
    old_run, running = common.output_path("dataset", ""), common.output_path("dataset", "")
    for folder, when in ((old_run, 1_000), (running, 2_000)):
        (folder / "images").mkdir(parents=True)
        (folder / "images" / "1.png").write_bytes(b"x")
        for entry in (folder, folder / "images", folder / "images" / "1.png"):
            os.utime(entry, (when, when))
    images = []
    for when in (3_000, 4_000, 5_000):
        images.append(common.output_path("image", ".png"))
        images[-1].write_bytes(b"x")
        os.utime(images[-1], (when, when))
    (running / "images" / "2.png").write_bytes(b"x")  # the run is still writing: newer than every image
    common.output_path("image", ".png")
    assert not old_run.exists() and not images[0].exists() and running.exists() and images[-1].exists()
    assert len(list(tmp_path.iterdir())) == 3


def test_the_output_folder_is_private_bounded_in_bytes_and_never_follows_links(tmp_path, monkeypatch):
    import stat

    from demos import served

    monkeypatch.setattr(served, "_folder", None)
    monkeypatch.delenv("DISTILL_LENS_OUTPUT_DIR", raising=False)
    assert stat.S_IMODE(served.output_dir().stat().st_mode) == 0o700  # mkdtemp: this user's alone
    folder, outside = tmp_path / "out", tmp_path / "precious"
    folder.mkdir()
    outside.mkdir()
    (outside / "keep.txt").write_bytes(b"x" * 10)
    (folder / "a-link").symlink_to(outside, target_is_directory=True)  # planted by someone else
    for i, size in enumerate((400, 400, 400)):
        (folder / f"image-{i}.png").write_bytes(b"x" * size)
        os.utime(folder / f"image-{i}.png", (1000 + i, 1000 + i))
    os.utime(folder / "a-link", (500, 500), follow_symlinks=False)
    served.prune(folder, max_entries=100, max_bytes=900)
    assert (outside / "keep.txt").exists() and not (folder / "a-link").exists()  # the link went, not its target
    assert sorted(p.name for p in folder.iterdir()) == ["image-1.png", "image-2.png"]  # 800 bytes of 900


def test_stop_ends_prompt_tuning_within_a_step_and_saves_nothing(tmp_path, monkeypatch):
    import pytest

    from compare import zero_shot
    from compare.jobs import Cancelled
    from demos import classification
    from demos.jobs import request_stop, stop_flag
    from weights import prompt_store

    monkeypatch.setattr(prompt_store, "PROMPT_DIR", tmp_path)
    flag = stop_flag("session-a")
    steps = []
    real_tune = zero_shot.tune

    def tune_then_stop(*args, on_step, **kwargs):
        def step(phase, i, loss):
            steps.append(i)
            if i == 2:
                request_stop("session-a")  # the user presses Stop during step 2
            on_step(phase, i, loss)
        return real_tune(*args, on_step=step, **kwargs)

    monkeypatch.setattr(zero_shot, "tune", tune_then_stop)
    with pytest.raises(Cancelled, match="stopped at step 2/30"):
        classification.tune_prompts("shapes-clip", "red circle, blue square", "coop", "stopped", None, 2, 30,
                                    cancel=flag)
    assert steps == [1, 2] and [p for p in prompt_store.list_prompts(tmp_path) if not p["builtin"]] == []


def test_stop_ends_a_generation_and_leaves_the_unet_as_it_was(tiny_hub_pairs):
    import pytest

    from compare.jobs import Cancelled
    from demos.jobs import stop_flag
    from weights.loaders import load_generation_pair
    from weights.registry import get_pair

    unet = load_generation_pair(get_pair(tiny_hub_pairs["generation"]))["teacher"].unet
    before = [id(m) for m in unet.modules()], dict(unet.attn_processors)
    flag = stop_flag(None)
    flag.set()
    with pytest.raises(Cancelled, match="stopped at the teacher's step 1/3"):
        generate("a red circle", tiny_hub_pairs["generation"], steps=3, width=128, height=128, raunet=True,
                 msw_msa=True, cancel=flag)
    assert [id(m) for m in unet.modules()] == before[0] and dict(unet.attn_processors) == before[1]


def test_each_pair_keeps_its_newest_prompts_and_builtin_prompts_are_protected(tmp_path, monkeypatch):
    import os

    import pytest

    from weights import prompt_store

    user, builtin = tmp_path / "user", tmp_path / "builtin"
    monkeypatch.setattr(prompt_store, "PROMPT_DIR", user)
    monkeypatch.setattr(prompt_store, "MAX_PROMPTS_PER_PAIR", 2)
    prompt_store.save_prompt("shipped", {"boost": torch.ones(2, 4)}, {"pair": "a"}, directory=builtin)
    monkeypatch.setattr(prompt_store, "BUILTIN_PROMPT_DIR", builtin)
    for i, (name, pair) in enumerate((("a1", "a"), ("b1", "b"), ("a2", "a"), ("a3", "a"))):
        prompt_store.save_prompt(name, {"boost": torch.ones(2, 4)}, {"pair": pair})
        os.utime(user / f"{name}.safetensors", (1000 + i, 1000 + i))  # a clear order, whatever the clock's grain
    listed = prompt_store.list_prompts()
    assert [(p["name"], p["builtin"]) for p in listed] == [("shipped", True), ("a3", False), ("a2", False),
                                                          ("b1", False)]  # a1, the oldest of pair a, went
    with pytest.raises(prompt_store.PromptError, match="builtin"):
        prompt_store.save_prompt("shipped", {"boost": torch.ones(2, 4)}, {"pair": "a"}, overwrite=True)
    assert prompt_store.load_prompt("shipped")[1]["builtin"]


def test_attention_maps_are_the_same_while_other_users_run_detect(tmp_path):
    """An /attention map once could come from another user's /detect image passing the hooked model."""
    from PIL import Image

    from demos.analysis_tab import attention
    from demos.detection import detect
    from weights.shapes.world import render_scene

    paths = []
    for i, seed in enumerate((10_000_101, 10_000_102)):
        paths.append(tmp_path / f"scene{i}.png")
        Image.fromarray(render_scene(seed).image).save(paths[-1])
    alone = attention(str(paths[0]), "shapes-detection", "0")
    with ThreadPoolExecutor(4) as pool:
        others = [pool.submit(detect, str(paths[1]), "shapes-detection", 0.3) for _ in range(6)]
        mine = [pool.submit(attention, str(paths[0]), "shapes-detection", "0") for _ in range(3)]
        [f.result() for f in others]
        for result in (f.result() for f in mine):
            assert all(np.array_equal(a, b) for a, b in zip(result[:3], alone[:3], strict=True))
            assert result[3] == alone[3]


def test_the_lcm_lora_student_loads_with_peft_and_generates(tmp_path, tiny_hub_pairs):
    """A LoRA student needs peft; without it every load failed and was reported as 'offline'."""
    import copy
    import dataclasses

    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from weights.loaders import load_generation_pair
    from weights.registry import ModelSource, get_pair, register_pair, unregister_pair

    base = get_pair(tiny_hub_pairs["generation"])
    unet = load_generation_pair(base)["teacher"].unet
    adapted = copy.deepcopy(unet)
    adapted.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                   init_lora_weights="gaussian"))
    StableDiffusionPipeline.save_lora_weights(tmp_path, unet_lora_layers=get_peft_model_state_dict(adapted),
                                              safe_serialization=True)
    student = ModelSource("hub", str(tmp_path), "UNet2DConditionModel", revision="main", family="diffusers",
                          lora="pytorch_lora_weights.safetensors", scheduler="LCMScheduler")
    pair = register_pair(dataclasses.replace(base, name="tiny-lcm-lora", students=student,
                                             native=base.native | {"student_steps": 2, "student_guidance": 1.0}))
    try:
        teacher_image, student_image, report = generate("a red circle", pair.name, steps=3, width=64, height=64)
        pipes = load_generation_pair(pair)
        assert type(pipes["student"].scheduler).__name__ == "LCMScheduler"
        assert report["student"]["steps"] == 2 and not np.array_equal(teacher_image, student_image)
    finally:
        unregister_pair(pair.name)


def test_an_inline_image_is_sized_before_any_decoding(tmp_path, monkeypatch):
    """A data: URL of a few hundred bytes claiming 20,000 x 20,000 pixels is refused from its header; one longer
    than the upload cap is refused from its length."""
    import base64

    import gradio as gr
    import pytest
    from gradio.data_classes import ImageData

    from benchmarks.abuse import huge_png_header
    from compare.inputs import InputError, read_image
    from demos import components, served

    monkeypatch.setattr(served, "_folder", tmp_path)
    url = "data:image/png;base64," + base64.b64encode(huge_png_header()).decode()
    path = components.UserImage(type="filepath").preprocess(ImageData(url=url))
    assert os.path.getsize(path) < 1000
    with pytest.raises(InputError, match="too large"):
        read_image(path)
    monkeypatch.setattr(components, "MAX_UPLOAD_BYTES", 10)
    with pytest.raises(gr.Error, match="more than 0 MB"):
        components.UserImage(type="filepath").preprocess(ImageData(url=url))


def test_a_full_disk_is_said_to_be_one():
    import errno

    import gradio as gr
    import pytest

    from demos.jobs import out_of_space, user_errors

    def write():
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as error:
            raise RuntimeError("SafetensorError: Error while serializing") from error

    assert out_of_space(RuntimeError("IoError(Os { code: 28, kind: StorageFull })"))
    with pytest.raises(gr.Error, match="out of disk space"):
        user_errors(write)()
