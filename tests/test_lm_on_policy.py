"""On-policy distillation (GKD) and sequence-level KD on tiny GPT-2 models: only generated
positions are scored, the teacher scores the student's own ids, one optimizer step equals
a step written out by hand, and every bad setting is refused before training."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from softlabel import SoftTargetLoss  # noqa: E402
from softlabel.models.hf import hf_causal_lm  # noqa: E402
from softlabel.modules.lm_generation import (  # noqa: E402
    GenerationSettings,
    draws_on_policy,
    generate_continuations,
    lm_generation_options,
)
from softlabel.modules.lm_module import CausalLMModule  # noqa: E402
from softlabel.modules.references import CachedTeacher, LiveTeacher  # noqa: E402
from softlabel.targets import Hard, Teacher  # noqa: E402

V, EOS, PAD = 11, 10, 10
GPT2 = {
    "model_type": "gpt2",
    "n_layer": 1,
    "n_embd": 16,
    "n_head": 2,
    "n_positions": 12,
    **dict.fromkeys(("resid_pdrop", "embd_pdrop", "attn_pdrop"), 0.0),
}
PROMPT, NEW = 4, 5


def tiny_lm(seed: int):
    torch.manual_seed(seed)
    return hf_causal_lm(config=GPT2, num_classes=V, eos_token_id=EOS, pad_token_id=PAD)


def data(b: int = 3, length: int = 10, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, EOS, (b, length), generator=gen)  # no eos in the data
    labels = ids.clone()
    labels[-1, 2:] = -100  # the last block is right-padded into its prompt
    return ids, labels, torch.arange(b)


def module(source, student, teacher=None, **kwargs):
    kwargs.setdefault("generation", GenerationSettings(PROMPT, NEW, temperature=0.0))
    return CausalLMModule(
        student,
        SoftTargetLoss(source),
        optimizer=functools.partial(torch.optim.SGD, lr=1.0),
        reference_provider=None if teacher is None else LiveTeacher(teacher),
        vocab_size=V,
        eos_token_id=EOS,
        pad_token_id=PAD,
        **kwargs,
    )


def test_continuations_score_only_generated_tokens():
    student = tiny_lm(1)
    ids, labels, _ = data()
    torch.manual_seed(5)
    settings = GenerationSettings(PROMPT, NEW, temperature=1.0)
    out, new_labels = generate_continuations(
        student, ids, labels, settings, eos_token_id=EOS, pad_token_id=PAD
    )
    assert student.training  # restored after generating in eval mode
    assert torch.equal(out[:, :PROMPT], ids[:, :PROMPT])
    assert (new_labels[:, :PROMPT] == -100).all()  # prompt positions are never scored
    assert (new_labels[-1] == -100).all()  # a prompt holding padding gives no token
    generated = out[:, PROMPT:]
    for row in range(2):
        ends = (generated[row] == EOS).nonzero()
        stop = int(ends[0]) + 1 if len(ends) else generated.shape[1]
        assert torch.equal(new_labels[row, PROMPT : PROMPT + stop], generated[row, :stop])
        assert (new_labels[row, PROMPT + stop :] == -100).all()
    # the same draw through transformers directly: the KV-cached sampler, nothing else
    torch.manual_seed(5)
    direct = student.model.generate(
        input_ids=ids[:, :PROMPT],
        attention_mask=torch.ones_like(ids[:, :PROMPT]),
        max_new_tokens=NEW,
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    assert torch.equal(direct, out)


def _fit_one_step(mod, items):
    import lightning as L
    from torch.utils.data import DataLoader

    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(mod, train_dataloaders=DataLoader(items, batch_size=len(items)))


@pytest.mark.parametrize("origin", ["student", "teacher"])
def test_generated_step_matches_a_step_written_by_hand(origin):
    """One SGD step (lr 1) of reverse-KL distillation on a greedy continuation: the
    student's (on-policy) or the teacher's (seq_kd), scored by the teacher."""
    student, teacher = tiny_lm(1), tiny_lm(2)
    reference_student = copy.deepcopy(student)
    source = Teacher(temperature=1.0, alpha=1.0, divergence="reverse_kl")
    on_policy = origin == "student"
    mod = module(
        source,
        student,
        teacher,
        on_policy_fraction=1.0 if on_policy else 0.0,
        seq_kd=not on_policy,
    )
    ids, labels, index = data()
    _fit_one_step(mod, [(ids[i], labels[i], index[i]) for i in range(len(ids))])

    # by hand: greedy continuation, teacher scores those ids, mean over generated tokens
    generator = (reference_student if on_policy else teacher).model
    with torch.no_grad():
        out = generator.generate(
            input_ids=ids[:, :PROMPT],
            attention_mask=torch.ones_like(ids[:, :PROMPT]),
            max_new_tokens=NEW,
            do_sample=False,
            eos_token_id=EOS,
            pad_token_id=PAD,
        )
    target = out[:, 1:].clone()
    target[:, : PROMPT - 1] = -100
    target[-1] = -100
    for row in range(len(out)):
        ends = (out[row, PROMPT:] == EOS).nonzero()
        if len(ends):
            target[row, PROMPT + int(ends[0]) :] = -100
    keep = target != -100
    assert 0 < int(keep.sum()) <= 2 * NEW
    with torch.no_grad():
        p_t = F.log_softmax(teacher(out)[:, :-1][keep], -1)
    p_s = F.log_softmax(reference_student(out)[:, :-1][keep], -1)
    loss = (p_s.exp() * (p_s - p_t)).sum() / keep.sum()
    loss.backward()
    with torch.no_grad():
        for p in reference_student.parameters():
            if p.grad is not None:
                p -= p.grad
    for key, value in reference_student.state_dict().items():
        torch.testing.assert_close(student.state_dict()[key], value, rtol=1e-4, atol=1e-6)
    assert mod.generation_time_s > 0


def test_seq_kd_with_hard_labels_learns_the_teachers_tokens():
    """Kim and Rush: target=hard with seq_kd trains on the teacher's continuation as labels
    (the teacher is held only to generate, never in the checkpoint)."""
    student, teacher = tiny_lm(1), tiny_lm(2)
    mod = module(Hard(), student, seq_kd=True, seq_kd_teacher=teacher)
    ids, labels, _ = data()
    new_ids, new_labels, origin = mod.generated_batch(ids, labels, 0)
    assert origin == "teacher"
    greedy = teacher.model.generate(
        input_ids=ids[:, :PROMPT],
        attention_mask=torch.ones_like(ids[:, :PROMPT]),
        max_new_tokens=NEW,
        do_sample=False,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    assert torch.equal(new_ids, greedy)
    assert not any(k.startswith("_seq_kd") or "teacher" in k for k in mod.state_dict())


def test_on_policy_draws_follow_the_fraction():
    draws = [draws_on_policy(0.3, 0, step, 0) for step in range(2000)]
    assert 0.25 < sum(draws) / len(draws) < 0.35
    assert draws == [draws_on_policy(0.3, 0, step, 0) for step in range(2000)]  # resumable
    assert not any(draws_on_policy(0.0, 0, s, 0) for s in range(50))
    assert all(draws_on_policy(1.0, 0, s, 0) for s in range(50))


@pytest.mark.parametrize(
    ("lm", "message"),
    [
        (
            {"on_policy": {"fraction": 1.5}},
            r"lm.on_policy.fraction=1.5; allowed: a number in \[0, 1\]",
        ),
        ({"on_policy": {"fraction": -0.1}}, r"lm.on_policy.fraction=-0.1"),
        (
            {"on_policy": {"fraction": 0.5, "prompt_tokens": 6, "max_new_tokens": 5}},
            r"max_new_tokens=5 with lm.on_policy.prompt_tokens=6: allowed an integer in 1..4",
        ),
        ({"on_policy": {"fraction": 0.5, "prompt_tokens": 10}}, r"prompt_tokens=10; allowed"),
        ({"on_policy": {"fraction": 0.5, "temperature": -1}}, r"temperature=-1"),
        ({"on_policy": {"fraction": 0.5, "top_p": 0}}, r"top_p=0"),
        ({"seq_kd": "yes"}, r"lm.seq_kd='yes'"),
    ],
)
def test_generation_settings_refused(lm, message):
    with pytest.raises(ValueError, match=message):
        lm_generation_options(lm, block_size=10)


def test_generation_defaults_split_the_block():
    options = lm_generation_options({"on_policy": {"fraction": 0.5}}, block_size=10)
    assert options["generation"] == GenerationSettings(5, 5, 1.0, 1.0, 0)
    assert lm_generation_options({}, block_size=10)["generation"] is None


def test_refusals_of_unscorable_generated_batches():
    student, teacher = tiny_lm(1), tiny_lm(2)
    source = Teacher(temperature=1.0, alpha=1.0)

    class Table:
        def lookup(self, index):
            return torch.zeros(len(index), 10, V)

    with pytest.raises(ValueError, match=r"lm.on_policy.fraction with a CachedTeacher"):
        CausalLMModule(
            student,
            SoftTargetLoss(source),
            optimizer=functools.partial(torch.optim.SGD, lr=1.0),
            reference_provider=CachedTeacher(Table()),
            vocab_size=V,
            generation=GenerationSettings(PROMPT, NEW),
            on_policy_fraction=0.5,
            eos_token_id=EOS,
            pad_token_id=PAD,
        )
    with pytest.raises(ValueError, match="needs no teacher"):
        module(Hard(), student, on_policy_fraction=0.5)
    with pytest.raises(ValueError, match="lm.seq_kd=true needs a teacher model"):
        module(Hard(), student, seq_kd=True)
    with pytest.raises(ValueError, match="needs a transformers model as the student"):
        plain = torch.nn.Sequential(torch.nn.Embedding(V, 4), torch.nn.Linear(4, V))
        module(source, plain, teacher, on_policy_fraction=0.5)
