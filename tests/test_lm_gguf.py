"""GGUF files as models and tokenizers, and what is refused before any code or download
runs: directories that ship code (``auto_map``), GGUF files of other architectures or
without the extra, unreadable tokenizer descriptions. The GGUF is written here
(``tests/gguf_writer.py``); nothing is downloaded."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gguf")

from gguf_writer import EOS, tiny_llama, write_gguf  # noqa: E402

from softlabel.data.tokenizers import ByteTokenizer, load_tokenizer  # noqa: E402
from softlabel.models.hf import hf_causal_lm  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``(gguf file, model directory, the random llama both hold)``."""
    root = tmp_path_factory.mktemp("gguf")
    model = tiny_llama()
    model.save_pretrained(root / "model_dir")
    return write_gguf(root / "tiny.gguf", model), root / "model_dir", model


def test_gguf_model_equals_the_directory(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    path, directory, reference = tiny
    from_gguf = hf_causal_lm(pretrained=str(path), num_classes=259)
    from_dir = hf_causal_lm(pretrained=str(directory), num_classes=259)
    gguf_state, dir_state = from_gguf.model.state_dict(), from_dir.model.state_dict()
    assert gguf_state.keys() == dir_state.keys()
    for name, value in dir_state.items():
        assert torch.equal(gguf_state[name], value), name
    assert from_gguf.linear_head and from_gguf.vocab_size == 259
    ids = torch.tensor([[1, 2, 256, 257, 258, 7]])
    with torch.no_grad():
        torch.testing.assert_close(from_gguf(ids), reference(ids).logits)
    # a student initialised from a GGUF exports as a plain Hugging Face directory
    from_gguf.save_pretrained(str(tmp_path / "exported"))
    config = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "exported", local_files_only=True)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, reference(ids).logits)


def test_gguf_tokenizer_equals_its_saved_directory(tiny, tmp_path):
    path, _, _ = tiny
    tokenizer = load_tokenizer(str(path))
    assert len(tokenizer) == 259 and tokenizer.eos_token == EOS and tokenizer.eos_token_id == 258
    text = "a ta bat" + EOS
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == [97, 256, 97, 32, 98, 97, 116, 258]  # "Ġt" is 256, the eos is one token
    tokenizer.save_pretrained(tmp_path / "tok")
    again = load_tokenizer(str(tmp_path / "tok"))
    assert again(text, add_special_tokens=False)["input_ids"] == ids


def test_from_pretrained_never_trusts_remote_code(tiny, monkeypatch):
    import transformers

    seen = []
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        original = cls.from_pretrained.__func__

        def record(klass, *args, _original=original, **kwargs):
            seen.append(kwargs)
            return _original(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(record))
    path, directory, _ = tiny
    hf_causal_lm(pretrained=str(directory))
    hf_causal_lm(pretrained=str(path))
    load_tokenizer(str(path))
    assert len(seen) == 3
    assert all(k["trust_remote_code"] is False and k["local_files_only"] for k in seen)


@pytest.mark.parametrize("kind", ["model", "tokenizer"])
def test_directories_with_custom_code_are_refused(tiny, tmp_path, kind):
    import shutil

    _, directory, _ = tiny
    target = tmp_path / "custom"
    shutil.copytree(directory, target)
    name = "config.json" if kind == "model" else "tokenizer_config.json"
    config = json.loads((target / name).read_text()) if (target / name).exists() else {}
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_x.X", "AutoTokenizer": ["t.T", None]}
    (target / name).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"declares auto_map .*never runs code"):
        if kind == "model":
            hf_causal_lm(pretrained=str(target), setting="teacher.pretrained")
        else:
            load_tokenizer(str(target))


def test_gguf_refusals(tiny, tmp_path, monkeypatch):
    bert = write_gguf(tmp_path / "bert.gguf", architecture="bert")
    with pytest.raises(ValueError, match=r"teacher.pretrained=.*architecture 'bert'"):
        hf_causal_lm(pretrained=str(bert), setting="teacher.pretrained")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match=r"student.pretrained=.*not a readable GGUF"):
        hf_causal_lm(pretrained=str(junk), setting="student.pretrained")
    with pytest.raises(ValueError, match=r"data.tokenizer=.*not a readable GGUF"):
        load_tokenizer(str(junk))
    with pytest.raises(FileNotFoundError, match=r"teacher.pretrained=.*does not exist"):
        hf_causal_lm(pretrained=str(tmp_path / "none.gguf"), setting="teacher.pretrained")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else find_spec(name)
    )
    path, _, _ = tiny
    with pytest.raises(ImportError, match=r"data.tokenizer=.*needs the gguf package.*\[gguf\]"):
        load_tokenizer(str(path))


def test_corrupt_byte_tokenizer_file_names_the_file_and_setting(tmp_path):
    ByteTokenizer().save_pretrained(tmp_path)
    (tmp_path / "byte_tokenizer.json").write_text('{"tokenizer_class": "softlabel.da')
    with pytest.raises(ValueError, match=r"data.tokenizer=.*byte_tokenizer.json is not valid JSON"):
        load_tokenizer(str(tmp_path))
