#!/usr/bin/env python3
"""Writes a tiny llama-architecture GGUF model with random weights: the model lode's
tests and `lode-fleet --engine llamacpp` serve with the real llama.cpp server.

Nothing is downloaded: the weights are drawn from a seeded generator, and the
tokenizer is a byte-level SentencePiece-style vocabulary (every printable ASCII
character is one token, anything else falls back to its UTF-8 bytes) with ChatML's
control tokens and chat template. 2 layers, embedding 64, 4 heads, context 2048:
about 0.5 MB, loaded by llama-server in milliseconds. Its answers are random text,
but every part of the serving path (tokenizing, prefill, decoding, the prompt cache,
usage, streaming) is llama.cpp's own.

Usage: tiny-gguf.py OUT.gguf [--seed N] [--context N]
Needs the `gguf` package (PyPI; scripts/setup.sh installs it).
"""

import argparse
import sys

import numpy as np

try:
    import gguf
except ImportError:
    sys.exit("tiny-gguf.py: the gguf package is missing (python3 -m pip install gguf==0.19.0)")

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def vocabulary():
    """Tokens, scores and types: <unk> <s> </s>, the 256 byte tokens, ChatML's two
    control tokens, then the SentencePiece space and printable ASCII."""
    T = gguf.TokenType
    tokens = [("<unk>", T.UNKNOWN), ("<s>", T.CONTROL), ("</s>", T.CONTROL)]
    tokens += [(f"<0x{b:02X}>", T.BYTE) for b in range(256)]
    tokens += [("<|im_start|>", T.CONTROL), ("<|im_end|>", T.CONTROL)]
    tokens += [("\u2581", T.NORMAL)]
    tokens += [(chr(c), T.NORMAL) for c in range(0x21, 0x7F)]
    return tokens


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="the .gguf file to write")
    p.add_argument("--seed", type=int, default=7, help="weights are drawn from this seed (default 7)")
    p.add_argument("--context", type=int, default=2048, help="trained context length (default 2048)")
    a = p.parse_args()

    n_embd, n_layer, n_head, n_ff, rope_dim = 64, 2, 4, 128, 16
    tokens = vocabulary()
    n_vocab = len(tokens)
    eos = next(i for i, (t, _) in enumerate(tokens) if t == "<|im_end|>")
    rng = np.random.default_rng(a.seed)

    def weights(*shape):
        # numpy's (rows, columns) is ggml's (columns, rows): (out, in) here.
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    w = gguf.GGUFWriter(a.out, "llama")
    w.add_name("lode-tiny-llama")
    w.add_context_length(a.context)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_rope_dimension_count(rope_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list([t for t, _ in tokens])
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_types([int(k) for _, k in tokens])
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(eos)
    w.add_add_bos_token(False)
    w.add_add_space_prefix(False)
    w.add_chat_template(CHAT_TEMPLATE)

    names = gguf.TENSOR_NAMES
    M = gguf.MODEL_TENSOR
    w.add_tensor(names[M.TOKEN_EMBD] + ".weight", weights(n_vocab, n_embd))
    for b in range(n_layer):
        def name(t):
            return names[t].format(bid=b) + ".weight"
        w.add_tensor(name(M.ATTN_NORM), np.ones(n_embd, dtype=np.float32))
        for t in (M.ATTN_Q, M.ATTN_K, M.ATTN_V, M.ATTN_OUT):
            w.add_tensor(name(t), weights(n_embd, n_embd))
        w.add_tensor(name(M.FFN_NORM), np.ones(n_embd, dtype=np.float32))
        w.add_tensor(name(M.FFN_GATE), weights(n_ff, n_embd))
        w.add_tensor(name(M.FFN_UP), weights(n_ff, n_embd))
        w.add_tensor(name(M.FFN_DOWN), weights(n_embd, n_ff))
    w.add_tensor(names[M.OUTPUT_NORM] + ".weight", np.ones(n_embd, dtype=np.float32))
    w.add_tensor(names[M.OUTPUT] + ".weight", weights(n_vocab, n_embd))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
