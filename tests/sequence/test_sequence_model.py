"""Tests for the explicit RNN layer (checked by hand) and the RNN/GRU/LSTM SequenceModel."""

import math

import pytest
import torch

from captioner.sequence.model import ExplicitRNN, SequenceModel

CELLS = ["rnn", "gru", "lstm"]


# tiny recurrent nets gain nothing from intra-op threads, and on a busy small CPU they lose a lot
pytestmark = pytest.mark.usefixtures("single_thread")


def scalar_layer(activation="identity", stateful=False):
    # h_t = act(1 * x_t + 0.5 * h_{t-1}), y_t = 2 * h_t + 1
    layer = ExplicitRNN(1, 1, 1, activation=activation, stateful=stateful)
    return layer.set_weights(W_xh=1.0, W_hh=0.5, b_h=0.0, W_hy=2.0, b_y=1.0)


def test_identity_layer_matches_hand_calculation():
    x = torch.tensor([[1.0], [2.0], [3.0]])  # (T, D)
    y, h = scalar_layer()(x)
    # h1 = 1, h2 = 2 + 0.5 * 1 = 2.5, h3 = 3 + 0.5 * 2.5 = 4.25;  y = 2h + 1
    assert torch.allclose(y.squeeze(-1), torch.tensor([3.0, 6.0, 9.5]))
    assert h.item() == pytest.approx(4.25)


def test_tanh_and_relu_layers_match_hand_calculation():
    x = [1.0, -3.0]
    tanh_y, _ = scalar_layer("tanh")(torch.tensor(x)[:, None])
    h1 = math.tanh(1.0)
    h2 = math.tanh(-3.0 + 0.5 * h1)
    assert tanh_y.squeeze(-1).tolist() == pytest.approx([2 * h1 + 1, 2 * h2 + 1], abs=1e-6)

    relu_y, relu_h = scalar_layer("relu")(torch.tensor(x)[:, None])
    # h1 = relu(1) = 1, h2 = relu(-3 + 0.5) = 0
    assert relu_y.squeeze(-1).tolist() == pytest.approx([3.0, 1.0])
    assert relu_h.item() == 0.0


def test_two_unit_layer_matches_hand_calculation():
    layer = ExplicitRNN(2, 2, 1, activation="identity").set_weights(
        W_xh=[[1.0, 0.0], [0.0, 2.0]],
        W_hh=[[0.0, 1.0], [1.0, 0.0]],  # the units swap their states each step
        b_h=[0.0, 0.1],
        W_hy=[[1.0, -1.0]],
        b_y=[0.0],
    )
    x = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]])  # (B=1, T=2, D=2)
    y, h = layer(x)
    # h1 = (1, 2 + 0.1) = (1, 2.1); h2 = (0 + 2.1, 2 + 1 + 0.1) = (2.1, 3.1)
    assert h[0].tolist() == pytest.approx([2.1, 3.1])
    assert y[0, :, 0].tolist() == pytest.approx([1 - 2.1, 2.1 - 3.1])


def test_initial_state_is_zero_by_default_and_settable():
    layer = scalar_layer()
    x = torch.tensor([[2.0]])
    assert layer(x)[1].item() == pytest.approx(2.0)
    layer.set_weights(h0=4.0)  # h1 = 2 + 0.5 * 4
    assert layer(x)[1].item() == pytest.approx(4.0)
    assert layer(x, h0=torch.tensor([-4.0]))[1].item() == pytest.approx(0.0)  # explicit h0 wins


def test_stateless_layer_replays_the_same_sequence_identically():
    layer = scalar_layer("tanh")
    x = torch.tensor([[0.3], [-0.7], [1.1]])
    assert torch.equal(layer(x)[0], layer(x)[0])


def test_stateful_layer_carries_state_until_reset():
    full = scalar_layer()(torch.tensor([[1.0], [2.0], [3.0]]))[0]
    layer = scalar_layer(stateful=True)
    first, _ = layer(torch.tensor([[1.0], [2.0]]))
    second, _ = layer(torch.tensor([[3.0]]))  # starts from h2 = 2.5: h3 = 4.25, y3 = 9.5
    assert torch.allclose(torch.cat([first, second]), full)
    assert second.item() == pytest.approx(9.5)
    layer.reset_state()
    fresh, _ = layer(torch.tensor([[3.0]]))  # from h0 = 0: h = 3, y = 7
    assert fresh.item() == pytest.approx(7.0)


def test_carried_state_is_detached():
    layer = scalar_layer(stateful=True)
    layer(torch.tensor([[1.0]]))
    y, _ = layer(torch.tensor([[1.0]]))
    y.sum().backward()
    # d y / d W_xh through the current step only: y = 2 (x + 0.5 h_prev) + 1 -> 2 * x = 2
    assert layer.W_xh.grad.item() == pytest.approx(2.0)


def test_explicit_tanh_layer_agrees_with_torch_rnn():
    torch.manual_seed(0)
    layer = ExplicitRNN(3, 5, 2, activation="tanh")
    ref = torch.nn.RNN(3, 5, batch_first=True)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(layer.W_xh)
        ref.weight_hh_l0.copy_(layer.W_hh)
        ref.bias_ih_l0.copy_(layer.b_h)
        ref.bias_hh_l0.zero_()
    x = torch.randn(4, 7, 3)
    y, h = layer(x)
    hs, h_ref = ref(x)
    assert torch.allclose(h, h_ref[0], atol=1e-6)
    assert torch.allclose(y, hs @ layer.W_hy.T + layer.b_y, atol=1e-6)


def test_unknown_activation_and_weight_rejected():
    with pytest.raises(ValueError):
        ExplicitRNN(activation="sigmoid")
    with pytest.raises(KeyError):
        ExplicitRNN().set_weights(W_xy=1.0)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_sequence_model_shapes(cell, bidirectional):
    tokens = torch.randint(0, 7, (3, 11))
    many = SequenceModel(7, 5, mode="many_to_many", cell=cell, hidden_dim=8, num_layers=2, bidirectional=bidirectional)
    one = SequenceModel(7, 4, mode="many_to_one", cell=cell, hidden_dim=8, bidirectional=bidirectional)
    assert many(tokens).shape == (3, 11, 5)
    assert one(tokens).shape == (3, 4)
    outputs, _ = many.run(tokens)
    assert outputs.shape == (3, 11, 8 * (2 if bidirectional else 1))


@pytest.mark.parametrize("cell", CELLS)
def test_bidirectional_many_to_many_sees_the_future(cell):
    torch.manual_seed(0)
    tokens = torch.randint(0, 7, (2, 9))
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 7  # change only the last token
    for bidirectional, sees_future in [(False, False), (True, True)]:
        model = SequenceModel(7, 3, cell=cell, hidden_dim=8, bidirectional=bidirectional)
        first_step_moves = not torch.allclose(model(tokens)[:, 0], model(changed)[:, 0])
        assert first_step_moves == sees_future


@pytest.mark.parametrize("cell", CELLS)
def test_bidirectional_many_to_one_uses_both_directions_final_states(cell):
    torch.manual_seed(0)
    model = SequenceModel(7, 3, mode="many_to_one", cell=cell, hidden_dim=8, bidirectional=True)
    tokens = torch.randint(0, 7, (2, 9))
    _, state = model.rnn(model.embed(tokens))
    h_n = state[0] if cell == "lstm" else state  # (directions, B, H)
    expected = model.head(torch.cat([h_n[0], h_n[1]], -1))  # forward after step T, backward after step 1
    assert torch.allclose(model(tokens), expected, atol=1e-6)


@pytest.mark.parametrize("cell", CELLS)
def test_every_parameter_gets_a_finite_gradient(cell):
    model = SequenceModel(6, 6, cell=cell, hidden_dim=8, num_layers=2, bidirectional=True)
    model(torch.randint(0, 6, (4, 5))).logsumexp(-1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("cell", CELLS)
def test_generate_appends_tokens_and_carries_state(cell):
    torch.manual_seed(0)
    model = SequenceModel(6, 6, cell=cell, hidden_dim=8).eval()
    prefix = torch.randint(0, 6, (2, 3))
    out = model.generate(prefix, max_new_tokens=4)
    assert out.shape == (2, 7) and torch.equal(out[:, :3], prefix)
    # Generating step by step with a carried state equals re-reading the whole sequence each time.
    for t in range(3, 7):
        assert torch.equal(model(out[:, :t])[:, -1].argmax(-1), out[:, t])
    one_to_many = model.generate(prefix[:, :1], max_new_tokens=5)  # a single start token
    assert one_to_many.shape == (2, 6)


def test_generate_stops_at_eos():
    model = SequenceModel(5, 5, cell="gru", hidden_dim=4)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([0.0, 5.0, 0.0, 0.0, 0.0]))  # always predicts token 1
    out = model.generate(torch.tensor([[3, 4]]), max_new_tokens=10, eos_index=1)
    assert out.tolist() == [[3, 4, 1]]


def test_generate_rejects_models_that_cannot_generate():
    with pytest.raises(ValueError):
        SequenceModel(5, 5, bidirectional=True).generate(torch.tensor([[1]]), 3)
    with pytest.raises(ValueError):
        SequenceModel(5, 2).generate(torch.tensor([[1]]), 3)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_chrono_init_sets_long_memory_gate_biases(cell):
    model = SequenceModel(4, 2, cell=cell, hidden_dim=16, gate_init="chrono", chrono_max_len=100)
    keep = model.rnn.bias_ih_l0[16:32]  # LSTM forget gate / GRU update gate
    assert (keep >= 0).all() and (keep <= math.log(99) + 1e-6).all() and keep.std() > 0
    assert (model.rnn.bias_hh_l0 == 0).all()
    if cell == "lstm":
        assert torch.equal(model.rnn.bias_ih_l0[:16], -keep)  # input gate opposes the forget gate


def test_chrono_init_leaves_a_plain_rnn_alone():
    torch.manual_seed(0)
    default = SequenceModel(4, 2, cell="rnn", hidden_dim=8)
    torch.manual_seed(0)
    chrono = SequenceModel(4, 2, cell="rnn", hidden_dim=8, gate_init="chrono")
    for (name, a), b in zip(default.named_parameters(), chrono.parameters()):
        assert torch.equal(a, b), name


def test_recurrent_gain_scales_orthogonal_recurrent_weights():
    model = SequenceModel(4, 2, cell="rnn", hidden_dim=16, recurrent_gain=2.0)
    singular_values = torch.linalg.svdvals(model.rnn.weight_hh_l0.detach())
    assert torch.allclose(singular_values, torch.full((16,), 2.0), atol=1e-4)
