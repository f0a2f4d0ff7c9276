"""A teacher with another tokenizer (teacher.tokenizer): its rows at the student's positions,
the loss against its formula written out here, a tiny run end to end (live, hybrid, from a
softlabel-cache), bits per byte, and the refusals. The tokenizer and models are made here
(a byte-level BPE trained on the test corpus, a random 1-layer GPT-2); nothing downloads."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from hydra import compose, initialize_config_dir  # noqa: E402
from train_configs import compose_train  # noqa: E402

from softlabel.cache import TeacherCache  # noqa: E402
from softlabel.cache_cli import CONF_DIR, build_cache  # noqa: E402
from softlabel.modules.lm_metrics import build_lm_metrics  # noqa: E402
from softlabel.targets import TopKLogits  # noqa: E402
from softlabel.train import train  # noqa: E402

TINY = "{model_type:gpt2,n_layer:1,n_embd:16,n_head:2,n_positions:32}"
WORDS = "the quick brown fox jumps over the lazy dog while a café cat sleeps".split()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A corpus, a byte-level BPE of 300 ids trained on it, and a random GPT-2 teacher of
    that vocabulary: ``teacher/`` (weights only) and ``teacher_tok/`` (with the tokenizer)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    root = tmp_path_factory.mktemp("xtok")
    corpus = root / "corpus"
    corpus.mkdir()
    gen = torch.Generator().manual_seed(0)
    for i in range(30):
        picks = torch.randint(0, len(WORDS), (24,), generator=gen).tolist()
        (corpus / f"doc{i:02d}.txt").write_text(" ".join(WORDS[j] for j in picks) + ".\n")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        [p.read_text() for p in sorted(corpus.glob("*.txt"))],
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<eos>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    fast.save_pretrained(root / "bpe")
    config = transformers.GPT2Config(
        vocab_size=len(fast), n_layer=1, n_embd=16, n_head=2, n_positions=64
    )
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(root / "teacher")
    transformers.GPT2LMHeadModel(config).save_pretrained(root / "teacher_tok")
    fast.save_pretrained(root / "teacher_tok")
    return root


def data_args(root, *extra):
    return [
        "data=text",
        f"data.files={root}/corpus/*.txt",
        "data.block_size=32",
        "data.batch_size=4",
        "data.val_fraction=0.1",
        "data.test_fraction=0.1",
        *extra,
    ]


def run(root, run_dir, *extra):
    cfg = compose_train(
        *data_args(root),
        "student=hf_causal_lm",
        f"student.config={TINY}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_model_summary=false",
        "callbacks.progress_bar.refresh_rate=0",
        *extra,
    )
    train(cfg, str(run_dir))
    return json.loads((run_dir / "metrics.json").read_text())


def live(root):
    return [
        "teacher=hf_causal_lm",
        f"teacher.pretrained={root}/teacher",
        f"teacher.tokenizer={root}/bpe",
    ]


def provider_and_batch(root):
    from softlabel.modules.build import build_datamodule, build_reference_provider

    cfg = compose_train(*data_args(root), "target=uld", *live(root))
    datamodule = build_datamodule(cfg)
    provider, record = build_reference_provider(cfg, "teacher_logits", datamodule)
    x, labels, index = next(iter(datamodule.train_dataloader()))
    return datamodule, provider, record, (x, labels, index)


# ------------------------------------------------------------------------------ the rows
def test_teacher_rows_are_its_logits_on_its_own_ids(setup):
    """Each aligned student position gets the teacher's logits at its aligned position, on
    the teacher's own ids of the block; the others get zeros."""
    datamodule, provider, record, (x, _, index) = provider_and_batch(setup)
    assert record["teacher_alignment"]["aligned"] > 0
    assert 0 < record["teacher_alignment"]["share"] < 1
    rows = provider(x, index)
    aligned = provider.aligned(x, index)
    assert rows.shape == (*x.shape, 300) and aligned.shape == x.shape
    for b, dataset_index in enumerate(index.tolist()):
        ids = torch.from_numpy(provider.alignment.block(dataset_index))[None]
        with torch.no_grad():
            own = provider.model(ids)[0]
        where = provider.alignment.positions[dataset_index]
        for i in range(x.shape[1]):
            if aligned[b, i]:
                torch.testing.assert_close(rows[b, i], own[where[i]])
            else:
                assert not rows[b, i].any()


def test_a_batch_of_other_ids_is_refused(setup):
    _, provider, _, (x, _, index) = provider_and_batch(setup)
    with pytest.raises(ValueError, match="not the data's blocks at its indices"):
        provider(torch.roll(x, 1, dims=1), index)


# ------------------------------------------------------------------------------- the loss
def sorted_l1(p, q):
    width = max(p.shape[-1], q.shape[-1])
    p = F.pad(torch.sort(p, -1, descending=True).values, (0, width - p.shape[-1]))
    q = F.pad(torch.sort(q, -1, descending=True).values, (0, width - q.shape[-1]))
    return (p - q).abs().sum(-1)


@pytest.mark.parametrize("linear", [False, True])
@pytest.mark.parametrize("topk", [False, True])
def test_aligned_loss_against_its_formula(linear, topk):
    """sum over taught positions of (1 - alpha) CE + alpha ULD, plus (1 - alpha) CE at the
    positions without a teacher row; ignored positions add nothing."""
    from softlabel.modules.cross_tokenizer import AlignedLoss
    from softlabel.targets import UniversalLogitDistillation

    torch.manual_seed(1)
    alpha, hidden_size, vocab, teacher_vocab = 0.3, 6, 9, 14
    hidden = torch.randn(2, 5, hidden_size, dtype=torch.float64, requires_grad=True)
    head = torch.nn.Linear(hidden_size, vocab, dtype=torch.float64)
    teacher = torch.randn(2, 5, teacher_vocab, dtype=torch.float64) * 2
    target = torch.randint(0, vocab, (2, 5))
    target[1, 4] = -100
    taught = torch.tensor([[1, 0, 1, 1, 0], [0, 1, 0, 1, 1]], dtype=torch.bool)
    reference = TopKLogits.from_logits(teacher, 4) if topk else teacher
    loss = AlignedLoss(UniversalLogitDistillation(alpha=alpha), linear=linear)
    logits = head(hidden)
    if linear:
        ours = loss(hidden, target, taught, reference, head)
    else:
        ours = loss(logits, target, taught, reference)
    keep = target != -100
    ce = F.cross_entropy(
        logits.reshape(-1, vocab), target.clamp_min(0).reshape(-1), reduction="none"
    )
    ce = ce.view(target.shape)
    p = torch.softmax(logits, -1)
    if topk:
        q = torch.softmax(teacher, -1)
        qs = torch.sort(q, -1, descending=True).values
        ps = torch.sort(p, -1, descending=True).values
        soft = (ps[..., :4] - qs[..., :4]).abs().sum(-1) + (
            ps[..., 4:].sum(-1) - qs[..., 4:].sum(-1)
        ).abs()
    else:
        soft = sorted_l1(p, torch.softmax(teacher, -1))
    per = torch.where(taught, (1 - alpha) * ce + alpha * soft, (1 - alpha) * ce)
    expected = (per * keep).sum()
    torch.testing.assert_close(ours, expected)
    (g_ours,) = torch.autograd.grad(ours, hidden, retain_graph=True)
    (g_ref,) = torch.autograd.grad(expected, hidden)
    torch.testing.assert_close(g_ours, g_ref)


# ----------------------------------------------------------------------------- end to end
def test_uld_and_hybrid_runs_end_to_end(setup, tmp_path):
    metrics = run(setup, tmp_path / "uld", "target=uld", *live(setup))
    alignment = metrics["teacher_alignment"]
    assert 0 < alignment["aligned"] < alignment["scored"]
    assert metrics["teacher_tokenizer"] == str(setup / "bpe")
    last = metrics["last"]
    assert math.isfinite(last["val/bpb"]) and last["val/bpb"] > 0
    hybrid = run(setup, tmp_path / "hybrid", "target=uld", "target.hybrid=true", *live(setup))
    assert hybrid["target"]["hybrid"] is True and math.isfinite(hybrid["last"]["val/nll"])


def test_bpb_of_a_byte_level_run_counts_the_ends_of_document(setup, tmp_path):
    """Byte-level: every token is one byte but the end of document (0 bytes), so bpb is
    nll / ln 2 times (tokens / bytes) of the scored text."""
    from softlabel.modules.build import build_datamodule

    metrics = run(setup, tmp_path / "hard", "target=hard")
    datamodule = build_datamodule(compose_train(*data_args(setup)))
    tokens = bytes_ = 0
    for _, labels, _ in datamodule.val_dataloader():
        target = labels[:, 1:]
        kept = target[target != -100]
        tokens += kept.numel()
        bytes_ += int((kept < 256).sum())
    last = metrics["last"]
    expected = last["val/nll"] / math.log(2) * tokens / bytes_
    assert last["val/bpb"] == pytest.approx(expected, rel=1e-5)
    assert tokens > bytes_  # ends of document were scored


def test_bpb_by_hand():
    """Three tokens of 1, 3 and 0 bytes (an end of document) with probabilities 1/2, 1/4
    and 1/8, one ignored: (1 + 2 + 3) bits over 4 bytes."""
    metrics = build_lm_metrics(5, byte_lengths=torch.tensor([1, 3, 0, 2, 2]))
    probs = torch.tensor(
        [[0.5, 0.125, 0.125, 0.125, 0.125], [0.25, 0.25, 0.25, 0.25, 0.0], [0.125] * 4 + [0.5]]
    )
    logits = torch.log(probs.clamp_min(1e-30))
    logits = torch.cat([logits, torch.zeros(1, 5)])[None]
    target = torch.tensor([[0, 1, 2, -100]])
    metrics.update(logits, target)
    values = metrics.compute()
    assert float(values["bpb"]) == pytest.approx(6 / 4)
    assert float(values["nll"]) == pytest.approx(6 * math.log(2) / 3)


def cache_config(*overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("cache", overrides=list(overrides))


def test_cache_of_a_teacher_with_another_tokenizer(setup, tmp_path):
    """softlabel-cache stores the teacher's top-k at the student's positions and where it
    has them; a student trains from it; data with another tokenizer is refused."""
    out = tmp_path / "cache"
    cfg = cache_config(*data_args(setup), *live(setup), f"out={out}", "kind=topk", "k=4")
    cfg.progress = False
    build_cache(cfg)
    cache = TeacherCache.open(out)
    assert cache.alignment is not None and cache.num_classes == 300
    datamodule, provider, _, (x, _, index) = provider_and_batch(setup)
    stored = cache.lookup(index)
    aligned = cache.lookup_aligned(index)
    assert torch.equal(aligned, provider.aligned(x, index))
    live_top = TopKLogits.from_logits(provider(x, index), 4)
    assert torch.equal(stored.index[aligned], live_top.index[aligned])
    torch.testing.assert_close(
        stored.logprob[aligned], live_top.logprob[aligned], atol=2e-3, rtol=1e-3
    )
    metrics = run(setup, tmp_path / "run", "target=uld", "teacher=cached", f"teacher.cache={out}")
    assert metrics["teacher_alignment"]["aligned"] == cache.alignment["aligned"]
    with pytest.raises(ValueError, match="aligned to the positions of data.tokenizer='null'"):
        run(
            setup,
            tmp_path / "other",
            "target=uld",
            f"data.tokenizer={setup}/bpe",
            "teacher=cached",
            f"teacher.cache={out}",
        )


# -------------------------------------------------------------------------------- refusals
def test_a_same_vocabulary_target_is_refused(setup, tmp_path):
    with pytest.raises(ValueError, match=r"target kd .*teacher.tokenizer=.*bpe \(300 ids\), "):
        run(setup, tmp_path / "kd", "target=kd", *live(setup))
    with pytest.raises(ValueError, match="data.tokenizer=null .*Use target=uld"):
        run(setup, tmp_path / "kd", "target=kd", *live(setup))


def test_generated_batches_are_refused(setup, tmp_path):
    with pytest.raises(ValueError, match="with a teacher of another tokenizer"):
        run(setup, tmp_path / "op", "target=uld", *live(setup), "lm.on_policy.fraction=0.5")


def test_a_teacher_with_its_own_undeclared_tokenizer_is_refused(setup, tmp_path):
    """teacher.pretrained holds a tokenizer that is not the data's, teacher.tokenizer null:
    its 300 logits would pass for a padded byte vocabulary."""
    with pytest.raises(ValueError, match="holds its own tokenizer.*set teacher.tokenizer="):
        run(
            setup,
            tmp_path / "undeclared",
            "target=uld",
            "teacher=hf_causal_lm",
            f"teacher.pretrained={setup}/teacher_tok",
        )


def test_an_empty_alignment_is_refused(setup, tmp_path):
    """A word-level teacher tokenizer that drops the spaces between words never ends a
    token where the next begins: no position has a counterpart."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<eos>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(sorted(set(WORDS)))}}
    word = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    word.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    wrapped = transformers.PreTrainedTokenizerFast(
        tokenizer_object=word, eos_token="<eos>", unk_token="<unk>"
    )
    wrapped.save_pretrained(tmp_path / "words")
    corpus = tmp_path / "spaced"
    corpus.mkdir()
    for i in range(10):
        (corpus / f"d{i}.txt").write_text(" the quick brown fox \n")
    with pytest.raises(ValueError, match=r"no student position of the data has a teacher"):
        run(
            setup,
            tmp_path / "empty",
            f"data.files={corpus}/*.txt",
            "target=uld",
            "teacher=hf_causal_lm",
            f"teacher.pretrained={setup}/teacher",
            f"teacher.tokenizer={tmp_path / 'words'}",
        )


def test_alignment_is_deterministic_over_every_block(setup):
    """The alignment covers every index (train, val, test) and is the same when rebuilt."""
    datamodule, provider, _, _ = provider_and_batch(setup)
    again = provider_and_batch(setup)[1]
    total = sum(datamodule.split_sizes.values())
    assert provider.alignment.positions.shape == (total, 32)
    assert np.array_equal(provider.alignment.positions, again.alignment.positions)
    assert np.array_equal(provider.alignment.teacher_ids, again.alignment.teacher_ids)
