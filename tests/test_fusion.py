"""Fusion: min-max edge cases, weights that change rankings as configured, reciprocal-rank fusion."""

from __future__ import annotations

import numpy as np
import pytest

from shared_core.config import ConfigError, FusionConfig
from shared_core.views.fusion import adaptive_weights, fuse, minmax, ranks


def test_minmax_scales_to_unit_interval() -> None:
    np.testing.assert_allclose(minmax(np.array([2.0, 4.0, 3.0])), [0.0, 1.0, 0.5])
    np.testing.assert_allclose(minmax(np.array([-1.0, 1.0])), [0.0, 1.0])


def test_minmax_constant_single_and_empty_give_zeros() -> None:
    np.testing.assert_array_equal(minmax(np.array([0.7, 0.7, 0.7])), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(minmax(np.array([5.0])), [0.0])
    assert minmax(np.array([])).shape == (0,)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_minmax_refuses_non_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="NaN or infinite"):
        minmax(np.array([0.1, bad, 0.3]))


def test_minmax_refuses_2d() -> None:
    with pytest.raises(ValueError, match="1-D"):
        minmax(np.ones((2, 2)))


def test_ranks_are_competition_ranks() -> None:
    np.testing.assert_array_equal(ranks(np.array([0.2, 0.9, 0.2, 0.5])), [3, 1, 3, 2])


ATTENTION = np.array([0.9, 0.1, 0.5, 0.0])  # favours unit 0
DENSE = np.array([0.0, 0.8, 0.3, 0.1])  # favours unit 1


def test_weight_zero_view_has_no_effect() -> None:
    alone = fuse({"attention": ATTENTION}, FusionConfig(weights={"attention": 1.0}))
    muted = fuse({"attention": ATTENTION, "dense": DENSE}, FusionConfig(weights={"attention": 1.0, "dense": 0.0}))
    np.testing.assert_allclose(alone, muted)
    np.testing.assert_allclose(alone, minmax(ATTENTION))


def test_swapping_weights_swaps_the_winner() -> None:
    views = {"attention": ATTENTION, "dense": DENSE}
    attention_heavy = fuse(views, FusionConfig(weights={"attention": 3.0, "dense": 1.0}))
    dense_heavy = fuse(views, FusionConfig(weights={"attention": 1.0, "dense": 3.0}))
    assert int(np.argmax(attention_heavy)) == 0
    assert int(np.argmax(dense_heavy)) == 1


def test_equal_weights_average_minmax_scores() -> None:
    fused = fuse({"attention": ATTENTION, "dense": DENSE}, FusionConfig(weights={"attention": 1.0, "dense": 1.0}))
    np.testing.assert_allclose(fused, (minmax(ATTENTION) + minmax(DENSE)) / 2)
    assert fused.min() >= 0.0 and fused.max() <= 1.0
    # minmax: attention [1, .111, .556, 0], dense [0, 1, .375, .125] -> means [.5, .556, .465, .0625]
    assert list(np.argsort(-fused)) == [1, 0, 2, 3]


def test_default_weights_are_the_weighted_mean_of_the_three_views() -> None:
    lexical = np.array([0.0, 0.0, 2.0, 1.0])
    fused = fuse({"attention": ATTENTION, "dense": DENSE, "lexical": lexical}, FusionConfig())
    expected = (1.0 * minmax(ATTENTION) + 0.5 * minmax(DENSE) + 2.0 * minmax(lexical)) / 3.5
    np.testing.assert_allclose(fused, expected)


def test_weighted_fusion_is_invariant_to_each_views_scale() -> None:
    base = fuse({"attention": ATTENTION, "dense": DENSE}, FusionConfig())
    rescaled = fuse({"attention": ATTENTION * 1e-4 + 7.0, "dense": DENSE * 50.0}, FusionConfig())
    np.testing.assert_allclose(base, rescaled)


def test_rrf_orders_by_reciprocal_ranks() -> None:
    config = FusionConfig(method="rrf", rrf_k=60, weights={"attention": 1.0, "dense": 1.0})
    views = {"attention": ATTENTION, "dense": DENSE}
    fused = fuse(views, config)
    expected = sum(1.0 / (60 + ranks(v)) for v in views.values()) * 61 / 2
    np.testing.assert_allclose(fused, expected)
    # ranks: attention [1, 3, 2, 4], dense [4, 1, 2, 3] -> 1/61+1/64, 1/63+1/61, 2/62, 1/64+1/63
    assert list(np.argsort(-fused)) == [1, 2, 0, 3]
    # first in every view -> exactly 1.0
    same = fuse({"a": ATTENTION, "b": ATTENTION}, FusionConfig(method="rrf", weights={"a": 1.0, "b": 1.0}))
    assert same.max() == pytest.approx(1.0)


def test_rrf_weights_swap_the_winner() -> None:
    views = {"attention": ATTENTION, "dense": DENSE}
    a = fuse(views, FusionConfig(method="rrf", rrf_k=1, weights={"attention": 5.0, "dense": 1.0}))
    d = fuse(views, FusionConfig(method="rrf", rrf_k=1, weights={"attention": 1.0, "dense": 5.0}))
    assert int(np.argmax(a)) == 0
    assert int(np.argmax(d)) == 1


def test_unknown_view_without_weight_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"no fusion weight for view\(s\) \['bm25'\]"):
        fuse({"attention": ATTENTION, "bm25": DENSE}, FusionConfig())


def test_weights_of_absent_views_are_ignored() -> None:
    np.testing.assert_allclose(fuse({"dense": DENSE}, FusionConfig()), minmax(DENSE))


def test_fuse_input_errors() -> None:
    with pytest.raises(ValueError, match="at least one view"):
        fuse({}, FusionConfig())
    with pytest.raises(ValueError, match="same units"):
        fuse({"attention": ATTENTION, "dense": DENSE[:3]}, FusionConfig())
    with pytest.raises(ValueError, match="weight 0"):
        fuse({"attention": ATTENTION}, FusionConfig(weights={"attention": 0.0}))
    with pytest.raises(ValueError, match="view 'dense'"):
        fuse({"attention": ATTENTION, "dense": np.array([0.1, np.nan, 0.2, 0.3])}, FusionConfig())


def test_config_validation() -> None:
    with pytest.raises(ConfigError):
        FusionConfig(weights={"attention": -1.0})
    with pytest.raises(ConfigError):
        FusionConfig(method="sum")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        FusionConfig.model_validate({"weigths": {}})
    assert FusionConfig.model_validate(FusionConfig().model_dump()) == FusionConfig()


def test_a_head_sets_fusion_block_and_calibration_are_checked(tmp_path) -> None:
    """`fusion: {documents, candidates}` and `calibration` in a head-set file: read as given, or a ConfigError that
    names the file and the field (`views.model_fusion.shipped_fusion`)."""
    from shared_core.views.model_fusion import shipped_fusion

    def head_file(name: str, extra: str) -> str:
        path = tmp_path / f"{name}.yaml"
        path.write_text("model: some/model\nheads: [1-0, 2-1]\n" + extra, encoding="utf-8")
        return str(path)

    good = head_file("good", "fusion:\n  documents: {attention: 0.7, dense: 0.3}\ncalibration: [20.0, -1.0, -3.0]\n")
    assert shipped_fusion(good) == ({"documents": {"attention": 0.7, "dense": 0.3}}, (20.0, -1.0, -3.0))
    assert shipped_fusion(head_file("plain", "")) is None  # neither: the config's or the default weights
    bad = {
        "kind": ("fusion:\n  queries: {attention: 1.0}\n", r"'fusion' must map documents and/or candidates"),
        "weight": ("fusion:\n  candidates: {attention: -1.0}\n", r"fusion\.candidates: .*finite number >= 0"),
        "slope": ("calibration: [-2.0, 0.0, 1.0]\n", r"'calibration' must be a list .* first weight is positive"),
        "text": ("calibration: fitted\n", r"'calibration' must be a list"),
    }
    for name, (extra, message) in bad.items():
        path = head_file(name, extra)
        with pytest.raises(ConfigError, match=message) as caught:
            shipped_fusion(path)
        assert path in str(caught.value), name


def test_agreement_weights_leave_the_config_and_later_queries_alone() -> None:
    """Adaptive weights are per query: scaling them must not write into the config's (or a model's shipped) weights,
    or every later query would start from the last one's (scores drifting with the order of the questions)."""
    weights = {"attention": 0.75, "dense": 0.16, "lexical": 0.09}
    config = FusionConfig(weights=weights, adaptive="agreement", adaptive_strength=2.0, adaptive_k=3)
    rng = np.random.default_rng(0)
    views = {name: rng.random(12) for name in weights}
    views["dense"] = views["lexical"] + 0.01  # two views agree, attention disagrees: their weights move
    first = fuse(views, config)
    assert config.weights == {"attention": 0.75, "dense": 0.16, "lexical": 0.09}
    np.testing.assert_array_equal(fuse(views, config), first)
    assert adaptive_weights(views, config) == adaptive_weights(views, config) != config.weights
