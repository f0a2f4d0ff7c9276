"""CausalLMModule: the causal shift, padding, the linear-head path, gradient accumulation,
vocabularies and the Hugging Face save format, on tiny from_config GPT-2 models."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from softlabel import SoftTargetLoss  # noqa: E402
from softlabel.models.hf import check_vocabularies, hf_causal_lm  # noqa: E402
from softlabel.modules.lm_module import CausalLMModule, shift_for_causal_lm  # noqa: E402
from softlabel.modules.references import LiveTeacher  # noqa: E402
from softlabel.modules.run.outputs import save_hf_model  # noqa: E402
from softlabel.targets import Hard, PreviousModel, Teacher, UniformPrior  # noqa: E402

V = 11
GPT2 = {
    "model_type": "gpt2",
    "n_layer": 1,
    "n_embd": 16,
    "n_head": 2,
    "n_positions": 8,
    **dict.fromkeys(("resid_pdrop", "embd_pdrop", "attn_pdrop"), 0.0),
}


def tiny_lm(seed: int = 0, vocab: int = V, **config):
    torch.manual_seed(seed)
    return hf_causal_lm(config={**GPT2, **config}, num_classes=vocab)


def module_for(source, student, provider=None, **kwargs):
    return CausalLMModule(
        student,
        SoftTargetLoss(source),
        optimizer=functools.partial(torch.optim.SGD, lr=1.0),
        reference_provider=provider,
        vocab_size=student.vocab_size,
        **kwargs,
    )


def batch(seed: int = 0, b: int = 3, length: int = 6, pad: tuple[int, ...] = (0, 2, 5)):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (b, length), generator=gen)
    labels = ids.clone()
    for row, n in enumerate(pad[:b]):
        if n:
            labels[row, length - n :] = -100
    return ids, labels, torch.arange(b)


def test_linear_head_detected():
    assert tiny_lm().linear_head


def test_shift_and_padding_against_hand_computation():
    student = tiny_lm()
    module = module_for(Hard(), student, linear_head=False)
    ids, labels, index = batch(pad=(0, 2, 5))
    got = module.token_loss_sum(ids, labels, index)
    logits = student(ids)
    expected, count = 0.0, 0
    for row in range(ids.shape[0]):
        for t in range(ids.shape[1] - 1):  # the logits at t predict the token at t + 1
            y = int(labels[row, t + 1])
            if y == -100:
                continue
            expected = expected - torch.log_softmax(logits[row, t], -1)[y]
            count += 1
    assert count == 5 + 3 + 0
    torch.testing.assert_close(got, expected)
    # transformers' own loss (its shift and -100 masking) gives the same mean
    out = student.model(input_ids=ids, labels=labels)
    torch.testing.assert_close(got / count, out.loss)


def test_shift_keeps_top_k_tuples():
    from typing import NamedTuple

    class Pair(NamedTuple):
        a: torch.Tensor
        b: torch.Tensor

    shifted = shift_for_causal_lm(Pair(torch.zeros(2, 5, 3), torch.zeros(2, 5)))
    assert isinstance(shifted, Pair) and shifted.a.shape == (2, 4, 3) and shifted.b.shape == (2, 4)


@pytest.mark.parametrize("kind", ["hard", "ls", "kd", "kd_jsd", "reloop"])
def test_linear_path_matches_materialized(kind):
    student = tiny_lm(0)
    provider = None
    source = {
        "hard": Hard(),
        "ls": UniformPrior(0.1),
        "kd": Teacher(2.0, 0.7),
        "kd_jsd": Teacher(2.0, 0.7, divergence="jsd"),
        "reloop": PreviousModel(0.5),
    }[kind]
    if kind.startswith("kd"):
        provider = LiveTeacher(tiny_lm(1, n_embd=24))
    if kind == "reloop":
        from softlabel.modules.references import PreviousModelProvider

        provider = PreviousModelProvider(tiny_lm(2))
    ids, labels, index = batch(1)
    values, grads = [], []
    for linear in (True, False):
        module = module_for(source, student, provider, linear_head=linear)
        assert (module.linear_loss is not None) == linear
        student.zero_grad()
        loss = module.token_loss_sum(ids, labels, index)
        loss.backward()
        values.append(loss.detach())
        grads.append([p.grad.clone() for p in student.parameters()])
    torch.testing.assert_close(values[0], values[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _items(pads):
    ids, labels, index = batch(7, b=len(pads), pad=pads)
    return [(ids[i], labels[i], index[i]) for i in range(len(pads))]


def _fit_one_step(items, batch_size: int, accumulate: int, precision: str = "32-true"):
    import lightning as L
    from torch.utils.data import DataLoader

    student = tiny_lm(3)
    module = module_for(UniformPrior(0.1), student)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        accumulate_grad_batches=accumulate,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        precision=precision,
    )
    trainer.fit(module, train_dataloaders=DataLoader(items, batch_size=batch_size))
    return {k: v.detach().clone() for k, v in student.state_dict().items()}


def test_gradient_accumulation_normalises_by_the_step_tokens():
    # micro-batches of very different token counts: 5 + 5 tokens, then 1 + 0
    items = _items((0, 0, 4, 5))
    one_batch = _fit_one_step(items, batch_size=4, accumulate=1)
    accumulated = _fit_one_step(items, batch_size=2, accumulate=2)
    start = tiny_lm(3).state_dict()
    moved = max((one_batch[k] - start[k]).abs().max().item() for k in start)
    assert moved > 1e-3  # the step changed the weights
    for key in one_batch:
        torch.testing.assert_close(accumulated[key], one_batch[key], rtol=1e-4, atol=1e-6)


def test_mean_of_micro_batch_means_would_differ():
    """The test above can fail: per-micro-batch means weight these batches differently."""
    items = _items((0, 0, 4, 5))
    student = tiny_lm(3)
    module = module_for(UniformPrior(0.1), student)
    first = [torch.stack(t) for t in zip(*items[:2])]
    second = [torch.stack(t) for t in zip(*items[2:])]
    whole = [torch.stack(t) for t in zip(*items)]
    n1, n2 = ((b[1][:, 1:] != -100).sum().item() for b in (first, second))
    s1, s2 = (module.token_loss_sum(*b).item() for b in (first, second))
    total = module.token_loss_sum(*whole).item()
    assert math.isclose(s1 + s2, total, rel_tol=1e-5)
    assert abs((s1 / n1 + s2 / n2) / 2 - total / (n1 + n2)) > 1e-3


def test_vocabulary_rules():
    assert check_vocabularies(11, 11, 11) == 11
    assert check_vocabularies(11, 16, 11) == 11  # padded superset
    with pytest.raises(ValueError, match=r"teacher has 9 output rows and the student 11"):
        check_vocabularies(11, 9, 11)
    with pytest.raises(ValueError, match="student has 9 output rows but the tokenizer has 11"):
        check_vocabularies(9, 9, 11)


def test_padded_superset_teacher_uses_its_first_logits():
    student = tiny_lm(0)
    teacher = tiny_lm(1, vocab=16, vocab_size=16)
    assert teacher.vocab_size == 16
    ids, labels, index = batch(2)
    source = Teacher(2.0, 1.0)
    values = []
    for linear in (True, False):
        module = module_for(source, student, LiveTeacher(teacher), linear_head=linear)
        values.append(module.token_loss_sum(ids, labels, index).detach())
    with torch.no_grad():
        t = teacher(ids)[:, :-1, :V]
    s = student(ids)[:, :-1]
    keep = labels[:, 1:] != -100
    p_t = F.log_softmax(t[keep] / 2.0, -1)
    p_s = F.log_softmax(s[keep] / 2.0, -1)
    kl = F.kl_div(p_s, p_t, log_target=True, reduction="sum") * 4.0
    torch.testing.assert_close(values[0], kl.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(values[1], kl.detach(), rtol=1e-4, atol=1e-5)


def test_hf_model_round_trip(tmp_path):
    from transformers import AutoModelForCausalLM

    student = tiny_lm(4)
    directory = save_hf_model(student, None, str(tmp_path / "hf_model"))
    loaded = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True)
    ids = torch.randint(0, V, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, student.eval()(ids))
    again = hf_causal_lm(pretrained=directory, num_classes=V)
    with torch.no_grad():
        torch.testing.assert_close(again(ids), student(ids))
    assert not any(p.name.startswith(".hf_model.tmp") for p in tmp_path.iterdir())


def test_hf_model_directory_follows_the_umask_and_never_follows_a_link(tmp_path):
    import os
    import stat

    student = tiny_lm(4)
    old = os.umask(0o027)
    try:
        directory = save_hf_model(student, None, str(tmp_path / "hf_model"))
        save_hf_model(student, None, directory)  # a second save replaces the first
        (tmp_path / "plain").mkdir()
        (tmp_path / "plain.txt").write_text("")
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(directory).st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o750
    files = [p for p in (tmp_path / "hf_model").iterdir()]
    assert files and {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o640}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf_model", "plain", "plain.txt"]
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    (tmp_path / "link").symlink_to(target, target_is_directory=True)
    with pytest.raises(ValueError, match="symbolic link or not a directory"):
        save_hf_model(student, None, str(tmp_path / "link"))
    assert [p.name for p in target.iterdir()] == ["keep.txt"]


def test_hf_causal_lm_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="exactly one of pretrained"):
        hf_causal_lm()
    with pytest.raises(ValueError, match="exactly one of pretrained"):
        hf_causal_lm(pretrained=str(tmp_path), config=GPT2)
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        hf_causal_lm(pretrained=str(tmp_path))
    with pytest.raises(ValueError, match="needs a model_type"):
        hf_causal_lm(config={"n_layer": 1})
    with pytest.raises(ValueError, match="config.vocab_size=5 is smaller"):
        hf_causal_lm(config={**GPT2, "vocab_size": 5}, num_classes=V)
    with pytest.raises(ValueError, match="dtype='int8'"):
        hf_causal_lm(config=GPT2, dtype="int8")


def test_bf16_autocast_linear_path_close_to_fp32():
    student = tiny_lm(5)
    module = module_for(UniformPrior(0.1), student)
    ids, labels, index = batch(3)
    exact = module.token_loss_sum(ids, labels, index).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = module.token_loss_sum(ids, labels, index)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed.detach(), exact, rtol=2e-2, atol=1e-2)
