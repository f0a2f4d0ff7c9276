"""Tiny llama GGUF files for the tests, written with the ``gguf`` package's writer.

A random ``LlamaForCausalLM`` (2 layers, d = 32) with a byte-level BPE tokenizer of 259
tokens (the 256 byte symbols, two merges, ``<|endoftext|>``) is written in llama.cpp's
layout: tensor names ``blk.{i}.attn_q.weight`` and so on, the embedding tied to the output
(no ``output.weight``), and the rows of the query and key projections permuted per head as
llama.cpp's converter does (so that its rotary embedding pairs adjacent dimensions):
``w.reshape(heads, 2, rows // heads // 2, cols).swapaxes(1, 2)``. transformers undoes the
permutation when it reads the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

TOKENS_EXTRA = ["\u0120t", "\u0120a"]  # "Ġt", "Ġa": a space then t / a
MERGES = ["\u0120 t", "\u0120 a"]
EOS = "<|endoftext|>"
HEADS, KV_HEADS, LAYERS, HIDDEN, FFN, CONTEXT = 4, 2, 2, 32, 64, 64


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes, in byte order."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    table = bytes_to_unicode()
    return [table[b] for b in range(256)]


def vocabulary() -> list[str]:
    return [*_byte_symbols(), *TOKENS_EXTRA, EOS]


def tiny_llama(seed: int = 0):
    """A random llama of the tiny GGUF's shape and vocabulary."""
    import transformers

    size = len(vocabulary())
    config = transformers.LlamaConfig(
        vocab_size=size,
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=CONTEXT,
        tie_word_embeddings=True,
        eos_token_id=size - 1,
        bos_token_id=size - 1,
        pad_token_id=size - 1,
        rms_norm_eps=1e-5,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).eval()


def _permute(weight: np.ndarray, heads: int) -> np.ndarray:
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_gguf(path: Path, model=None, architecture: str = "llama") -> Path:
    """Write ``model`` (default: ``tiny_llama()``) as a float32 GGUF file at ``path``;
    ``architecture`` other than llama writes a header of that architecture (and the same
    tensors), which no causal-LM loader accepts."""
    import gguf

    model = tiny_llama() if model is None else model
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    tokens = vocabulary()
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (len(tokens) - 1) + [3])  # 3: control (the eos)
    writer.add_token_merges(MERGES)
    for add in (writer.add_eos_token_id, writer.add_bos_token_id, writer.add_pad_token_id):
        add(len(tokens) - 1)
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    for i in range(LAYERS):
        layer = f"model.layers.{i}."
        names = {
            "attn_norm": "input_layernorm",
            "attn_v": "self_attn.v_proj",
            "attn_output": "self_attn.o_proj",
            "ffn_norm": "post_attention_layernorm",
            "ffn_gate": "mlp.gate_proj",
            "ffn_up": "mlp.up_proj",
            "ffn_down": "mlp.down_proj",
        }
        q = _permute(state[layer + "self_attn.q_proj.weight"], HEADS)
        k = _permute(state[layer + "self_attn.k_proj.weight"], KV_HEADS)
        writer.add_tensor(f"blk.{i}.attn_q.weight", q)
        writer.add_tensor(f"blk.{i}.attn_k.weight", k)
        for ours, theirs in names.items():
            writer.add_tensor(f"blk.{i}.{ours}.weight", state[f"{layer}{theirs}.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
