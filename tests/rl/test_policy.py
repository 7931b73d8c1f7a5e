"""The policy's tokenizer, prompt and batched KV-cached rollouts on a tiny random model."""

from __future__ import annotations

import torch

from streamrl.rl.policy import PolicyShape, SidVocab, build_model, build_tokenizer, format_prompt, rollout

LEVELS = (8, 4, 4, 2, 2)


def test_tokenizer_round_trips_unicode_and_keeps_sid_tokens() -> None:
    tok = build_tokenizer(LEVELS)
    text = "红色 连衣裙 🎉 <a_3><b_1><c_0><d_1><e_0>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == text  # SID tokens are not special
    sid_ids = tok.convert_tokens_to_ids(["<a_3>", "<e_0>"])
    assert all(i in ids for i in sid_ids) and tok.unk_token_id not in ids


def test_prompt_carries_query_and_history_not_keywords() -> None:
    tok = build_tokenizer(LEVELS)
    p = format_prompt("wool socks", [(1, 2, 3, 0, 1)], tok)
    assert "wool socks" in p and "<a_1><b_2><c_3><d_0><e_1>" in p


def test_constrained_rollouts_are_real_items_and_logps_finite() -> None:
    tok = build_tokenizer(LEVELS)
    model = build_model(tok, PolicyShape(hidden=32, layers=1, heads=2, intermediate=64))
    items = [(1, 2, 3, 0, 1), (1, 2, 0, 1, 0), (5, 0, 0, 0, 0)]
    vocab = SidVocab(tok, LEVELS, items)
    g = torch.Generator().manual_seed(0)
    codes, logp = rollout(
        model, tok, ["red shirt", "红色 连衣裙 夏季 长款"], vocab, G=4, constrained=True, generator=g
    )
    assert codes.shape == (8, 5) and logp.shape == (8, 5)
    assert all(tuple(c) in vocab.items for c in codes.tolist())
    assert torch.isfinite(logp).all() and (logp <= 0).all()
    free, _ = rollout(model, tok, ["red shirt"], vocab, G=16, constrained=False, generator=g)
    assert all(0 <= c < n for row in free.tolist() for c, n in zip(row, LEVELS, strict=True))


def test_rollout_logp_equals_teacher_forced_logp_with_left_padding() -> None:
    from streamrl.rl.policy import sequence_logp

    tok = build_tokenizer(LEVELS)
    model = build_model(tok, PolicyShape(hidden=32, layers=2, heads=2, intermediate=64), seed=1)
    vocab = SidVocab(tok, LEVELS, [])
    prompts = ["a", "a much longer query so the first prompt is left-padded 很长"]
    codes, logp = rollout(model, tok, prompts, vocab, G=3, generator=torch.Generator().manual_seed(1))
    again = sequence_logp(model, tok, prompts, vocab, codes, G=3)
    assert torch.allclose(logp, again.detach(), atol=1e-4)
    again.sum().backward()  # gradients reach the parameters
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_forced_target_rows_score_like_teacher_forcing_and_leave_sampling_unchanged() -> None:
    from streamrl.rl.policy import rollout_with_targets, sequence_logp

    tok = build_tokenizer(LEVELS)
    model = build_model(tok, PolicyShape(hidden=32, layers=2, heads=2, intermediate=64), seed=2)
    items = [(1, 2, 3, 0, 1), (1, 2, 0, 1, 0), (5, 0, 0, 0, 0)]
    vocab = SidVocab(tok, LEVELS, items)
    prompts = ["short", "a longer query, left-padded 很长", "third"]
    targets = [(1, 2, 3, 0, 1), None, (5, 0, 0, 0, 0)]
    for temperature, constrained in ((1.0, False), (0.7, True)):
        plain, plain_logp = rollout(
            model, tok, prompts, vocab, 4, temperature, constrained, torch.Generator().manual_seed(3)
        )
        codes, logp, forced = rollout_with_targets(
            model,
            tok,
            prompts,
            vocab,
            4,
            temperature,
            constrained,
            torch.Generator().manual_seed(3),
            True,
            targets,
        )
        assert torch.equal(codes, plain) and torch.allclose(logp.detach(), plain_logp, atol=1e-5)
        # the SFT rows: temperature 1, no trie, exactly what a separate teacher-forced pass gives
        want = sequence_logp(model, tok, ["short", "third"], vocab, torch.tensor([targets[0], targets[2]]), 1)
        assert forced.shape == (2, 5) and torch.allclose(forced.detach(), want.detach(), atol=1e-4)
    (-forced.sum()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
