"""Recurrent sequence models: an explicit RNN layer written out by hand, and an RNN/GRU/LSTM sequence model."""

from __future__ import annotations

import math
from typing import Literal, Optional, Union

import torch
from torch import Tensor, nn

Activation = Literal["identity", "tanh", "relu"]
Cell = Literal["rnn", "gru", "lstm"]
Mode = Literal["many_to_one", "many_to_many"]
GateInit = Literal["default", "chrono"]
State = Union[Tensor, tuple[Tensor, Tensor]]  # h, or (h, c) for an LSTM

_ACTIVATIONS = {"identity": nn.Identity, "tanh": nn.Tanh, "relu": nn.ReLU}
_CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


class ExplicitRNN(nn.Module):
    """One recurrent layer, written out step by step so every number can be checked by hand.

    h_t = act(W_xh x_t + W_hh h_{t-1} + b_h)
    y_t = W_hy h_t + b_y

    The state starts at `h0` (zero unless set). With `stateful=True` the last state of one call is the
    first state of the next, as when a long stream is fed in chunks; `reset_state()` starts afresh.
    Carried states are detached, so gradients stop at the chunk boundary (truncated backpropagation).

    Args:
        input_size: Features per input step (D).
        hidden_size: Size of the hidden state (H).
        output_size: Features per output step (O).
        activation: "identity", "tanh" or "relu", applied to the hidden pre-activation.
        stateful: Carry the hidden state across calls until `reset_state()`.
    """

    def __init__(
        self,
        input_size: int = 1,
        hidden_size: int = 1,
        output_size: int = 1,
        activation: Activation = "tanh",
        stateful: bool = False,
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.W_xh = nn.Parameter(torch.empty(hidden_size, input_size))
        self.W_hh = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.b_h = nn.Parameter(torch.empty(hidden_size))
        self.W_hy = nn.Parameter(torch.empty(output_size, hidden_size))
        self.b_y = nn.Parameter(torch.empty(output_size))
        self.register_buffer("h0", torch.zeros(hidden_size))
        self.act = _ACTIVATIONS[activation]()
        self.activation = activation
        self.stateful = stateful
        self.state: Optional[Tensor] = None  # (B, H), only used when stateful
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform(-1/sqrt(H), 1/sqrt(H)) like `torch.nn.RNN`."""
        bound = 1.0 / math.sqrt(self.W_hh.shape[0])
        for p in (self.W_xh, self.W_hh, self.b_h, self.W_hy, self.b_y):
            nn.init.uniform_(p, -bound, bound)

    @torch.no_grad()
    def set_weights(self, **values) -> "ExplicitRNN":
        """Set any of `W_xh, W_hh, b_h, W_hy, b_y, h0` by hand; numbers and nested lists are accepted.

        Example: `layer.set_weights(W_xh=[[1.0]], W_hh=[[0.5]], b_h=[0.0])`.
        """
        for name, value in values.items():
            if name not in ("W_xh", "W_hh", "b_h", "W_hy", "b_y", "h0"):
                raise KeyError(f"unknown weight {name!r}")
            target = getattr(self, name)
            target.copy_(torch.as_tensor(value, dtype=target.dtype).reshape(target.shape))
        return self

    def reset_state(self) -> None:
        """Forget the carried state; the next call starts from `h0`."""
        self.state = None

    def forward(self, x: Tensor, h0: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Run the layer over a sequence.

        Args:
            x: Inputs, (B, T, D) or unbatched (T, D).
            h0: Initial state (B, H) or (H,); overrides both `self.h0` and a carried state.

        Returns:
            Outputs y (B, T, O) and the last hidden state h_T (B, H); without the batch dim if x had none.
        """
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(0)  # (T, D) -> (1, T, D)
        batch, steps, _ = x.shape
        if h0 is not None:
            h = h0.expand(batch, -1) if h0.dim() == 1 else h0
        elif self.stateful and self.state is not None:
            h = self.state
        else:
            h = self.h0.expand(batch, -1)  # (H,) -> (B, H)
        hidden = []
        for t in range(steps):
            h = self.act(x[:, t] @ self.W_xh.T + h @ self.W_hh.T + self.b_h)  # (B, H)
            hidden.append(h)
        hs = torch.stack(hidden, 1) if hidden else x.new_zeros(batch, 0, self.W_hh.shape[0])  # (B, T, H)
        y = hs @ self.W_hy.T + self.b_y  # (B, T, H) -> (B, T, O)
        if self.stateful:
            self.state = h.detach()
        if unbatched:
            return y[0], h[0]
        return y, h


class SequenceModel(nn.Module):
    """Embedding -> RNN, GRU or LSTM -> linear head, used many-to-one, many-to-many, or to generate.

    - many_to_one: one prediction per sequence, from the last state (both directions' if bidirectional).
    - many_to_many: one prediction per step, synced with the input (bidirectional allowed).
    - generation (one-to-many / many-to-many): with `num_classes == vocab_size` the per-step prediction is
      the next token, and `generate` feeds each prediction back in.

    Args:
        vocab_size: Number of input tokens.
        num_classes: Size of the output layer (classes, or vocab_size for next-token prediction).
        mode: "many_to_one" or "many_to_many".
        cell: "rnn", "gru" or "lstm" (torch's fused, cuDNN-backed layers).
        embed_dim: Token embedding size.
        hidden_dim: Hidden state size per direction.
        num_layers: Stacked recurrent layers.
        bidirectional: Also read the sequence backwards; needs the whole sequence, so no generation.
        dropout: Dropout between stacked layers and before the head.
        nonlinearity: "tanh" or "relu", for cell="rnn" only.
        gate_init: "chrono" initialises the gated cells' biases so their memory time scales spread over
            1..chrono_max_len steps (Tallec & Ollivier, 2018); "default" keeps torch's init. A plain RNN
            has no gates, so this does nothing for it.
        chrono_max_len: Longest time scale for gate_init="chrono".
        recurrent_gain: If set, hidden-to-hidden matrices start orthogonal times this gain; above 1 the
            signal and gradients grow over time (used to provoke exploding gradients).
        padding_idx: Input token that is padding (its embedding stays zero).
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        mode: Mode = "many_to_many",
        cell: Cell = "lstm",
        embed_dim: int = 32,
        hidden_dim: int = 64,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        nonlinearity: Literal["tanh", "relu"] = "tanh",
        gate_init: GateInit = "default",
        chrono_max_len: int = 200,
        recurrent_gain: Optional[float] = None,
        padding_idx: Optional[int] = None,
    ) -> None:
        super().__init__()
        if cell not in _CELLS:
            raise ValueError(f"cell must be one of {sorted(_CELLS)}, got {cell!r}")
        if mode not in ("many_to_one", "many_to_many"):
            raise ValueError(f"mode must be 'many_to_one' or 'many_to_many', got {mode!r}")
        self.mode, self.cell, self.bidirectional = mode, cell, bidirectional
        self.vocab_size, self.num_classes, self.hidden_dim = vocab_size, num_classes, hidden_dim
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx)
        extra = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
        self.rnn = _CELLS[cell](
            embed_dim,
            hidden_dim,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
            **extra,
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_dim * (2 if bidirectional else 1), num_classes)
        if gate_init == "chrono":
            self._chrono_init(chrono_max_len)
        if recurrent_gain is not None:
            self._orthogonal_recurrent_init(recurrent_gain)

    @torch.no_grad()
    def _chrono_init(self, max_len: int) -> None:
        # A gate that keeps fraction sigmoid(b) of the old state remembers for about 1 / (1 - sigmoid(b)) ~ e^b
        # steps, so b ~ log(U(1, max_len - 1)) spreads memory over all time scales up to max_len.
        if self.cell == "rnn":  # no gates, nothing to set
            return
        h = self.hidden_dim
        for name, p in self.rnn.named_parameters():
            if not name.startswith("bias"):
                continue
            p.zero_()
            if not name.startswith("bias_ih"):
                continue
            keep = torch.log(torch.empty(h).uniform_(1.0, max(max_len - 1, 2)))
            if self.cell == "lstm":  # gate order: input, forget, cell, output
                p[h : 2 * h] = keep
                p[0:h] = -keep
            elif self.cell == "gru":  # gate order: reset, update (z: fraction of old state kept), new
                p[h : 2 * h] = keep

    @torch.no_grad()
    def _orthogonal_recurrent_init(self, gain: float) -> None:
        h = self.hidden_dim
        for name, p in self.rnn.named_parameters():
            if name.startswith("weight_hh"):
                for k in range(p.shape[0] // h):  # one block per gate
                    nn.init.orthogonal_(p[k * h : (k + 1) * h], gain=gain)

    def run(self, tokens: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        """Encode tokens (B, T) into per-step features (B, T, H * directions) and the last state."""
        x = self.embed(tokens)  # (B, T) -> (B, T, E)
        outputs, state = self.rnn(x, state)  # (B, T, H * directions)
        return outputs, state

    def forward(self, tokens: Tensor, state: Optional[State] = None) -> Tensor:
        """Logits: (B, C) when many_to_one, (B, T, C) when many_to_many."""
        outputs, _ = self.run(tokens, state)
        if self.mode == "many_to_one":
            if self.bidirectional:
                h = self.hidden_dim
                # The forward direction has read everything at the last step, the backward one at the first.
                outputs = torch.cat([outputs[:, -1, :h], outputs[:, 0, h:]], dim=-1)  # (B, 2H)
            else:
                outputs = outputs[:, -1]  # (B, T, H) -> (B, H)
        return self.head(self.dropout(outputs))

    @torch.no_grad()
    def generate(self, prefix: Tensor, max_new_tokens: int, eos_index: Optional[int] = None) -> Tensor:
        """Greedy generation: predict the next token, feed it back in, repeat.

        Args:
            prefix: Start tokens (B, P), P >= 1; a single token gives the one-to-many shape.
            max_new_tokens: Most tokens to add.
            eos_index: Stop once every sequence has produced this token.

        Returns:
            Tokens (B, P + n), n <= max_new_tokens; after a sequence's eos the rest is eos.
        """
        if self.mode != "many_to_many" or self.bidirectional or self.num_classes != self.vocab_size:
            raise ValueError("generation needs a unidirectional many_to_many model whose outputs are tokens")
        outputs, state = self.run(prefix)
        logits = self.head(outputs[:, -1])  # (B, V): prediction after the last prefix token
        tokens = [prefix]
        done = torch.zeros(prefix.shape[0], dtype=torch.bool, device=prefix.device)
        for _ in range(max_new_tokens):
            nxt = logits.argmax(-1)  # (B,)
            if eos_index is not None:
                nxt = nxt.masked_fill(done, eos_index)
                done |= nxt == eos_index
            tokens.append(nxt[:, None])
            if eos_index is not None and bool(done.all()):
                break
            outputs, state = self.run(nxt[:, None], state)  # one step, carrying the state
            logits = self.head(outputs[:, -1])
        return torch.cat(tokens, dim=1)
