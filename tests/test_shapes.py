import numpy as np
import pytest

from weights.shapes.world import CLASS_NAMES, COLOUR_NAMES, render_scene


def test_a_seed_names_a_scene_exactly():
    a, b = render_scene(123), render_scene(123)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert a.caption == b.caption
    assert not np.array_equal(render_scene(124).image, a.image)


@pytest.mark.parametrize("seed", range(20))
def test_annotations_match_the_label_map(seed):
    scene = render_scene(seed)
    assert scene.image.dtype == np.uint8 and scene.image.shape == (128, 128, 3)
    assert 1 <= len(scene.objects) <= 5
    for obj in scene.objects:
        ys, xs = np.nonzero(obj.mask)
        assert obj.box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]  # tight, x1/y1 exclusive
        assert (scene.labels[obj.mask] == obj.class_id).all()
        assert obj.colour in COLOUR_NAMES
    painted = np.zeros_like(scene.labels)
    for obj in scene.objects:
        painted[obj.mask] = obj.class_id
    assert np.array_equal(painted, scene.labels)


def test_caption_orders_objects_left_to_right():
    for seed in range(50):
        scene = render_scene(seed)
        if len(scene.objects) >= 3:
            break
    ordered = sorted(scene.objects, key=lambda o: o.box[0] + o.box[2])
    phrases = [f"{'an' if o.colour == 'orange' else 'a'} {o.colour} {CLASS_NAMES[o.class_id]}" for o in ordered]
    assert scene.caption == ", ".join(phrases[:-1]) + " and " + phrases[-1]


def test_caption_article():
    scene = next(render_scene(s, single_object=True) for s in range(200)
                 if render_scene(s, single_object=True).objects[0].colour == "orange")
    assert scene.caption.startswith("an orange ")


@pytest.mark.parametrize("size", [(64, 64), (96, 200), (512, 300)])
def test_any_canvas_from_64_to_512(size):
    scene = render_scene(7, *size)
    assert scene.image.shape == (*size, 3)
    assert scene.labels.shape == size


@pytest.mark.parametrize("size", [(63, 128), (128, 513)])
def test_out_of_range_canvas_is_refused(size):
    with pytest.raises(ValueError, match="64, 512"):
        render_scene(0, *size)


def test_single_object_scenes_are_large_and_centred():
    for seed in range(30):
        scene = render_scene(seed, single_object=True)
        assert len(scene.objects) == 1
        x0, y0, x1, y1 = scene.objects[0].box
        assert abs((x0 + x1) / 2 - 64) <= 16 + 3 and abs((y0 + y1) / 2 - 64) <= 16 + 3
        assert max(x1 - x0, y1 - y0) >= 0.5 * 40  # a rotated star or triangle still spans most of its circle
