"""Synthetic clips for the miniature HunyuanVideo (issue 5): deterministic, a compositional held-out split,
and a measurement that reads color and motion back from frames exactly (the learned-model test will use it).
"""

from __future__ import annotations

import numpy as np

from hyca_batch.training import synthetic as S

# --- synthetic data -------------------------------------------------------------------------------


def test_synthetic_clips_are_deterministic():
    a = S.sample_specs(12, seed=7)
    b = S.sample_specs(12, seed=7)
    assert a == b
    assert all(np.array_equal(S.make_clip(x), S.make_clip(y)) for x, y in zip(a, b))
    assert S.sample_specs(12, seed=8) != a
    clip = S.make_clip(a[0])
    assert clip.shape == (S.NUM_FRAMES, S.HEIGHT, S.WIDTH, 3) and clip.dtype == np.uint8


def test_held_out_combinations_are_disjoint_from_training_and_compositional():
    train, held = S.combinations("train"), S.combinations("heldout")
    triples_train = {c[:3] for c in train}
    triples_held = {c[:3] for c in held}
    assert triples_held and not (triples_train & triples_held)
    assert not set(S.prompts("train")) & set(S.prompts("heldout"))
    assert all(S.is_held_out(*c[:3]) for c in held)
    # Every word pair of a held-out prompt was seen together in training.
    for c, s, m in triples_held:
        assert any(t[0] == c and t[1] == s for t in triples_train)
        assert any(t[0] == c and t[2] == m for t in triples_train)
        assert any(t[1] == s and t[2] == m for t in triples_train)
    assert {s.prompt for s in S.sample_specs(200, 0, "train")} <= set(S.prompts("train"))


def test_measurement_reads_drawn_clips_exactly():
    specs = S.sample_specs(60, seed=3, split="heldout") + S.sample_specs(60, seed=3)
    for spec in specs:
        m = S.measure_clip(S.make_clip(spec))
        assert (m.color, m.motion) == (spec.color, spec.motion), (spec, m)


def test_prompt_words_are_single_llama_tokens():
    from hyca_batch.training.tokenizers import build_llama_tokenizer

    tok = build_llama_tokenizer()
    words = set(" ".join(S.prompts("train") + S.prompts("heldout")).split())
    for w in words:
        assert len(tok(" " + w, add_special_tokens=False).input_ids) == 1, w


# --- the shipped model ----------------------------------------------------------------------------
