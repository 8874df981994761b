"""A tiny randomly initialised chat model saved as a transformers directory, made offline in well under
a second: a byte-level BPE tokenizer trained on a few sentences, a chat template, and a one-layer Llama.
Its words are random (greedy, printable ones: see build); the tests check the protocol, not the prose.
Run as a script (it imports torch and transformers, which the test process itself should not carry):
`python tiny_llm.py DEST [CONTEXT]`."""

from __future__ import annotations

import sys

CORPUS = ["the model answers in tokens", "a small test of the protocol", "hello there, how are you today",
          "server-sent events end with done", "one two three four five six seven eight nine ten"] * 20
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build(dest: str, context: int = 256) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", bos_token="<|im_start|>",
                                  pad_token="<|endoftext|>")
    tok.chat_template = TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=context,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    # Greedy, the random weights favour a newline every time, and a client that drops empty lines (the
    # console guide's curl + jq script does) would then show nothing. The tokens that decode to no printable
    # text (whitespace, control bytes, part of a UTF-8 character) get a zero embedding, tied with the output
    # layer, so a logit of 0: a printable token wins the argmax.
    with torch.no_grad():
        for token_id in range(len(tok)):
            text = tok.decode([token_id])
            if token_id not in tok.all_special_ids and not (text.strip() and text.isprintable() and "\ufffd" not in text):
                model.get_input_embeddings().weight[token_id] = 0.0
    model.save_pretrained(dest)
    tok.save_pretrained(dest)


if __name__ == "__main__":
    build(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 256)
