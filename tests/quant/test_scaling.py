"""Moving 1/s onto a group's input X: the folds are exact, and only where X has no other reader."""

import numpy as np
import pytest
from onnx import helper

from ingot.quant.graph import GraphEditor
from ingot.quant.layers import by_activation, find_layers
from ingot.quant.scaling import move_inverse, shared_weights
from tests.quant.util import initializer, make_model, ops, session

K, J, N = 16, 8, 4


def _gated(extra: str | None = None):
    """x → g = sigmoid(x @ wg), u = x @ wu, h = g * u → down/MatMul(h, wd) (Llama's MLP, roughly).
    extra: 'u' also outputs u; 'wu' lets a second MatMul read wu."""
    rng = np.random.default_rng(0)
    weights = {n: rng.standard_normal(s).astype(np.float32) for n, s in (("wg", (J, K)), ("wu", (J, K)), ("wd", (K, N)))}
    nodes = [helper.make_node("MatMul", ["x", "wg"], ["gl"], name="gate/MatMul"),
             helper.make_node("Sigmoid", ["gl"], ["g"], name="act/Sigmoid"),
             helper.make_node("MatMul", ["x", "wu"], ["u"], name="up/MatMul"),
             helper.make_node("Mul", ["g", "u"], ["h"], name="mlp/Mul"),
             helper.make_node("MatMul", ["h", "wd"], ["y"], name="down/MatMul")]
    outputs = {"y": ["m", N]}
    if extra == "u":
        outputs["u"] = ["m", K]
    if extra == "wu":
        nodes.append(helper.make_node("MatMul", ["x", "wu"], ["z"], name="other/MatMul"))
        outputs["z"] = ["m", K]
    return make_model(nodes, {"x": ["m", J]}, outputs, weights)


def _rescale_down(model, s):
    """Apply X W = (X / s)(s W) to down's group; returns the scaling used."""
    layers, _ = find_layers(model, ("MatMul",), [])
    group = by_activation(layers)["h"]
    edit = GraphEditor(model)
    how = move_inverse(edit, "h", group, (1 / s).astype(np.float32), "t")
    edit.set_array("wd", edit.array("wd") * s[:, None])
    edit.finish()
    return how


@pytest.mark.parametrize("extra,expected", [(None, "folded"), ("u", "explicit"), ("wu", "explicit")])
def test_down_proj_scale_folds_into_up_columns(extra, expected):
    model = _gated(extra)
    x = np.random.default_rng(1).standard_normal((5, J)).astype(np.float32)
    ref = session(model).run(None, {"x": x})
    s = np.random.default_rng(2).uniform(0.25, 4, K).astype(np.float32)
    assert _rescale_down(model, s) == expected
    got = session(model).run(None, {"x": x})
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)  # exact but for rounding
    if expected == "folded":
        np.testing.assert_allclose(initializer(model, "wu"), initializer(_gated(), "wu") / s, rtol=1e-6)
        assert not ops(model, "Mul")[1:]  # no new Mul
    else:
        assert [n.name for n in ops(model, "Mul")] == ["mlp/Mul", "down/t_Mul"]
        np.testing.assert_array_equal(initializer(model, "wu"), initializer(_gated(), "wu"))


def test_shared_weights_are_those_of_two_groups():
    model = _gated("wu")
    layers, _ = find_layers(model, ("MatMul",), [])
    assert shared_weights(by_activation(layers)) == set()  # wu: two readers, one X
