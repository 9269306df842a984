"""CLIP tab: class parsing, agreement metrics, prompt learning with known answers, saved prompts, bad input."""

import json

import open_clip
import pytest
import torch

from compare.inputs import InputError
from compare.zero_shot import MAX_CLASSES, agreement, check_template, parse_classes
from demos.classification import classify, tune_prompts
from methods.prompts import context_tokens, encode_with_context, init_context, learn_context
from weights import prompt_store
from weights.prompt_store import PromptError, list_prompts, load_prompt, sanitise_name, save_prompt

TINY = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cfg")
    (folder / "tiny-clip-prompts.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(folder)
    torch.manual_seed(0)
    return open_clip.create_model("tiny-clip-prompts").eval(), open_clip.get_tokenizer("tiny-clip-prompts")


@pytest.fixture
def prompt_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(prompt_store, "PROMPT_DIR", tmp_path / "prompts")
    return tmp_path / "prompts"


def test_context_equal_to_the_template_words_reproduces_encode_text(tiny_clip):
    model, tokenizer = tiny_clip
    context = init_context(model, tokenizer, "a photo of a")
    assert context.shape == (4, 16)
    names = ["red circle", "cat"]
    with torch.no_grad():
        mine = encode_with_context(model, context_tokens(tokenizer, names, 4, suffix="."), context)
        reference = model.encode_text(tokenizer([f"a photo of a {n}." for n in names]), normalize=True)
    assert torch.allclose(mine, reference, atol=1e-5)


def test_learning_context_changes_only_the_context(tiny_clip):
    model, tokenizer = tiny_clip
    state = {k: v.clone() for k, v in model.state_dict().items()}
    features = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    labels = torch.arange(8) % 2
    init = init_context(model, tokenizer, "a photo of a")
    losses = []
    context = learn_context(model, tokenizer, ["circle", "square"], features, torch.nn.functional.cross_entropy,
                            labels, init, steps=30, lr=0.05, on_step=lambda i, loss: losses.append(loss))
    assert not torch.equal(context, init) and losses[-1] < losses[0]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and not model.training


def test_prompt_learning_runs_with_a_half_precision_text_tower(tiny_clip):
    """On CUDA the Hub CLIPs run in fp16 while image features come back as float32; bfloat16 on the CPU takes the
    same paths (a dtype mismatch fails here the way it would there)."""
    import copy

    model, tokenizer = tiny_clip
    half = copy.deepcopy(model).to(torch.bfloat16)
    features = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)  # float32, as the predictors return them
    init = init_context(half, tokenizer, "a photo of a")
    context = learn_context(half, tokenizer, ["circle", "square"], features, torch.nn.functional.cross_entropy,
                            torch.arange(8) % 2, init, steps=3, lr=0.05)
    assert context.dtype == torch.float32 and torch.isfinite(context).all()


def test_clip_kd_terms_vanish_only_when_the_student_matches_the_teacher(tiny_clip):
    from methods.distill import clip_kd

    model, tokenizer = tiny_clip
    pixels, tokens = torch.randn(4, 3, 32, 32), tokenizer(["a red circle", "a circle", "a red shape", "a star"])
    with torch.no_grad():
        teacher_out = model(pixels, tokens)
        assert float(clip_kd(teacher_out, teacher_out)) == pytest.approx(0.0, abs=1e-6)
        shuffled = (teacher_out[0].flip(0), teacher_out[1], teacher_out[2])  # images matched to the wrong texts
        assert float(clip_kd(shuffled, teacher_out)) > 0.01


def test_parse_classes():
    assert parse_classes("cat, dog,, cat\n bird ") == (["cat", "dog", "bird"], ["Removed 1 duplicate class name(s)."])
    assert parse_classes("猫, 犬, собака")[0] == ["猫", "犬", "собака"]
    assert len(parse_classes(", ".join(f"class {i}" for i in range(MAX_CLASSES)))[0]) == MAX_CLASSES
    for bad, message in (("", "at least two"), ("cat", "at least two"), ("cat, cat", "at least two"),
                         (", ".join(f"c{i}" for i in range(MAX_CLASSES + 1)), "At most"),
                         ("x" * 10_000 + ", dog", "limited to 100 characters")):
        with pytest.raises(InputError, match=message):
            parse_classes(bad)


def test_template_needs_one_slot():
    assert check_template("") == "a {}" and check_template("a photo of a {}.") == "a photo of a {}."
    with pytest.raises(InputError, match="exactly one"):
        check_template("a photo")
    for bad in ("{x} {}", "a {} {", "a {}}"):  # once a bare KeyError / ValueError from str.format
        with pytest.raises(InputError, match="no braces besides"):
            check_template(bad)


def test_agreement_known_answers():
    p = torch.tensor([0.7, 0.2, 0.1])
    assert agreement(p, p) == {"top1_match": True, "kl": 0.0, "js": 0.0, "spearman": 1.0}
    a = agreement(p, torch.tensor([0.1, 0.2, 0.7]))
    assert a["top1_match"] is False and a["spearman"] == -1.0 and a["kl"] > a["js"] > 0


def test_prompt_names_are_sanitised_and_looked_up_safely(prompt_dir):
    assert sanitise_name("../../etc/passwd") == "passwd"
    assert sanitise_name("my prompt v2!") == "my-prompt-v2"
    for bad in ("../", "", "///", "..."):
        with pytest.raises(PromptError):
            sanitise_name(bad)
    name = save_prompt("../evil/p1", {"boost": torch.ones(2, 4)}, {"pair": "x", "method": "caspl-boost"})
    assert name == "p1" and (prompt_dir / "p1.safetensors").exists()
    assert not any(prompt_dir.parent.glob("evil*"))
    with pytest.raises(PromptError, match="exists already"):
        save_prompt("p1", {"boost": torch.ones(2, 4)}, {})
    tensors, meta = load_prompt("p1")
    assert torch.equal(tensors["boost"], torch.ones(2, 4)) and meta["method"] == "caspl-boost"
    assert [p["name"] for p in list_prompts() if not p["builtin"]] == ["p1"]
    for bad in ("../p1", "p1.safetensors", "/etc/passwd", None):
        with pytest.raises(PromptError, match="Unknown prompt"):
            load_prompt(bad)


def test_classify_on_the_builtin_pair(tmp_path):
    from PIL import Image

    from weights.shapes.world import render_scene

    path = tmp_path / "single.png"
    Image.fromarray(render_scene(10_000_444, single_object=True).image).save(path)
    figure, report = classify(str(path), "shapes-clip", "circle, square, triangle, star, cross, circle")
    assert report["classes"] == ["circle", "square", "triangle", "star", "cross"]
    assert any("duplicate" in n for n in report["notes"])
    for role in ("teacher", "student"):
        assert abs(sum(report[role]["probs"].values()) - 1) < 1e-3
    assert set(report["agreement"]) == {"top1_match", "kl", "js", "spearman"}
    assert figure is not None
    _, report = classify(str(path), "shapes-clip", "猫, 犬")
    assert set(report["teacher"]["probs"]) == {"猫", "犬"}
    with pytest.raises(PromptError, match="Unknown prompt"):
        classify(str(path), "shapes-clip", "circle, square", "../../etc/passwd")


def test_tune_save_and_use_a_prompt(prompt_dir, tmp_path):
    from PIL import Image

    from weights.shapes.world import render_scene

    name, figures = tune_prompts("shapes-clip", "red circle, blue square, green star", "cascade", "../tuned",
                                 per_class=2, steps=5)
    assert name == "tuned" and figures["method"] == "cascade" and figures["student"] == "clip-kd"
    assert {"accuracy", "top1_match_with_teacher"} <= set(figures["after"])
    assert "never used for tuning" in figures["measured_on"]  # judged on scenes drawn for it, not the tuning ones
    tensors, meta = load_prompt("tuned")
    assert set(tensors) == {"boost", "adapt"} and meta["pair"] == "shapes-clip"
    path = tmp_path / "s.png"
    Image.fromarray(render_scene(10_000_445, single_object=True).image).save(path)
    _, report = classify(str(path), "shapes-clip", "red circle, blue square, green star", "tuned")
    assert report["student"]["prompt"].startswith("learned prompt 'tuned'")
    with pytest.raises(InputError, match="Shapes examples only"):
        tune_prompts("shapes-clip", "cat, dog", "coop", "x", per_class=1, steps=1)


def test_hub_clip_pairs_load_safetensors_through_open_clip(tiny_hub_pairs, tmp_path):
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.new("RGB", (300, 200), (200, 30, 30)).save(path)
    _, report = classify(str(path), tiny_hub_pairs["classification"], "cat, dog, cup", "", "a photo of a {}.")
    assert report["teacher"]["prompt"] == "zero-shot 'a photo of a {}.'"
    assert abs(sum(report["student"]["probs"].values()) - 1) < 1e-3


def test_offline_hub_clip_pair_says_how_to_fix_it():
    from weights.loaders import ModelUnavailableError

    with pytest.raises(ModelUnavailableError, match="HF_HUB_OFFLINE"):
        classify("demos/examples/single_0.png", "clip-vit-l14-to-b32", "cat, dog")


def test_uploaded_images_are_split_so_the_figures_are_held_out():
    from compare.zero_shot import split_held_out

    assert split_held_out([0, 0, 0, 0, 1, 1, 2]) == ([0, 1, 2, 4, 6], [3, 5])  # class 2 has one image: tuned on
    assert split_held_out([0, 1]) == ([0, 1], [])


def test_a_prompt_for_a_named_student_with_uploaded_images(prompt_dir, tmp_path):
    from PIL import Image

    from weights.registry import UnknownStudentError
    from weights.shapes.world import render_scene

    files = []
    for seed in range(10_000_500, 10_000_540):
        scene = render_scene(seed, single_object=True)
        name = f"{scene.objects[0].name}_{seed}.png"
        Image.fromarray(scene.image).save(tmp_path / name)
        files.append(str(tmp_path / name))
    saved, figures = tune_prompts("shapes-clip", "circle, square, triangle, star, cross", "caspl-boost", "",
                                  files, steps=3, student="narrow-captions")
    assert figures["method"] == "caspl" and figures["student"] == "narrow-captions"  # the old name still works
    assert "held out from tuning" in figures["measured_on"]
    _, meta = load_prompt(saved)
    assert meta["student"] == "narrow-captions" and meta["method"] == "caspl"
    with pytest.raises(InputError, match="method must be one of coop, caspl, cascade"):
        tune_prompts("shapes-clip", "circle, square", "csc-typo", "x", per_class=1, steps=1)
    with pytest.raises(UnknownStudentError):
        tune_prompts("shapes-clip", "circle, square", "coop", "x", per_class=1, steps=1, student="nobody")
    with pytest.raises(InputError, match="one student at a time"):
        tune_prompts("shapes-clip", "circle, square", "coop", "x", per_class=1, steps=1,
                     student="clip-kd, narrow-captions")


def test_a_tuning_says_whether_the_tuned_prompt_helped_in_a_table():
    """The Before / after is a table with a verdict; a prompt that made the student worse is said to."""
    from demos.classification import saved_prompts_markdown, tuning_markdown

    def figures(before: float, after: float) -> dict:
        return {"method": "coop", "student": "clip-kd", "measured_on": "20 Shapes scenes", "tuned_on": "10 scenes",
                "before": {"accuracy": before, "top1_match_with_teacher": 0.7, "teacher_accuracy": 0.9},
                "after": {"accuracy": after, "top1_match_with_teacher": 0.6, "teacher_accuracy": 0.9}, "notes": []}

    worse = tuning_markdown(figures(0.65, 0.55))
    assert "made clip-kd worse" in worse and "65% → 55%" in worse and "| student accuracy | 65% | 55% | -10 points |" \
        in worse
    assert "helped" in tuning_markdown(figures(0.65, 0.70)) and "No change" in tuning_markdown(figures(0.7, 0.7))
    assert tuning_markdown(None) == ""
    table = saved_prompts_markdown([{"name": "p1", "pair": "shapes-clip", "student": "clip-kd", "method": "coop",
                                     "builtin": False, "created": "2026-11-30", "figures": figures(0.65, 0.55)}])
    assert "| `p1` | shapes-clip | clip-kd | coop | 65% → 55% | 2026-11-30 |" in table
