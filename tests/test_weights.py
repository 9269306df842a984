import pytest
import torch

from weights.loaders import ModelCache, ModelUnavailableError, load_model
from weights.registry import TASKS, ModelSource, UnknownPairError, get_pair, list_pairs
from weights.shapes.checkpoints import BUILTIN_CONFIGS, BUILTIN_DIR, checkpoint_path, load_checkpoint, save_checkpoint
from weights.shapes.nets import ShapesNet, decode_detections


def test_every_pair_is_well_formed():
    names = [p.name for p in list_pairs()]
    assert len(names) == len(set(names))
    for pair in list_pairs():
        assert pair.task in TASKS and pair.licence
        summary = pair.summary()
        assert set(summary) >= {"name", "task", "source", "teacher", "student", "licence"}
        assert summary["source"] in ("builtin", "package", "hub")
        for source in (pair.teacher, pair.student):
            assert source.kind != "hub" or source.revision, "Hub models carry a revision"


def test_unknown_pair_names_the_choices():
    with pytest.raises(UnknownPairError, match="shapes-detection"):
        get_pair("no-such-pair", "detection")
    with pytest.raises(UnknownPairError):
        get_pair("shapes-segmentation", "detection")  # right name, wrong task


@pytest.mark.parametrize("key", list(BUILTIN_CONFIGS))
def test_builtin_architectures_run_at_random_init(key):
    model = ShapesNet(BUILTIN_CONFIGS[key]).eval()
    out = model(torch.randn(2, 3, 64, 96))
    if key[0] == "detection":
        assert out["heatmap"].shape == (2, 5, 16, 24) and out["size"].shape == (2, 2, 16, 24)
        assert len(decode_detections(out, 0.0, max_detections=7)[0]["boxes"]) == 7
    else:
        assert out["logits"].shape == (2, 6, 64, 96)
    assert [f.shape[-1] for f in out["features"]] == [48, 24, 12, 6]


def test_checkpoint_round_trip(tmp_path):
    model = ShapesNet(BUILTIN_CONFIGS[("segmentation", "student")]).eval()
    save_checkpoint(model, tmp_path / "m.safetensors")
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(model(x)["logits"], loaded(x)["logits"])


def test_committed_checkpoints_respect_the_size_rules():
    files = [checkpoint_path(task, role) for task, role in BUILTIN_CONFIGS]
    assert all(f.exists() for f in files)
    every = list(BUILTIN_DIR.rglob("*.safetensors"))  # diffusion pipelines and the method comparison: subfolders
    assert len(every) > len(files) and all(f.stat().st_size < 10 * 2**20 for f in every)
    assert sum(f.stat().st_size for f in every) < 60 * 2**20
    assert not [f for f in BUILTIN_DIR.rglob("*") if f.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    for pair in list_pairs():
        if pair.source == "builtin" and pair.task in ("detection", "segmentation"):
            teacher = sum(p.numel() for p in load_model(pair.teacher)[0].parameters())
            for student in pair.students:
                assert sum(p.numel() for p in load_model(student.source)[0].parameters()) <= teacher / 3, \
                    (pair.name, student.name)


def test_cache_evicts_least_recently_used_by_bytes():
    cache = ModelCache(max_bytes=100, sizeof=lambda v: v)
    loads = []
    for key in ["a", "b", "a", "c"]:
        cache.get_or_load(key, lambda k=key: loads.append(k) or 40)
    assert loads == ["a", "b", "c"]  # "a" came from the cache the second time
    assert cache.keys() == ["a", "c"]  # "b" was least recently used when "c" pushed the total over 100


def test_hub_classes_outside_the_allow_list_are_refused():
    for family in ("transformers", "shapes", "open_clip", "diffusers", "timm"):
        source = ModelSource("hub", "some/repo", model_class="AutoModel", revision="main",
                             processor_class="AutoProcessor", family=family)
        with pytest.raises(ModelUnavailableError, match="not an allowed|is not a transformers"):
            load_model(source, torch.device("cpu"), cache=ModelCache(1))
    with pytest.raises(ValueError, match="needs a family"):
        ModelSource("hub", "some/repo", model_class="RTDetrForObjectDetection")


def test_offline_hub_pair_says_how_to_fix_it():
    pair = get_pair("rtdetr-r101vd-to-r18vd")
    with pytest.raises(ModelUnavailableError) as info:
        load_model(pair.student, torch.device("cpu"), cache=ModelCache(1))
    assert "HF_HUB_OFFLINE" in str(info.value) and "huggingface" in str(info.value)


def test_builtin_models_load_on_cpu_in_fp32_and_eval_mode():
    model, processor = load_model(get_pair("shapes-detection").student, torch.device("cpu"), cache=ModelCache(2**30))
    assert processor is None and not model.training
    assert next(model.parameters()).dtype == torch.float32


def test_load_errors_say_offline_only_when_the_network_is_the_cause(monkeypatch):
    import socket

    from huggingface_hub import constants

    import weights.hub as hub
    from weights.hub import hub_error_message as _hub_error_message

    source = get_pair("rtdetr-r101vd-to-r18vd").student
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "hub_reachable", lambda: True)
    try:
        raise OSError("wrapped") from ConnectionError("Failed to establish a new connection")
    except OSError as error:
        assert "offline" in _hub_error_message(source, error)
    try:  # what huggingface_hub raises when the Hub's name does not resolve
        raise OSError("wrapped") from socket.gaierror(-2, "Name or service not known")
    except OSError as error:
        assert "offline" in _hub_error_message(source, error)
    message = _hub_error_message(source, ValueError("PEFT backend is required for this method."))
    assert "PEFT backend is required" in message and "offline" not in message
    # transformers' processors hide the network error behind a generic one (no cause chained): offline only when
    # the Hub is out of reach now, and never for an error that is no file's
    hidden = OSError("Can't load image processor for 'PekingU/rtdetr_r50vd_coco_o365'.")
    assert "Can't load image processor" in _hub_error_message(source, hidden)
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    message = _hub_error_message(source, hidden)
    assert "offline" in message and "HF_HUB_OFFLINE" in message and constants.HF_HUB_CACHE in message
    assert "offline" not in _hub_error_message(source, ValueError("PEFT backend is required for this method."))
    # a cause in the chain that is no network's is said as it is, the Hub away or not: a corrupt cached file
    import json

    try:
        try:
            json.loads("{not json")
        except json.JSONDecodeError as cause:
            raise OSError("It looks like the config file at 'config.json' is not a valid JSON file.") from cause
    except OSError as error:
        message = _hub_error_message(source, error)
    assert "not a valid JSON file" in message and "offline" not in message


def test_the_hub_probe_answers_from_one_connection_and_stays_out_of_a_proxys_way(monkeypatch):
    import math
    import socket
    import threading
    import time
    import urllib.request

    import weights.hub as hub

    calls = []

    def refused(address, timeout):
        calls.append((address, timeout))
        time.sleep(0.05)  # callers arriving meanwhile wait for this answer
        raise socket.gaierror(-2, "Name or service not known")

    def fresh():
        monkeypatch.setitem(hub._probe, "at", -math.inf)
        calls.clear()

    monkeypatch.setattr(urllib.request, "getproxies", lambda: {})
    monkeypatch.setattr(socket, "create_connection", refused)
    fresh()
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(hub.hub_reachable())) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [False] * 20 and calls == [(("huggingface.co", 443), hub.PROBE_SECONDS)]  # one probe for all
    assert hub.hub_reachable() is False and len(calls) == 1  # remembered
    hub._probe["at"] -= hub.PROBE_TTL[False] + 1  # a "no" is kept 10 s: a network that comes back is seen soon
    assert hub.hub_reachable() is False and len(calls) == 2
    # behind a proxy (any way the system names one) the host is not asked; NO_PROXY for it: asked
    fresh()
    monkeypatch.setattr(urllib.request, "getproxies", lambda: {"https": "http://proxy.example:3128"})
    monkeypatch.setattr(urllib.request, "proxy_bypass", lambda host: False)
    assert hub.hub_reachable() is True and not calls
    fresh()
    monkeypatch.setattr(urllib.request, "proxy_bypass", lambda host: host == "huggingface.co")
    assert hub.hub_reachable() is False and len(calls) == 1
    # the proxy of the endpoint's own scheme: an http mirror behind an http proxy is not asked; https with only an http
    # proxy is
    from huggingface_hub import constants

    monkeypatch.setattr(urllib.request, "getproxies", lambda: {"http": "http://proxy.example:3128"})
    monkeypatch.setattr(urllib.request, "proxy_bypass", lambda host: False)
    fresh()
    assert hub.hub_reachable() is False and len(calls) == 1
    fresh()
    monkeypatch.setattr(constants, "ENDPOINT", "http://mirror.internal")
    assert hub.hub_reachable() is True and not calls
    monkeypatch.setattr(constants, "ENDPOINT", "https://huggingface.co")
    monkeypatch.setattr(urllib.request, "getproxies", lambda: {})
    fresh()
    monkeypatch.setattr(socket, "create_connection", lambda address, timeout: socket.socket())
    assert hub.hub_reachable() is True
    # no answer in time (a resolver that does not answer, a slow link): unknown, so not judged offline, and the wait
    # is PROBE_SECONDS, not the resolver's own timeout
    fresh()
    monkeypatch.setattr(hub, "PROBE_SECONDS", 0.2)
    monkeypatch.setattr(socket, "create_connection", lambda address, timeout: time.sleep(5))
    start = time.perf_counter()
    assert hub.hub_reachable() is True and time.perf_counter() - start < 2
    # an endpoint that is no URL, or has no host: huggingface_hub's to say what is wrong
    for endpoint in ("https://[bad", "not a url"):
        fresh()
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(socket, "create_connection", refused)
        assert hub.hub_reachable() is True and not calls


def test_a_hub_model_out_of_reach_is_read_from_the_cache_only_and_said_offline_at_once(monkeypatch, tmp_path):
    """No network and HF_HUB_OFFLINE unset: the loader does not wait out huggingface_hub's retries (~23 s a file),
    it reads the cache only and says the machine is offline, naming HF_HUB_OFFLINE and the cache."""
    import time

    from huggingface_hub import constants

    import weights.hub as hub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    source = ModelSource("hub", "org/not-cached", "RTDetrForObjectDetection", processor_class="RTDetrImageProcessor",
                         family="transformers")
    assert hub.local_only(source) and not hub.local_only(ModelSource("hub", str(tmp_path), "?", family="transformers"))
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError, match="offline") as raised:
        load_model(source, torch.device("cpu"), cache=ModelCache(2**30))
    assert time.perf_counter() - start < 10 and "HF_HUB_OFFLINE" in str(raised.value)


def test_a_generation_pair_asked_of_the_vision_loader_is_refused_by_name():
    import compare
    from compare.inputs import InputError

    with pytest.raises(InputError, match="generation pair: run it with compare.generation.generate"):
        compare.load("shapes-diffusion")


def test_a_corrupt_safetensors_file_is_a_model_that_cannot_be_loaded_not_a_crash(tmp_path):
    """A folder whose weights file is cut short (a broken download), in each family that reads a folder's
    safetensors: the loader's message names the model (transformers', timm's and open_clip's own errors before)."""
    import timm
    from timm.models import save_for_hf

    from tests.tiny_hub import save_tiny_rtdetr

    rtdetr = save_tiny_rtdetr(tmp_path / "rtdetr", seed=0)
    save_for_hf(timm.create_model("resnet18", num_classes=3), str(tmp_path / "timm"),
                model_config={"label_names": ["cat", "dog", "cup"]}, safe_serialization=True)
    sources = [(rtdetr / "model.safetensors", ModelSource("hub", str(rtdetr), "RTDetrForObjectDetection",
                                                           processor_class="RTDetrImageProcessor",
                                                           family="transformers")),
               (tmp_path / "timm" / "model.safetensors", ModelSource("hub", str(tmp_path / "timm"), "timm",
                                                                      family="timm"))]
    for weights, source in sources:
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        with pytest.raises(ModelUnavailableError, match=f"Could not load {source.location}"):
            load_model(source, torch.device("cpu"), cache=ModelCache(2**30))
