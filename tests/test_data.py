"""Synthetic data: determinism, MMEB shape, hard negatives, IND/OOD split."""

import random

import numpy as np
import pytest

from analysis.data import META_TASKS, build_mini_mmeb, digits, shapes, training_examples


def _fingerprint(datasets):
    return [(d.key, [(ex.query.key, [c.key for c in ex.candidates]) for ex in d.examples]) for d in datasets]


def test_mini_mmeb_is_deterministic():
    a, b = build_mini_mmeb(6, seed=1), build_mini_mmeb(6, seed=1)
    assert _fingerprint(a) == _fingerprint(b)
    assert _fingerprint(a) != _fingerprint(build_mini_mmeb(6, seed=2))
    img_a = np.asarray(a[0].examples[0].query.image)
    assert np.array_equal(img_a, np.asarray(b[0].examples[0].query.image))


def test_mini_mmeb_has_mmeb_shape():
    datasets = build_mini_mmeb(8)
    for task in META_TASKS:
        assert len({d.name for d in datasets if d.meta_task == task}) >= 2, task
    assert {d.split for d in datasets} == {"ind", "ood"}
    for d in datasets:
        for ex in d.examples:
            assert len(ex.candidates) >= 8, d.key
            keys = [c.key for c in ex.candidates]
            assert len(set(keys)) == len(keys), f"{d.key}: duplicate candidates"


def test_render_is_deterministic_and_draws_the_colour():
    scene = shapes.Scene((shapes.ShapeObject("green", "square", "large", "middle", "center"),))
    a, b = np.asarray(shapes.render(scene)), np.asarray(shapes.render(scene))
    assert a.shape == (112, 112, 3) and np.array_equal(a, b)
    assert tuple(a[56, 56]) == shapes.RGB["green"]
    assert tuple(a[5, 5]) != shapes.RGB["green"]


def test_hard_negatives_differ_in_one_attribute():
    rng = random.Random(0)
    for _ in range(30):
        scene = shapes.sample_scene(rng)
        for neg in shapes.hard_negatives(scene, rng, 8):
            changed = [i for i, (o, p) in enumerate(zip(scene.objects, neg.objects)) if o != p]
            assert len(changed) == 1
            o, p = scene.objects[changed[0]], neg.objects[changed[0]]
            attrs = [o.colour != p.colour, o.shape != p.shape, o.size != p.size, o.position != p.position]
            assert sum(attrs) == 1


def test_ood_split_uses_held_out_combinations():
    rng = random.Random(0)
    for _ in range(200):
        ind = shapes.sample_scene(rng, split="ind")
        assert all((o.colour, o.shape) not in shapes.HELD_OUT for o in ind.objects)
        ood = shapes.sample_scene(rng, split="ood")
        assert (ood.main.colour, ood.main.shape) in shapes.HELD_OUT
    with pytest.raises(ValueError, match="ind, ood"):
        shapes.sample_scene(rng, split="test")


def test_training_examples_are_ind_and_mixed():
    examples = training_examples(110, seed=0)
    assert len(examples) == 110
    assert all(len(ex.candidates) == 1 for ex in examples)
    for ex in examples:
        if "colour" in ex.labels:
            assert (ex.labels["colour"], ex.labels["shape"]) not in shapes.HELD_OUT
    assert [e.query.key for e in examples] == [e.query.key for e in training_examples(110, seed=0)]


def test_digits_train_and_eval_are_disjoint():
    images, labels = digits.load_digits()
    assert images.shape[1:] == (8, 8) and images.max() == 255
    assert not set(digits.split_indices("train")) & set(digits.split_indices("eval"))
    assert digits.digit_image(0).size == (112, 112)
    eval_keys = {ex.query.key for d in build_mini_mmeb(20, tasks=("Digits",)) for ex in d.examples}
    train_keys = {ex.query.key for ex in training_examples(40, tasks=("Digits",))}
    assert not eval_keys & train_keys


def _content(item):
    """What the model sees: the text and the image's size and pixels."""
    return item.text, None if item.image is None else (item.image.size, item.image.tobytes())


def test_every_mini_mmeb_key_stands_for_one_input():
    inputs: dict[str, tuple] = {}
    clashes = set()
    for d in build_mini_mmeb(100):
        for ex in d.examples:
            for item in [ex.query, *ex.candidates]:
                if inputs.setdefault(item.key, _content(item)) != _content(item):
                    clashes.add(item.key)
    assert not clashes, f"{len(clashes)} keys stand for two different inputs, e.g. {sorted(clashes)[:3]}"


def test_no_candidate_list_holds_one_input_twice():
    for d in build_mini_mmeb(100):
        for ex in d.examples:
            contents = [_content(c) for c in ex.candidates]
            assert _content(ex.positive) not in contents[1:], f"{d.key}: the positive is also a negative"
            assert len(set(contents)) == len(contents), f"{d.key}: two candidates are the same input"


def _images(examples):
    """The pixels of every whole image (scene or digit, not a grounding crop: a single object's crop recurs
    by nature) the queries and positives of `examples` show."""
    items = (item for ex in examples for item in (ex.query, ex.positive))
    return {item.image.tobytes() for item in items if item.image is not None and item.image.size == (112, 112)}


def test_training_and_evaluation_images_are_disjoint():
    train = _images(training_examples(3000, seed=0))
    evaluation = _images(ex for d in build_mini_mmeb(100, splits=("ind",)) for ex in d.examples)
    assert len(train) > 1000 and len(evaluation) > 500
    assert not train & evaluation, f"{len(train & evaluation)} evaluation images are also training images"
    rng = random.Random(0)
    assert all(shapes.is_eval_scene(shapes.sample_scene(rng, split="ind")) for _ in range(50))
    assert not any(shapes.is_eval_scene(shapes.sample_scene(rng, split="train")) for _ in range(50))
