"""The constrained decoder of serving, eval and the gate (rl/decode.py) and its tensor trie (rl/trie.py):
exact against an exhaustive score of every item on small catalogs, the same answer alone or in a
padded batch, only real items, and no deprecated transformers argument on the way."""

from __future__ import annotations

import random
import warnings

import pytest
import torch

from streamrl.rl.decode import beam_search
from streamrl.rl.policy import PolicyShape, SidVocab, build_model, build_tokenizer, sequence_logp
from streamrl.rl.trie import SidTrie

LEVELS = (6, 4, 3, 2)


def catalog(n: int, seed: int) -> list[tuple[int, ...]]:
    rng = random.Random(seed)
    items: set[tuple[int, ...]] = set()
    while len(items) < n:
        items.add(tuple(rng.randrange(k) for k in LEVELS))
    return sorted(items)


def exhaustive(model, tok, prompt: str, vocab: SidVocab, items) -> list[tuple[tuple[int, ...], float]]:  # type: ignore[no-untyped-def]
    """Every item's cumulative log-probability under the level-restricted distribution, best first."""
    with torch.no_grad():
        codes = torch.tensor(items)
        logp = sequence_logp(model, tok, [prompt], vocab, codes, G=len(items)).sum(1)
    return sorted(zip(items, logp.tolist(), strict=True), key=lambda x: -x[1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_search_equals_exhaustive_top_k(seed: int) -> None:
    tok = build_tokenizer(LEVELS)
    model = build_model(tok, PolicyShape(hidden=32, layers=2, heads=2, intermediate=64), seed=seed).eval()
    items = catalog(60, seed)
    vocab = SidVocab(tok, LEVELS, items)
    prompts = ["red wool socks", "a much longer query, so the first prompt is left-padded 很长", "x"]
    got = beam_search(model, tok, prompts, vocab, beam=len(items))  # wide enough to be exact
    for prompt, beams in zip(prompts, got, strict=True):
        want = exhaustive(model, tok, prompt, vocab, items)
        assert [s for s, _ in beams] == [s for s, _ in want]  # every item, in the same order
        assert [v for _, v in beams] == pytest.approx([v for _, v in want], abs=1e-4)
    narrow = beam_search(model, tok, prompts, vocab, beam=10)
    for beams in narrow:
        assert len(beams) == 10 and all(s in vocab.items for s, _ in beams)
        assert [v for _, v in beams] == sorted((v for _, v in beams), reverse=True)


def test_batched_answers_equal_single_answers() -> None:
    tok = build_tokenizer(LEVELS)
    model = build_model(tok, PolicyShape(hidden=32, layers=2, heads=2, intermediate=64), seed=4).eval()
    vocab = SidVocab(tok, LEVELS, catalog(40, 4))
    prompts = ["a", "wool socks for winter 冬季", "shoes", "a much longer query than all the others here"]
    batched = beam_search(model, tok, prompts, vocab, beam=8)
    for prompt, beams in zip(prompts, batched, strict=True):
        alone = beam_search(model, tok, [prompt], vocab, beam=8)[0]
        assert [s for s, _ in beams] == [s for s, _ in alone]
        assert [v for _, v in beams] == pytest.approx([v for _, v in alone], abs=1e-4)


def test_fewer_items_than_beam_returns_only_real_items() -> None:
    tok = build_tokenizer(LEVELS)
    model = build_model(tok, PolicyShape(hidden=32, layers=1, heads=2, intermediate=64)).eval()
    items = [(1, 2, 0, 1), (1, 2, 2, 0), (5, 0, 0, 0)]
    got = beam_search(model, tok, ["q"], SidVocab(tok, LEVELS, items), beam=32)[0]
    assert sorted(s for s, _ in got) == sorted(items)


def test_decoder_passes_no_deprecated_cache_argument() -> None:
    tok = build_tokenizer(LEVELS)
    model = build_model(tok, PolicyShape(hidden=32, layers=1, heads=2, intermediate=64)).eval()
    vocab = SidVocab(tok, LEVELS, catalog(20, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        beam_search(model, tok, ["q"], vocab, beam=4)
        from streamrl.rl.policy import rollout

        rollout(model, tok, ["q"], vocab, G=2, constrained=True)


def test_trie_masks_steps_and_unknown_prefixes() -> None:
    items = [(0, 1), (0, 2), (2, 0)]
    trie = SidTrie(items, (3, 3))
    root = trie.root(1)
    assert trie.mask(0, root).tolist() == [[0.0, float("-inf"), 0.0]]
    nodes = trie.step(0, torch.tensor([0, 0, 0]), torch.tensor([0, 1, 2]))
    assert nodes[1] == -1 and nodes[0] >= 0 and nodes[2] >= 0  # code 1 is not a first code
    m = trie.mask(1, nodes)
    assert m[0].tolist() == [float("-inf"), 0.0, 0.0]
    assert m[1].tolist() == [0.0, 0.0, 0.0]  # an unknown prefix allows every code
    assert m[2].tolist() == [0.0, float("-inf"), float("-inf")]
    leaf = trie.step(1, nodes, torch.tensor([2, 0, 0]))
    assert [tuple(trie.sids[i].tolist()) for i in leaf.tolist() if i >= 0] == [(0, 2), (2, 0)]
    assert leaf[1] == -1
    walked = trie.walk(torch.tensor([[0, 2], [2, 0], [1, 1]]), 2)
    assert [tuple(trie.sids[i].tolist()) if i >= 0 else None for i in walked.tolist()] == [
        (0, 2),
        (2, 0),
        None,
    ]
    empty = SidTrie([], (3, 3))
    assert empty.mask(0, empty.root(2)).eq(0).all()  # no codebook: nothing to constrain to
