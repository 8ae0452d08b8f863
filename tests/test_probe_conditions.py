"""`probe_condition`: the eos_probing notebook's probe sets, on a capture written with numpy alone."""

from __future__ import annotations

import numpy as np

from analysis.lens.store import FORMAT, Capture, CaptureSettings, SampleRecord, ShardWriter
from analysis.probe_conditions import probe_condition

COLOURS, SHAPES = ("red", "blue", "green"), ("circle", "square")
N, D = 90, 6


def _capture(path) -> Capture:
    """N samples whose EOS state holds the colour (one-hot, noisy) and the shape in another coordinate; every
    third sample's text names its colour, no text names a shape."""
    settings = CaptureSettings(format=FORMAT, checkpoint="toy", checkpoint_digest="sha256:0", preset="plain",
                               mask_type="bidirectional", dataset="toy", seed=0, n=N, with_target=False,
                               patterns="none", hooks=(), dtype="float32")
    writer = ShardWriter(path, settings, shard_size=N, details=dict(n_layers=1, n_heads=1, d_model=D))
    rng = np.random.default_rng(0)
    for i in range(N):
        colour, shape = COLOURS[i % 3], SHAPES[(i // 3) % 2]
        state = rng.normal(scale=0.3, size=(2, D)).astype(np.float32)
        state[1, COLOURS.index(colour)] += 1.0
        state[1, 3] += SHAPES.index(shape)
        text = f"a {colour} thing" if i % 3 == 0 else "a thing"
        record = SampleRecord(f"img{i}|{text}", text, None, False, None, False, {"colour": colour, "shape": shape})
        writer.add(dict(eos_resid=state, content_mean=state[::-1].copy(), eos_final=state[1], embedding=state[1],
                        eos_index=1, input_ids=np.arange(2, dtype=np.int32), roles=np.array([0, 1]),
                        is_image=np.zeros(2, bool), segments=np.array([4, 5]), hooks={}, pattern=None,
                        query_positions=None, record=record))
    writer.finish()
    return Capture.open(path)


def test_label_not_in_text_probes_drop_the_named_samples_and_share_the_rest(tmp_path):
    sets, in_text = probe_condition(_capture(tmp_path), ["colour", "shape"], N, cv=3)
    assert in_text == {"colour": 1 / 3, "shape": 0.0}
    assert [(p.metric, p.states) for p in sets] == [("probes", "EOS"), ("probes_label_not_in_text", "EOS"),
                                                   ("probes", "mean-pooled A"),
                                                   ("probes_label_not_in_text", "mean-pooled A")]
    for every, unnamed in (sets[:2], sets[2:]):
        assert list(unnamed.results) == ["colour", "shape"]
        # no text names a shape: the same samples, so the same probe (solved once)
        assert unnamed.results["shape"] is every.results["shape"]
        # a third of the colours are named: those samples are left out, which moves the chance level
        assert unnamed.results["colour"]["chance"] != every.results["colour"]["chance"]
    assert sets[0].results["colour"]["accuracy"][-1] > 0.9 and sets[0].results["shape"]["accuracy"][-1] > 0.9
