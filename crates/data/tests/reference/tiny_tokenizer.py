"""A tiny Llama-like tokenizer for tests: byte-level BPE trained on the text below.

    python tiny_tokenizer.py OUT_DIR [--template NAME] [--padding-side right|left]

writes OUT_DIR/tokenizer.json and OUT_DIR/tokenizer_config.json: vocabulary of VOCAB_SIZE
(256 bytes, the special tokens, BPE merges), a post-processor that puts `<s>` (BOS) before a
sequence as Llama's does, special tokens `<s>` `</s>` `<pad>` `<|im_start|>` `<|im_end|>`, and a
config with bos/eos/pad tokens, `padding_side` and the chat template NAME (one of TEMPLATES).
The folder loads with `transformers.AutoTokenizer.from_pretrained(OUT_DIR)`.

As a module: `write_tokenizer(out_dir, template="llama2", padding_side="right")` returns the
vocabulary size, for building tiny Llama/GPT-2 checkpoints next to it.
"""

import argparse
import json
import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

VOCAB_SIZE = 400
SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
BOS, EOS, PAD = "<s>", "</s>", "<pad>"

# A few hundred words of plain English (and a little French) to learn merges from.
CORPUS = """
The quick brown fox jumps over the lazy dog. The dog sleeps in the sun, and the fox runs
into the forest to find some food. A small bird sings on a branch of the old oak tree.
What is the capital of France? The capital of France is Paris. Paris is a large city on the
river Seine, with many museums, bridges and cafes. What is two plus two? Two plus two is four.
Please write a short poem about the sea. The sea is wide and deep and blue, it holds the
moon and morning dew. Tell me a joke. Why did the chicken cross the road? To get to the
other side. You are a helpful assistant. Answer the question in one sentence. The user asks
a question and the assistant gives a helpful answer. Thank you very much for your help.
Can you explain how a neural network learns? A neural network learns by adjusting its
weights to reduce the error between its predictions and the correct answers, step by step,
with gradient descent. Training a language model means predicting the next token of a text.
Fine tuning adapts a pretrained model to a new task with a small amount of data. Low rank
adapters add two small matrices to each weight and train only those. The learning rate of
the second matrix can be larger than the first. Summarize the following text in a few words.
The weather today is cold and rainy, but tomorrow it will be warm and sunny again. Translate
to French: good morning. Bonjour. Translate to French: thank you. Merci beaucoup. How many
days are in a week? There are seven days in a week: Monday, Tuesday, Wednesday, Thursday,
Friday, Saturday and Sunday. Numbers: one, two, three, four, five, six, seven, eight, nine,
ten, 1, 2, 3, 42, 100, 2024. Lists, commas; colons: and "quotes" with (brackets) and [more].
Where do penguins live? Most penguins live in the southern hemisphere, near Antarctica.
Write a function that adds two numbers. def add(a, b): return a + b. The end of the story
is near, and everyone lives happily ever after. Is the earth round? Yes, the earth is
round, like a ball that spins around the sun once a year. Who wrote the play? The play was
written by a famous writer a long time ago, and people still read it today.
"""

TEMPLATES = {
    # Llama-2 chat: optional system prompt folded into the first user turn; roles must
    # alternate (raise_exception otherwise); no generation prompt of its own.
    "llama2": (
        "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
        "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
        "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
        "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
        "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
        "{% else %}{% set content = message['content'] %}{% endif %}"
        "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}"
        "{% endif %}{% endfor %}"
    ),
    # Zephyr: block tags on their own lines (trim_blocks/lstrip_blocks matter), a system turn,
    # and a generation prompt.
    "zephyr": """{{ bos_token }}
{% for message in messages %}
    {% if message['role'] == 'user' %}
{{ '<|user|>\\n' + message['content'] + eos_token }}
    {% elif message['role'] == 'system' %}
{{ '<|system|>\\n' + message['content'] + eos_token }}
    {% elif message['role'] == 'assistant' %}
{{ '<|assistant|>\\n'  + message['content'] + eos_token }}
    {% endif %}
    {% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
    {% endif %}
{% endfor %}""",
    # ChatML with a default system prompt and a generation prompt.
    "chatml": (
        "{% if messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    # ChatML that prints an assistant turn's reasoning only in the last turn (as Qwen3's drops
    # earlier turns' reasoning): a conversation up to an earlier assistant turn is not a prefix
    # of the whole.
    "rewriting": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{% if loop.last and message['reasoning_content'] is defined %}"
        "{{ '<think>' + message['reasoning_content'] + '</think>' }}{% endif %}"
        "{{ message['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    # A generation prompt that opens the reasoning (`<think>\n`), which a rendered assistant
    # turn lacks (as DeepSeek-R1's).
    "think_prompt": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n' }}{% endif %}"
    ),
    # Tools and tool calls (ChatML-like): the row's `tools` as JSON in a system block (`tools is
    # not none`), an assistant turn's `tool_calls` (content null or absent) and
    # `reasoning_content`, `tool` turns, and a template variable (`enable_thinking`) that rows
    # set through `chat_template_kwargs`.
    "tools": """{%- if tools is not none %}
<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}
{% endif %}# Tools
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}<|im_end|>
{% elif messages[0].role == 'system' %}
<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for m in messages %}
{% if m.role != 'system' %}
<|im_start|>{{ m.role }}
{% if m.reasoning_content is defined and m.reasoning_content and (enable_thinking is not defined or enable_thinking) %}
<think>{{ m.reasoning_content }}</think>
{% endif %}
{% if m.content is string %}{{ m.content }}{% elif m.content %}{% for part in m.content %}{% if part.type == 'text' %}{{ part.text | trim }}{% endif %}{% endfor %}{% endif %}
{% if m.tool_calls is defined and m.tool_calls %}
{% for call in m.tool_calls %}<tool_call>{{ call.function | tojson }}</tool_call>{% endfor %}
{% endif %}
<|im_end|>
{% endif %}
{% endfor %}
{%- if add_generation_prompt %}
<|im_start|>assistant
{% endif %}""",
    # Messages as JSON (Python's separators), and Python string methods.
    "tojson": (
        "{% for m in messages %}{{ m | tojson }}\n"
        "{% if m.content.startswith('Q') %}{{ m.content.upper().split(' ') | join('|') }}\n{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '{\"role\": \"assistant\"' }}{% endif %}"
    ),
}


def train_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([CORPUS], trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return tok


def write_tokenizer(out_dir, template="llama2", padding_side="right"):
    """Write tokenizer.json and tokenizer_config.json into out_dir; return the vocabulary size."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; known: {sorted(TEMPLATES)}")
    os.makedirs(out_dir, exist_ok=True)
    tok = train_tokenizer()
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        # The AddedToken form, as many Llama configs write it.
        "bos_token": {"content": BOS, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "__type": "AddedToken"},
        "eos_token": EOS,
        "pad_token": PAD,
        "padding_side": padding_side,
        "model_max_length": 2048,
        "clean_up_tokenization_spaces": False,
        "chat_template": TEMPLATES[template],
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}, f, indent=2)
    return tok.get_vocab_size()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--template", default="llama2", choices=sorted(TEMPLATES))
    ap.add_argument("--padding-side", default="right", choices=["right", "left"])
    args = ap.parse_args()
    n = write_tokenizer(args.out_dir, args.template, args.padding_side)
    print(f"wrote {args.out_dir}: vocabulary {n}, template {args.template}")


if __name__ == "__main__":
    main()
