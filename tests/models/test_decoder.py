import pytest
import torch

from captioner.models.decoder import CaptionDecoder, block_repeats
from captioner.vocab import Vocabulary

V, D = 10, 6  # a 10-word vocabulary (ids 0-3 are <pad> <bos> <eos> <unk>)


def make_decoder(**kw) -> CaptionDecoder:
    torch.manual_seed(0)
    return CaptionDecoder(V, D, embed_dim=8, hidden_dim=16, **kw)


def test_teacher_forcing_shapes_loss_and_gradients():
    dec = make_decoder(num_layers=2)
    video = torch.randn(4, D)
    caps = torch.tensor([[1, 5, 6, 2, 0], [1, 7, 2, 0, 0], [1, 4, 4, 8, 2], [1, 9, 2, 0, 0]])
    logits = dec(video, caps[:, :-1])
    assert logits.shape == (4, 4, V)
    loss = dec.loss(video, caps)
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in dec.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} gets no gradient"


def test_padding_does_not_change_the_loss():
    dec = make_decoder().eval()
    video = torch.randn(1, D)
    short = torch.tensor([[1, 5, 6, 2]])
    padded = torch.tensor([[1, 5, 6, 2, 0, 0, 0]])
    assert torch.allclose(dec.loss(video, short), dec.loss(video, padded))


def test_generation_respects_max_len_and_stops_at_eos():
    dec = make_decoder().eval()
    video = torch.randn(3, D)
    out = dec.greedy(video, max_len=5)
    assert out.shape[0] == 3 and out.shape[1] <= 5
    with torch.no_grad():  # force <eos> whenever it is allowed: one word (the minimum), then <eos>
        dec.out.bias.fill_(-1e4)
        dec.out.bias[dec.eos_id] = 1e4
    for ids in (dec.greedy(video, max_len=5), dec.beam_search(video, beam_size=3, max_len=5)):
        assert ids.shape == (3, 2) and (ids[:, 1] == dec.eos_id).all()
    # min_len=0 allows the empty caption: generation stops after one step
    assert dec.greedy(video, max_len=5, min_len=0).tolist() == [[2], [2], [2]]
    assert dec.beam_search(video, beam_size=3, max_len=5, min_len=0).tolist() == [[2], [2], [2]]


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("attention", [False, True])
@pytest.mark.parametrize("tabulated", [True, False])
def test_generation_steps_give_the_teacher_forced_log_probabilities(num_layers, attention, tabulated):
    """Generation's hand-written LSTM step (input products hoisted out of the loop) is the nn.LSTM of `forward`."""
    dec = make_decoder(num_layers=num_layers, memory_dim=5 if attention else None).eval()
    video, memory = torch.randn(3, D), (torch.randn(3, 4, 5) if attention else None)
    tokens = torch.tensor([[1, 5, 6, 7], [1, 4, 9, 2], [1, 8, 3, 3]])
    with torch.no_grad():
        logits = dec(video, tokens, memory)
        logits[..., dec.never_generated] = float("-inf")
        expected = logits.log_softmax(-1)
        ctx, state = dec.start(video, memory)
        rows = 3 if tabulated else 1  # the word table is built when V <= rows * steps (here V = 10)
        table, ctx = dec._generation_inputs(ctx, rows=rows, steps=4)
        assert (table is not None) == tabulated
        for t in range(tokens.shape[1]):
            logp, state = dec._step(ctx, table, tokens[:, t], state)
            torch.testing.assert_close(logp, expected[:, t], rtol=1e-5, atol=1e-5)


def test_beam_width_one_equals_greedy():
    dec = make_decoder().eval()
    video = torch.randn(5, D)
    assert torch.equal(dec.beam_search(video, beam_size=1, max_len=7), dec.greedy(video, max_len=7))


def test_batched_beam_search_equals_one_video_at_a_time():
    dec = make_decoder().eval()
    video = torch.randn(4, D) * 3
    batched = dec.beam_search(video, beam_size=3, max_len=6, length_penalty=0.5)
    for i in range(4):
        single = dec.beam_search(video[i : i + 1], beam_size=3, max_len=6, length_penalty=0.5)
        n = single.shape[1]
        assert torch.equal(batched[i, :n], single[0])
        assert (batched[i, n:] == dec.pad_id).all()


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
@pytest.mark.parametrize("attention", [False, True])
def test_videos_leave_the_beam_batch_when_done_without_changing_results(length_penalty, attention):
    dec = make_decoder(**({"memory_dim": 5} if attention else {})).eval()
    with torch.no_grad():  # make <eos> depend strongly on the state, so that the searches end at different steps
        dec.out.weight[dec.eos_id] *= 8
        dec.out.bias[dec.eos_id] -= 0.2
    torch.manual_seed(1)
    video = torch.randn(12, D) * 3
    memory = torch.randn(12, 4, 5) if attention else None
    mask = torch.ones(12, 4, dtype=torch.bool) if attention else None
    if attention:
        mask[::3, 2:] = False  # some clips have fewer frames
    batched = dec.beam_search(video, 4, 9, length_penalty, memory, mask)
    lengths = set()
    for i in range(12):
        one = lambda x: None if x is None else x[i : i + 1]  # noqa: E731
        single = dec.beam_search(video[i : i + 1], 4, 9, length_penalty, one(memory), one(mask))[0]
        assert torch.equal(batched[i, : len(single)], single)
        assert (batched[i, len(single) :] == dec.pad_id).all()
        lengths.add(int((single != dec.pad_id).sum()))
    assert len(lengths) > 1  # the searches end at different steps, so videos really leave the batch early


def _plain_beam_search(dec: CaptionDecoder, video, memory, k: int, max_len: int, length_penalty: float):
    """One video's beam search written plainly: each hypothesis (words, score, length, state) stepped alone, a
    finished one kept with its score; the candidates ranked in the batched search's order (hypothesis, then word)."""
    ctx, state = dec.start(video, memory)
    table, ctx = dec._generation_inputs(ctx, k, max_len)
    hyps = [([], torch.tensor(0.0), 0, state, False)]
    for step in range(max_len):
        rows, states = [], []
        for words, score, _, st, finished in hyps:
            if finished:  # extends with <pad> only, at no cost
                logp = torch.full((1, V), float("-inf"))
                logp[0, dec.pad_id] = 0.0
            else:
                logp, st = dec._step(ctx, table, torch.tensor([words[-1] if words else dec.bos_id]), st)
                block_repeats(logp, torch.tensor([words], dtype=torch.long), 3, dec.pad_id)
                if step < 1:
                    dec.forbid_eos(logp)
            rows.append(score + logp[0])
            states.append(st)
        top, flat = torch.cat(rows).topk(k)
        new = []
        for score, i in zip(top, flat.tolist()):
            words, _, length, _, finished = hyps[i // V]
            word = i % V
            new.append((words + [word], score, length + (not finished), states[i // V],
                        finished or word == dec.eos_id))
        hyps = new
        best_done = max([h[1] for h in hyps if h[4]], default=float("-inf"))
        best_open = max([h[1] for h in hyps if not h[4]], default=float("-inf"))
        if all(h[4] for h in hyps) or (length_penalty == 0 and best_done >= best_open):
            break
    ranked = torch.stack([h[1] / max(h[2], 1) ** length_penalty for h in hyps]).argmax()
    return [w for w in hyps[ranked][0] if w != dec.pad_id], hyps[ranked][1] / max(hyps[ranked][2], 1)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
@pytest.mark.parametrize("attention", [False, True])
def test_batched_beam_search_is_the_plain_search(length_penalty, attention):
    """The batched search (slots, finished hypotheses out of the LSTM, videos leaving the batch) gives, for every
    video, the hypothesis and score of a plain search over that video alone; finished hypotheses are not stepped."""
    dec = make_decoder(**({"memory_dim": 5} if attention else {})).eval()
    with torch.no_grad():  # make <eos> depend strongly on the state, so that hypotheses finish at different steps
        dec.out.weight[dec.eos_id] *= 8
        dec.out.bias[dec.eos_id] -= 0.2
    torch.manual_seed(3)
    video, memory = torch.randn(8, D) * 3, (torch.randn(8, 4, 5) if attention else None)
    rows, step = [], dec._step

    def counting(ctx, table, tokens, state):
        rows.append(len(tokens))
        return step(ctx, table, tokens, state)

    dec._step = counting
    with torch.no_grad():
        ids, scores = dec.beam_search(video, 4, 9, length_penalty, memory, return_scores=True)
    del dec._step
    assert any(n % 4 for n in rows[1:])  # some step carried fewer than K rows for a video: a finished hypothesis
    for i in range(8):
        with torch.no_grad():
            words, score = _plain_beam_search(dec, video[i : i + 1], None if memory is None else memory[i : i + 1],
                                              4, 9, length_penalty)
        assert [w for w in ids[i].tolist() if w != dec.pad_id] == words
        torch.testing.assert_close(scores[i], score, rtol=1e-5, atol=1e-5)


def test_beam_search_finds_at_least_the_greedy_log_probability():
    dec = make_decoder().eval()
    video = torch.randn(6, D) * 3

    def logprob(tokens):
        seq = torch.cat([torch.full((len(tokens), 1), dec.bos_id), tokens], 1)
        logp = dec(video, seq[:, :-1]).log_softmax(-1).gather(2, seq[:, 1:, None]).squeeze(-1)
        keep = torch.cat([torch.ones(len(tokens), 1, dtype=torch.bool), tokens[:, :-1] != dec.pad_id], 1)
        keep &= torch.cat([torch.ones(len(tokens), 1, dtype=torch.bool), (tokens == dec.eos_id).cumsum(1)[:, :-1] == 0], 1)
        return (logp * keep).sum(1)

    with torch.no_grad():
        g, b = dec.greedy(video, 6), dec.beam_search(video, beam_size=4, max_len=6)
        assert (logprob(b) >= logprob(g) - 1e-4).all()


@pytest.mark.slow
def test_overfit_one_batch_reproduces_the_captions():
    torch.manual_seed(0)
    dec = CaptionDecoder(V, D, embed_dim=16, hidden_dim=32, dropout=0.0)
    video = torch.randn(3, D)
    caps = torch.tensor([[1, 4, 5, 6, 2], [1, 7, 8, 2, 0], [1, 9, 4, 7, 2]])
    opt = torch.optim.Adam(dec.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        dec.loss(video, caps).backward()
        opt.step()
    dec.eval()
    out = dec.greedy(video, max_len=6)
    assert out[:, : caps.shape[1] - 1].tolist() == caps[:, 1:].tolist()
    assert torch.equal(dec.beam_search(video, beam_size=3, max_len=6)[:, :4], out[:, :4])


def test_beam_wider_than_the_vocabulary():
    """Beam 12 over 10 words: the first step cannot fill the beam; the search still runs and matches per video."""
    dec = make_decoder().eval()
    video = torch.randn(3, D)
    batched = dec.beam_search(video, beam_size=12, max_len=5)
    assert ((batched >= 0) & (batched < dec.vocab_size)).all()
    for i in range(3):
        single = dec.beam_search(video[i : i + 1], beam_size=12, max_len=5)
        assert torch.equal(batched[i, : single.shape[1]], single[0])


def test_unknown_words_and_specials_at_inference():
    from captioner.models.decoder import CaptionDecoder

    vocab = Vocabulary.build(["a red ball"])
    assert vocab.decode(vocab.encode("a purple ball")) == "a <unk> ball"  # unknown words map to <unk>
    torch.manual_seed(0)
    decoder = CaptionDecoder(len(vocab), 8, embed_dim=8, hidden_dim=8).eval()
    with torch.no_grad():  # a decoder that would rather say <pad> and <bos> than anything else
        decoder.out.bias[:] = 0
        decoder.out.bias[[vocab.pad_id, vocab.bos_id]] = 50.0
    video = torch.randn(3, 8)
    for ids in (decoder.greedy(video, max_len=6), decoder.beam_search(video, beam_size=3, max_len=6)):
        for row in ids.tolist():
            words = row[: row.index(vocab.eos_id)] if vocab.eos_id in row else row
            assert vocab.pad_id not in words and vocab.bos_id not in words



def _words(ids: torch.Tensor, eos_id: int) -> list[list[int]]:
    """Each row's ids before its first `<eos>` (and without the `<pad>` after it)."""
    rows = [row[: row.index(eos_id)] if eos_id in row else row for row in ids.tolist()]
    return [[i for i in row if i != 0] for row in rows]


def _every_mode(dec: CaptionDecoder, video: torch.Tensor, **kw) -> dict[str, torch.Tensor]:
    torch.manual_seed(2)
    return {"greedy": dec.greedy(video, max_len=6, **kw),
            "beam 1": dec.beam_search(video, beam_size=1, max_len=6, **kw),
            "beam 5": dec.beam_search(video, beam_size=5, max_len=6, **kw),
            "sample": dec.sample(video, num_samples=4, max_len=6, **kw)[0]}


@pytest.mark.parametrize("attention", [False, True])
def test_no_empty_caption_when_eos_is_the_likeliest_first_word(attention):
    """A decoder that would rather end at once than say anything still says a word, in every decoding mode."""
    dec = make_decoder(**({"memory_dim": 5} if attention else {})).eval()
    with torch.no_grad():
        dec.out.bias[dec.eos_id] = 30.0
    video, memory = torch.randn(4, D), (torch.randn(4, 3, 5) if attention else None)
    assert (dec.greedy(video, max_len=6, memory=memory, min_len=0)[:, 0] == dec.eos_id).all()  # what it would say
    for mode, ids in _every_mode(dec, video, memory=memory).items():
        words = _words(ids, dec.eos_id)
        assert all(len(w) >= 1 for w in words), (mode, ids.tolist())
        assert (ids[:, 1] == dec.eos_id).all(), mode  # one word, then the <eos> it wanted all along


def test_min_len_is_the_fewest_words_in_every_mode():
    dec = make_decoder().eval()
    with torch.no_grad():
        dec.out.bias[dec.eos_id] = 30.0
    for mode, ids in _every_mode(dec, torch.randn(3, D), min_len=3).items():
        assert {len(w) for w in _words(ids, dec.eos_id)} == {3}, mode


@pytest.mark.parametrize("attention", [False, True])
def test_never_generates_unk_pad_or_bos_even_when_likeliest(attention):
    """`<unk>` (then `<pad>`, `<bos>`) the argmax at every step: no caption holds one, in every decoding mode."""
    dec = make_decoder(**({"memory_dim": 5} if attention else {})).eval()
    video, memory = torch.randn(4, D), (torch.randn(4, 3, 5) if attention else None)
    for special in (dec.unk_id, dec.pad_id, dec.bos_id):
        with torch.no_grad():
            dec.out.bias.zero_()
            dec.out.bias[special] = 30.0
        for mode, ids in _every_mode(dec, video, memory=memory).items():
            words = _words(ids, dec.eos_id)
            assert all(len(w) >= 1 for w in words), (mode, ids.tolist())
            assert not any(i in (dec.unk_id, dec.pad_id, dec.bos_id) for w in words for i in w), (mode, ids.tolist())


def test_unk_id_follows_the_vocabulary():
    vocab = Vocabulary.build(["a red ball"])
    dec = CaptionDecoder(len(vocab), D, embed_dim=8, hidden_dim=8)
    assert (dec.pad_id, dec.bos_id, dec.eos_id, dec.unk_id) == (vocab.pad_id, vocab.bos_id, vocab.eos_id,
                                                                vocab.unk_id)
