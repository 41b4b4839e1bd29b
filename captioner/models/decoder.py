"""LSTM caption decoder: one word per step, conditioned on the video vector; teacher forcing, greedy and beam search."""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from captioner.config import GENERATION

MIN_LEN = GENERATION.min_len  # the fewest words a generated caption holds: an empty one says nothing


@dataclass
class _Memory:
    """What the decoder attends over: keys `(N, T, A)`, values `(N, T, E)`, mask `(N, T)` of real frames."""

    keys: torch.Tensor
    values: torch.Tensor
    mask: Optional[torch.Tensor]

    def repeat(self, k: int) -> "_Memory":
        rep = lambda x: None if x is None else x.repeat_interleave(k, 0)  # noqa: E731
        return _Memory(rep(self.keys), rep(self.values), rep(self.mask))

    def select(self, rows: torch.Tensor) -> "_Memory":
        return _Memory(self.keys[rows], self.values[rows], None if self.mask is None else self.mask[rows])


def _outside_autocast(generate):
    """Run a generation method with autocast off and its float inputs in the weights' dtype.

    Under `torch.autocast` (Lightning's `bf16-mixed`/`16-mixed` validation, or a user's own `with torch.autocast`)
    `F.linear` returns bfloat16/float16 while the hand-written step accumulates into that buffer in place with the
    float32 weights (`addmm_`), which autocast does not cover: a dtype error. Generation is a small share of the
    work, and a beam compares summed log-probabilities whose ranking low precision would change, so it runs in
    the weights' own precision: the captions are the ones the model gives without autocast.
    """

    @functools.wraps(generate)
    def wrapper(self: "CaptionDecoder", video: torch.Tensor, *args, **kwargs):
        dtype, device = self.out.weight.dtype, video.device.type
        cast = lambda x: x.to(dtype) if torch.is_tensor(x) and x.is_floating_point() else x  # noqa: E731
        off = torch.autocast(device, enabled=False) if torch.is_autocast_enabled(device) else contextlib.nullcontext()
        with off:
            return generate(self, cast(video), *map(cast, args), **{k: cast(v) for k, v in kwargs.items()})

    return wrapper


class CaptionDecoder(nn.Module):
    """Word embedding + LSTM conditioned on a video vector, optionally attending over frames at every step.

    The video vector `(B, D)` sets the LSTM's initial state. Beside every word embedding the LSTM reads a
    context: the projected video vector (the classic design, Venugopalan et al., 2015), or, when a memory
    `(B, T, M)` is given, an attention-weighted sum of it recomputed at each step from the previous hidden state
    (soft temporal attention, Yao et al., 2015).

    Args:
        vocab_size: number of words, specials included.
        feature_dim: size D of the video vector.
        embed_dim: word embedding size (and context size).
        hidden_dim: LSTM hidden size.
        num_layers: stacked LSTM layers.
        dropout: dropout on the video vector, the embeddings and the LSTM output.
        memory_dim: size M of the attention memory; `None` for a decoder without attention.
        attention_dim: size of the attention's hidden layer.
        pad_id, bos_id, eos_id, unk_id: special token ids of the vocabulary. Generation never emits `<pad>`,
            `<bos>` or `<unk>` (a caption that says "<unk>" says nothing; the next likeliest word is a guess).
    """

    def __init__(
        self,
        vocab_size: int,
        feature_dim: int,
        embed_dim: int = 256,
        hidden_dim: int = 512,
        num_layers: int = 1,
        dropout: float = 0.3,
        memory_dim: Optional[int] = None,
        attention_dim: int = 256,
        pad_id: int = 0,
        bos_id: int = 1,
        eos_id: int = 2,
        unk_id: int = 3,
    ):
        super().__init__()
        self.vocab_size, self.num_layers, self.hidden_dim = vocab_size, num_layers, hidden_dim
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = pad_id, bos_id, eos_id, unk_id
        self.video_norm = nn.LayerNorm(feature_dim)
        self.init_state = nn.Linear(feature_dim, 2 * num_layers * hidden_dim)
        if memory_dim is None:
            self.video_proj = nn.Linear(feature_dim, embed_dim)
        else:
            self.memory_norm = nn.LayerNorm(memory_dim)
            self.memory_key = nn.Linear(memory_dim, attention_dim)
            self.memory_value = nn.Linear(memory_dim, embed_dim)
            self.query = nn.Linear(hidden_dim, attention_dim, bias=False)
            self.score = nn.Linear(attention_dim, 1, bias=False)
        self.memory_dim = memory_dim
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.lstm = nn.LSTM(2 * embed_dim, hidden_dim, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_dim, vocab_size)

    def start(self, video: torch.Tensor, memory: Optional[torch.Tensor] = None,
              memory_mask: Optional[torch.Tensor] = None):
        """Video vector `(B, D)` (+ memory `(B, T, M)`) -> static context `(B, E)` or a `_Memory`, LSTM state."""
        if (memory is None) != (self.memory_dim is None):
            raise ValueError("this decoder " + ("needs" if self.memory_dim else "takes no") + " attention memory")
        v = self.drop(self.video_norm(video))
        h, c = torch.tanh(self.init_state(v)).view(v.shape[0], 2, self.num_layers, self.hidden_dim).unbind(1)
        state = (h.transpose(0, 1).contiguous(), c.transpose(0, 1).contiguous())  # (B, L, H) -> (L, B, H)
        if memory is None:
            return self.video_proj(v), state
        m = self.drop(self.memory_norm(memory))
        return _Memory(self.memory_key(m), self.memory_value(m), memory_mask), state

    def attention_weights(self, h: torch.Tensor, mem: _Memory) -> torch.Tensor:
        """Hidden state `(N, H)` -> weights `(N, T)` over frames (sum to 1; zero on padded frames)."""
        scores = self.score(torch.tanh(mem.keys + self.query(h).unsqueeze(1))).squeeze(-1)  # (N, T, A) -> (N, T)
        if mem.mask is not None:
            scores = scores.masked_fill(~mem.mask, float("-inf"))
        return scores.softmax(-1)

    def _context(self, ctx, h_top: torch.Tensor) -> torch.Tensor:
        if isinstance(ctx, _Memory):
            w = self.attention_weights(h_top, ctx)
            return torch.bmm(w.unsqueeze(1), ctx.values).squeeze(1)  # (N, 1, T) @ (N, T, E) -> (N, E)
        return ctx

    def forward(self, video: torch.Tensor, tokens: torch.Tensor, memory: Optional[torch.Tensor] = None,
                memory_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Teacher forcing: video `(B, D)` and input tokens `(B, S)` (starting with `<bos>`) -> logits `(B, S, V)`."""
        ctx, state = self.start(video, memory, memory_mask)
        emb = self.drop(self.embed(tokens))  # (B, S) -> (B, S, E)
        if not isinstance(ctx, _Memory):  # one LSTM call for the whole sequence
            out, _ = self.lstm(torch.cat([emb, ctx.unsqueeze(1).expand_as(emb)], dim=-1), state)
        else:  # the context depends on the previous step's state: step by step
            steps = []
            for t in range(tokens.shape[1]):
                x = torch.cat([emb[:, t], self._context(ctx, state[0][-1])], dim=-1).unsqueeze(1)
                o, state = self.lstm(x, state)
                steps.append(o)
            out = torch.cat(steps, dim=1)
        return self.out(self.drop(out))  # (B, S, H) -> (B, S, V)

    def loss(self, video: torch.Tensor, captions: torch.Tensor, memory: Optional[torch.Tensor] = None,
             memory_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Padding-masked cross-entropy of `<bos> w1 .. wn <eos> <pad>..` captions `(B, S)`."""
        logits = self(video, captions[:, :-1], memory, memory_mask)
        return F.cross_entropy(logits.flatten(0, 1), captions[:, 1:].flatten(), ignore_index=self.pad_id)

    def _generation_inputs(self, ctx, rows: int, steps: int):
        """Hoist out of the generation loop the first LSTM layer's input products that do not change per step.

        The first layer's gates are `W_ih [embed(w); context] + b_ih + W_hh h + b_hh`, and `W_ih` splits into a word
        half and a context half. A static context (no attention) gives `W_ctx context` once per video instead of at
        every step for every beam; with a vocabulary no larger than the words the search can generate
        (`V <= rows * steps`), `W_word embed(w) + b` is tabulated for every word. Each step then multiplies only
        `W_hh h`: half the FLOPs of the LSTM call it replaces, which are most of a step.

        Returns:
            `(table, ctx)`: the word table `(V, 4H)` or `None`; `ctx` as given for attention, else its gate term.
        """
        w_word, w_ctx, bias = self._first_layer_input()
        table = F.linear(self.embed.weight, w_word, bias) if self.vocab_size <= rows * steps else None
        return table, (ctx if isinstance(ctx, _Memory) else F.linear(ctx, w_ctx))

    def _first_layer_input(self):
        """The first LSTM layer's input weights split into their word and context halves, and its biases summed."""
        e, lstm = self.embed.embedding_dim, self.lstm
        return lstm.weight_ih_l0[:, :e], lstm.weight_ih_l0[:, e:], lstm.bias_ih_l0 + lstm.bias_hh_l0

    def _step(self, ctx, table: Optional[torch.Tensor], tokens: torch.Tensor, state):
        """One generation step: `tokens (N,)`, state `(L, N, H)` x 2 -> log-probabilities `(N, V)`, new state.

        The same LSTM as in `forward`, written out cell by cell to use `_generation_inputs` (gate order i, f, g, o
        as `nn.LSTM`); no dropout, which generation never applies. Written for few passes over the `(N, 4H)` gates:
        they accumulate in one buffer (`addmm_`, no copy of the input term) and the nonlinearities run in place.
        `tanh(x)` is computed as `2 sigmoid(2x) - 1` (equal to within 2e-7): PyTorch's CPU tanh costs five times a
        sigmoid, two of them per step were a quarter of a batched beam search's time past its matrix products.
        """
        h, c = state
        lstm = self.lstm
        attend = isinstance(ctx, _Memory)
        if table is None or attend:  # what `_generation_inputs` could not hoist out of the loop
            w_word, w_ctx, bias = self._first_layer_input()
        gates = F.embedding(tokens, table) if table is not None else F.linear(self.embed(tokens), w_word, bias)
        gates += F.linear(self._context(ctx, h[-1]), w_ctx) if attend else ctx
        h_new, c_new = torch.empty_like(h), torch.empty_like(c)
        for layer in range(self.num_layers):
            if layer > 0:
                gates = F.linear(h_new[layer - 1], getattr(lstm, f"weight_ih_l{layer}"),
                                 getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}"))
            gates.addmm_(h[layer], getattr(lstm, f"weight_hh_l{layer}").t())  # += h W_hh^T, no copy
            i, f, g, o = gates.chunk(4, dim=1)
            g.mul_(2)
            gates.sigmoid_()  # i, f, o, and sigmoid(2 g): tanh(g) = 2 sigmoid(2 g) - 1
            cell = torch.mul(f, c[layer], out=c_new[layer]).addcmul_(i, g.mul_(2).sub_(1))  # f c + i tanh(g)
            torch.mul(cell, 2, out=h_new[layer]).sigmoid_().mul_(2).sub_(1).mul_(o)  # o tanh(c)
        logits = self.out(h_new[-1])  # (N, V)
        logits[:, self.never_generated] = float("-inf")
        return F.log_softmax(logits, dim=-1), (h_new, c_new)

    @property
    def never_generated(self) -> list[int]:
        """The ids generation never emits as words: `<pad>`, `<bos>`, `<unk>`."""
        return [self.pad_id, self.bos_id, self.unk_id]

    def forbid_eos(self, logp: torch.Tensor) -> torch.Tensor:
        """In place: `<eos>` gets `-inf` in `logp (N, V)`, so a caption shorter than `min_len` goes on.

        Applied after the softmax, as `block_repeats`: the scores stay the model's log-probabilities. A row with
        nothing else left (a vocabulary so small that `block_repeats` forbade every word) keeps `<eos>`: a caption
        always has a way to end.
        """
        eos = logp[:, self.eos_id].clone()
        logp[:, self.eos_id] = float("-inf")
        stuck = ~logp.isfinite().any(1)
        if stuck.any():
            logp[stuck, self.eos_id] = eos[stuck]
        return logp

    @torch.no_grad()
    @_outside_autocast
    def greedy(self, video: torch.Tensor, max_len: int = GENERATION.max_len, memory: Optional[torch.Tensor] = None,
               memory_mask: Optional[torch.Tensor] = None,
               no_repeat_ngram: int = GENERATION.no_repeat_ngram, return_scores: bool = False, min_len: int = MIN_LEN):
        """Most likely word at each step. Returns token ids `(B, <=max_len)`, `<pad>` after `<eos>`.

        `no_repeat_ngram` blocks repeats (see `block_repeats`; 0 = off); `<eos>` is forbidden before `min_len`
        words (see `forbid_eos`). With `return_scores`, also each caption's mean log-probability per word, `<eos>`
        included `(B,)`.
        """
        ctx, state = self.start(video, memory, memory_mask)
        b = video.shape[0]
        table, ctx = self._generation_inputs(ctx, b, max_len)
        tokens = torch.full((b,), self.bos_id, dtype=torch.long, device=video.device)
        done = torch.zeros(b, dtype=torch.bool, device=video.device)
        total, length = torch.zeros(b, device=video.device), torch.zeros(b, device=video.device)
        out = []
        for step in range(max_len):
            logp, state = self._step(ctx, table, tokens, state)
            if no_repeat_ngram > 0 and out:
                block_repeats(logp, torch.stack(out, dim=1), no_repeat_ngram, self.pad_id)
            if step < min_len:
                self.forbid_eos(logp)
            best, tokens = logp.max(-1)
            tokens = tokens.masked_fill(done, self.pad_id)
            total += best.masked_fill(done, 0.0)
            length += (~done).float()
            out.append(tokens)
            done |= tokens == self.eos_id
            if done.all():
                break
        ids = torch.stack(out, dim=1)
        return (ids, total / length.clamp_min(1.0)) if return_scores else ids

    @torch.no_grad()
    @_outside_autocast
    def beam_search(self, video: torch.Tensor, beam_size: int = GENERATION.beam_size, max_len: int = GENERATION.max_len,
                    length_penalty: float = GENERATION.length_penalty,
                    memory: Optional[torch.Tensor] = None, memory_mask: Optional[torch.Tensor] = None,
                    no_repeat_ngram: int = GENERATION.no_repeat_ngram, return_scores: bool = False,
                    min_len: int = MIN_LEN):
        """Beam search batched over videos (all `B * K` open hypotheses advance in one LSTM call per step).

        A finished hypothesis keeps its slot and score but leaves the LSTM call; at the end each video's hypotheses
        are ranked by `log p / length ** length_penalty` (0 = plain log-probability, 1 = per-word average). A video
        whose search is over leaves the batch at once, so the others' steps get cheaper: the result for each video
        is the one a search over that video alone gives.

        `no_repeat_ngram` blocks repeats in every hypothesis (see `block_repeats`; 0 = off). `<eos>` is forbidden
        before `min_len` words (see `forbid_eos`): without it a search whose first step puts `<eos>` in the beam
        returns the empty caption, which outscores every longer one when nothing divides by the length.

        Returns:
            token ids `(B, <=max_len)` of the best hypothesis, `<pad>` after `<eos>`; with `return_scores`, also
            its mean log-probability per word, `<eos>` included `(B,)`.
        """
        b, k, v, dev = video.shape[0], beam_size, self.vocab_size, video.device
        ctx, (h, c) = self.start(video, memory, memory_mask)
        table, ctx = self._generation_inputs(ctx, b * k, max_len)
        # Slots: `width` hypotheses per video still searching, finished ones included. The first step starts from
        # one hypothesis per video (K identical beams would pick duplicates) and its top K words open the K beams:
        # `width` is 1, then K. Only the open slots go through the LSTM: `h`, `c` and `step_ctx` hold a row per open
        # slot, `open_slots` says which ones they are (None: all of them); a finished one only extends with <pad>.
        width = 1
        videos = torch.arange(b, device=dev)  # (n,): the input video each group of `width` slots searches for
        scores = torch.zeros(b, 1, device=dev)  # (n, width)
        tokens = torch.full((b,), self.bos_id, dtype=torch.long, device=dev)  # (n * width,), as `done`, `lengths`
        done = torch.zeros(b, dtype=torch.bool, device=dev)
        lengths = torch.zeros(b, device=dev)
        history = torch.empty(b, 0, dtype=torch.long, device=dev)  # (n * width, step)
        open_slots, row_videos, step_ctx = None, videos, ctx
        out = torch.full((b, max(max_len, 1)), self.pad_id, dtype=torch.long, device=dev)
        best_score = torch.zeros(b, device=dev)
        for step in range(max_len):
            n = len(videos)
            step_tokens, step_history = (tokens, history) if open_slots is None else (tokens[open_slots],
                                                                                      history[open_slots])
            logp, (h, c) = self._step(step_ctx, table, step_tokens, (h, c))
            if no_repeat_ngram > 0 and step > 0:
                block_repeats(logp, step_history, no_repeat_ngram, self.pad_id)
            if step < min_len:
                self.forbid_eos(logp)
            if open_slots is None:
                cand = scores.view(-1, 1) + logp
            else:  # a finished slot's only candidate: itself extended with <pad>, at no cost
                cand = torch.full((len(done), v), float("-inf"), device=dev, dtype=logp.dtype)
                cand[:, self.pad_id] = scores.view(-1)
                cand.index_copy_(0, open_slots, scores.view(-1)[open_slots].unsqueeze(1) + logp)
            cand = cand.view(n, width * v)
            few = cand.shape[1] < k  # a vocabulary smaller than the beam, at the first step: pad with dead hypotheses
            scores, flat = (F.pad(cand, (0, k - cand.shape[1]), value=float("-inf")) if few else cand).topk(k, dim=1)
            if few:
                flat = flat.clamp_max(cand.shape[1] - 1)
            parents = (flat // v + torch.arange(n, device=dev).unsqueeze(1) * width).view(-1)  # slots extended
            tokens = (flat % v).view(-1)
            was_done = done[parents]
            lengths = lengths[parents] + (~was_done).float()
            done = was_done | (tokens == self.eos_id)
            history = torch.cat([history[parents], tokens.unsqueeze(1)], dim=1)
            width = k
            over = done.view(n, k).all(1)
            if length_penalty == 0:  # an unfinished hypothesis can only lose probability: none can overtake
                over |= self._settled(scores, done.view(n, k))
            if step == max_len - 1:
                over[:] = True
            if over.any():  # those videos' best hypotheses are their results; they leave the batch
                ended = over.nonzero().flatten()
                length = lengths.view(n, k)[ended].clamp_min(1.0)
                ranked = (scores[ended] / length.pow(length_penalty)).argmax(1, keepdim=True)  # (ended, 1)
                out[videos[ended], : step + 1] = history[ended * k + ranked.squeeze(1)]
                best_score[videos[ended]] = (scores[ended] / length).gather(1, ranked).squeeze(1)
                keep = (~over).nonzero().flatten()
                if len(keep) == 0:
                    break
                slots = (keep.unsqueeze(1) * k + torch.arange(k, device=dev)).view(-1)  # the kept videos' K slots
                videos, scores = videos[keep], scores[keep]
                tokens, done, lengths, history, parents = (tokens[slots], done[slots], lengths[slots], history[slots],
                                                           parents[slots])
            h, c, open_slots = self._next_open_rows(h, c, open_slots, parents, done)
            rows = videos.repeat_interleave(k) if open_slots is None else videos[open_slots // k]
            if rows.shape != row_videos.shape or not torch.equal(rows, row_videos):  # else the context rows stand
                row_videos = rows
                step_ctx = ctx.select(rows) if isinstance(ctx, _Memory) else ctx.index_select(0, rows)
        width = int((out != self.pad_id).sum(1).max().clamp_min(1))
        out = out[:, :width]  # drop the columns that only hold padding
        return (out, best_score) if return_scores else out

    @staticmethod
    def _next_open_rows(h: torch.Tensor, c: torch.Tensor, open_slots: Optional[torch.Tensor], parents: torch.Tensor,
                        done: torch.Tensor):
        """The LSTM state rows of the next step's open slots, and those slots (None: all open).

        Args:
            h, c: `(L, M, H)`, a row per slot open at this step (`open_slots`, or all slots when None).
            parents: `(N,)` the slot of this step each new slot extends.
            done: `(N,)` which new slots are finished: they leave the LSTM (an open slot's parent was open).
        """
        if done.any():
            new_open = (~done).nonzero().flatten()
            parents = parents[new_open]
        else:
            new_open = None
        if open_slots is not None:  # parents are slots; the state holds the open ones' rows in order
            row_of = torch.full((int(open_slots.max()) + 1,), -1, dtype=torch.long, device=parents.device)
            row_of[open_slots] = torch.arange(len(open_slots), device=parents.device)
            parents = row_of[parents]
        return h.index_select(1, parents), c.index_select(1, parents), new_open  # (faster than h[:, rows] on CPU)

    def sample(self, video: torch.Tensor, num_samples: int = 5, max_len: int = GENERATION.max_len,
               memory: Optional[torch.Tensor] = None, memory_mask: Optional[torch.Tensor] = None,
               no_repeat_ngram: int = 0, generator: Optional[torch.Generator] = None, min_len: int = MIN_LEN):
        """Draw `num_samples` captions per video from the model's distribution (multinomial), with gradients.

        For self-critical training: the log-probability of each drawn word is differentiable, so a reward times
        it is a policy gradient. The steps are `forward`'s (the `nn.LSTM` module, dropout as the module's mode
        says), not `_step`'s, whose in-place arithmetic autograd cannot follow. Under autocast the LSTM and linear
        layers run in low precision as in teacher forcing, and the softmax in float32: the log-probabilities of
        rare words, and the sampling from them, keep their precision.

        `no_repeat_ngram` draws from the distribution renormalised without the repeats `block_repeats` forbids
        (0 = off), and before `min_len` words without `<eos>`; the log-probabilities returned are those of the
        distribution drawn from.

        Returns:
            token ids `(B * K, <=max_len)` with the K samples of a video in consecutive rows, `<pad>` after `<eos>`;
            each word's log-probability `(B * K, <=max_len)`, 0 at `<pad>`.
        """
        k, dev = num_samples, video.device
        ctx, state = self.start(video, memory, memory_mask)
        ctx = ctx.repeat(k) if isinstance(ctx, _Memory) else ctx.repeat_interleave(k, 0)  # (B, E) -> (B * K, E)
        state = tuple(s.repeat_interleave(k, 1) for s in state)  # (L, B, H) -> (L, B * K, H)
        n = video.shape[0] * k
        tokens = torch.full((n,), self.bos_id, dtype=torch.long, device=dev)
        done = torch.zeros(n, dtype=torch.bool, device=dev)
        never = torch.tensor(self.never_generated, device=dev)
        out, logps = [], []
        for step in range(max_len):
            emb = self.drop(self.embed(tokens))  # (N,) -> (N, E)
            x = torch.cat([emb, self._context(ctx, state[0][-1]).to(emb.dtype)], dim=-1).unsqueeze(1)
            o, state = self.lstm(x, state)  # (N, 1, 2E) -> (N, 1, H)
            logits = self.out(self.drop(o.squeeze(1))).float().index_fill(1, never, float("-inf"))  # (N, V)
            logp = F.log_softmax(logits, dim=-1)
            if (no_repeat_ngram > 0 and out) or step < min_len:
                banned = torch.zeros_like(logp)
                if no_repeat_ngram > 0 and out:
                    block_repeats(banned, torch.stack(out, dim=1), no_repeat_ngram, self.pad_id)
                if step < min_len:
                    kept = self.forbid_eos(logp.detach() + banned)[:, self.eos_id].isfinite()  # rows left no word
                    banned[:, self.eos_id] = banned[:, self.eos_id].masked_fill(~kept, float("-inf"))
                logp = F.log_softmax(logp + banned, dim=-1)  # out of place: autograd keeps log_softmax's output
            word = torch.multinomial(logp.detach().exp(), 1, generator=generator).squeeze(1)  # (N,)
            word = word.masked_fill(done, self.pad_id)
            logps.append(logp.gather(1, word.unsqueeze(1)).squeeze(1).masked_fill(done, 0.0))
            out.append(word)
            tokens = word
            done = done | (word == self.eos_id)
            if done.all():
                break
        return torch.stack(out, dim=1), torch.stack(logps, dim=1)

    @staticmethod
    def _settled(scores: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        """Per video `(B,)`: True when its best finished hypothesis outscores all its unfinished ones.

        Without a length penalty an unfinished hypothesis can only lose probability, so none can overtake.
        """
        best_done = scores.masked_fill(~done, float("-inf")).max(1).values
        best_open = scores.masked_fill(done, float("-inf")).max(1).values
        return best_done >= best_open


def block_repeats(logp: torch.Tensor, history: torch.Tensor, n: int, spare: int) -> torch.Tensor:
    """Forbid, in place, the next words that would repeat: `logp (N, V)` gets `-inf` where a word would complete a
    word n-gram that `history (N, t)` already holds, say the same word a third time in a row, or appear more than
    `n` times in the caption.

    The classic decoder's failure on unfamiliar input is a loop ("left left left ...", "grows grows growing grows
    grows ..."): a caption never holds a word trigram twice, nor a word four times, so blocking them (the first is
    `no_repeat_ngram_size` in fairseq and Hugging Face) removes loops at no cost to real captions. `<eos>` is never
    blocked (a hypothesis holding it is over), so a word is always left.

    Written as a few whole-tensor operations and one scatter, since it runs at every step of every search: `spare`
    is a column that is `-inf` already (`<pad>`, which generation never emits), where "nothing to forbid" lands.
    """
    num, t = history.shape
    if n <= 0 or t < 2:  # off, or nothing to repeat yet
        return logp
    last = history[:, -1:]
    banned = [torch.where(last == history[:, -2:-1], last, spare)]  # (N, 1): not a third time in a row
    if t >= n:
        prefix = history[:, t - n + 1 :].unsqueeze(1)  # (N, 1, n - 1): the words a next n-gram starts with
        seen = (history[:, : t - 1].unfold(1, n - 1, 1) == prefix).all(-1)  # (N, t - n + 1): n-grams starting so
        banned.append(torch.where(seen, history[:, n - 1 :], spare))  # ... ban each one's last word
        said = (history.unsqueeze(2) == history.unsqueeze(1)).sum(-1)  # (N, t): how often each word was said
        banned.append(torch.where(said >= n, history, spare))
    return logp.scatter_(1, torch.cat(banned, dim=1), float("-inf"))
