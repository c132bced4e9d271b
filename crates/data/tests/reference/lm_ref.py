"""Reference for tests/lm_parity.rs: causal-LM examples as TRL's SFTTrainer builds them.

    python lm_ref.py FIXTURE_DIR

writes into FIXTURE_DIR one tiny tokenizer per chat template (tiny_tokenizer.py), the data files
data/*.jsonl, conversations.json, and ref.json with, computed by `transformers`:
- "chat": for each template, conversation and add_generation_prompt, the text and token ids of
  `apply_chat_template` (or the error it raised); the rows with tools, tool calls, reasoning and
  template variables (TOOL_ROWS) with the "tools" template only;
- "cases": for each case (model, data file, max_seq_len, packing, assistant_only_loss), the rows
  of the dataset (input_ids, labels, position_ids) and the counts of skipped / truncated rows.

The rules, as TRL's `SFTTrainer._prepare_dataset` (trl/trainer/sft_trainer.py) with the
assistant-turn rule of loraplus (crates/data/src/lm.rs):
- text: tokenizer(text + eos unless it ends with eos); every token a target;
- prompt-completion: p = tokenizer(prompt), ids = tokenizer(prompt + completion + eos unless
  it ends with eos); the tokens p and ids share at the start are not targets (TRL's
  common_prefix_length: a token merged across the boundary is a target);
- conversational prompt-completion (prompt and completion as lists of turns): p =
  apply_chat_template(prompt, add_generation_prompt=True), ids = apply_chat_template(prompt +
  completion); the tokens they share at the start are not targets, and with
  assistant_only_loss only the completion's assistant turns' tokens (the rule below; a turn
  that does not start with the generation prompt starts after the turns before it) are;
- messages: ids = apply_chat_template(messages, tokenize=True); a token is a target when its
  first character lies in an assistant turn: between render(messages[:i],
  add_generation_prompt=True) and render(messages[:i+1]) for each assistant message i;
- keep the first max_seq_len tokens; drop a row with no target after position 0;
- packing: best-fit decreasing as TRL's `_pack_bfd` (longest first, stable; the row with the
  least room that fits, first come first served among equal rooms), position ids restart at
  0 per example whose first token is not a target (DataCollatorWithFlattening).
"""

import json
import os
import sys
from collections import defaultdict, deque

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_tokenizer import write_tokenizer  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

IGNORE = -100

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? The capital of France is Paris.",
    "Already ended.</s>",
    "Un café ☕ à Paris, s'il vous plaît.",
    "  leading spaces and a newline\nin the middle",
    " ".join(["The sea is wide and deep and blue, it holds the moon and morning dew."] * 6),
    "Low rank adapters add two small matrices to each weight.",
    "x",
]

PROMPT_COMPLETIONS = [
    ("What is two plus two?", " Two plus two is four."),
    ("Translate to French: thank you.\n", "Merci beaucoup."),
    ("Tell me a joke.", " Why did the chicken cross the road?</s>"),
    ("Where do penguins live?", " Near Antarctica, in the south."),
    # A prompt longer than the cases' max_seq_len: nothing left to learn after truncation.
    (" ".join(["Summarize the following text in a few words."] * 12), " Weather."),
    ("Is the earth round?", " Yes."),
    # A prompt ending in a space: " the" is one token of prompt + completion, not of the prompt.
    ("Tell me about ", "the sea."),
]

CONVERSATIONS = [
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
    ],
    [
        {"role": "user", "content": "What is two plus two?"},
        {"role": "assistant", "content": "Four."},
        {"role": "user", "content": "And two plus three?"},
        {"role": "assistant", "content": " Five, of course. "},
    ],
    [
        {"role": "user", "content": "Tell me a joke about the sea, please."},
        {"role": "assistant", "content": "Why is the sea blue? Because it holds the moon."},
    ],
    [
        {"role": "system", "content": "Answer in one sentence."},
        {"role": "user", "content": "Où est Paris? ☕"},
        {"role": "assistant", "content": "Paris est en France, sur la Seine."},
        {"role": "user", "content": "Merci!"},
        {"role": "assistant", "content": "De rien."},
    ],
]

# Conversations for rendering only (not in the data files).
RENDER_ONLY = [
    # Roles do not alternate: the llama2 template raises.
    [
        {"role": "user", "content": "Hello."},
        {"role": "user", "content": "Hello again."},
    ],
    # Ends with a user turn: for the generation prompt.
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Quick question: what is the capital of France?"},
    ],
]

# Rows with tools, tool calls (content null or absent), tool turns, reasoning, template
# variables (TRL's `tools` and `chat_template_kwargs` columns) and content parts, for the
# "tools" template.
TOOL_ROWS = [
    {
        "messages": [
            {"role": "system", "content": "You can look up the weather."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}}
            ]},
            {"role": "tool", "name": "get_weather", "content": "{\"temp\": 21}"},
            {"role": "assistant", "content": "It is 21 degrees in Paris."},
        ],
        "tools": [{"type": "function", "function": {
            "name": "get_weather", "description": "The weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                           "required": ["city"]}}}],
    },
    {
        "messages": [
            {"role": "user", "content": "What is two plus two?"},
            {"role": "assistant", "reasoning_content": "Two and two make four.", "content": "Four."},
        ],
    },
    {
        "messages": [
            {"role": "user", "content": "And two plus three?"},
            {"role": "assistant", "reasoning_content": "Not shown.", "content": "Five."},
        ],
        "chat_template_kwargs": {"enable_thinking": False},
    },
    # Content as a list of text parts (the OpenAI form), which the template prints trimmed.
    {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Name a colour. "},
                                         {"type": "text", "text": "One word."}]},
            {"role": "assistant", "content": [{"type": "text", "text": " Blue."}]},
        ],
    },
    {
        "messages": [
            {"role": "user", "content": "Call it."},
            {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "ping", "arguments": {}}}]},
        ],
    },
]

# TRL's conversational prompt-completion: prompt and completion as lists of turns.
CHAT_PROMPT_COMPLETIONS = [
    {"prompt": [{"role": "user", "content": "What is the capital of France?"}],
     "completion": [{"role": "assistant", "content": "Paris."}]},
    {"prompt": [{"role": "system", "content": "Answer in one word."},
                {"role": "user", "content": "Opposite of hot?"},
                {"role": "assistant", "content": "Cold."},
                {"role": "user", "content": "Of up?"}],
     "completion": [{"role": "assistant", "content": "Down."}]},
    {"prompt": [{"role": "user", "content": "Say hi."}],
     "completion": [{"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "Again."},
                    {"role": "assistant", "content": "Hi again!"}]},
]

# Conversational prompt-completion whose prompt holds an assistant turn with reasoning (the
# "rewriting" template prints it only in the last turn).
CHAT_PROMPT_COMPLETIONS_REASONING = [
    {"prompt": [{"role": "user", "content": "Two plus two?"},
                {"role": "assistant", "reasoning_content": "Add them.", "content": "Four."},
                {"role": "user", "content": "And three plus three?"}],
     "completion": [{"role": "assistant", "reasoning_content": "Add again.", "content": "Six."}]},
    {"prompt": [{"role": "user", "content": "Name a fruit."}],
     "completion": [{"role": "assistant", "content": "A pear."}]},
]

# Tokenizers only the cases use (not in the rendering matrix).
CASE_TEMPLATES = {"rewriting": "right", "think_prompt": "right"}

TEMPLATES = {"llama2": "right", "zephyr": "right", "chatml": "left", "tojson": "right", "tools": "right"}

# (name, model, data file, max_seq_len, packing, assistant_only_loss)
CASES = [
    ("text", "llama2", "text.jsonl", 64, False, True),
    ("text_short", "llama2", "text.jsonl", 12, False, True),
    ("text_packed", "llama2", "text.jsonl", 40, True, True),
    ("pc", "llama2", "pc.jsonl", 48, False, True),
    ("pc_packed", "zephyr", "pc.jsonl", 48, True, True),
    ("messages_llama2", "llama2", "messages.jsonl", 256, False, True),
    ("messages_zephyr", "zephyr", "messages.jsonl", 256, False, True),
    ("messages_chatml", "chatml", "messages.jsonl", 256, False, True),
    ("messages_chatml_short", "chatml", "messages.jsonl", 72, False, True),
    ("messages_chatml_packed", "chatml", "messages.jsonl", 120, True, True),
    ("messages_all_tokens", "zephyr", "messages.jsonl", 256, False, False),
    ("messages_tools", "tools", "tools.jsonl", 512, False, True),
    ("messages_tools_all_tokens", "tools", "tools.jsonl", 512, False, False),
    ("chat_pc", "chatml", "chat_pc.jsonl", 256, False, True),
    ("chat_pc_all_turns", "zephyr", "chat_pc.jsonl", 256, False, False),
    ("chat_pc_rewriting", "rewriting", "chat_pc_reasoning.jsonl", 256, False, True),
    ("chat_pc_think_prompt", "think_prompt", "chat_pc_reasoning.jsonl", 256, False, True),
]


def template_args(row):
    """What `apply_chat_template` takes from a row besides its messages (TRL's columns)."""
    return dict(tools=row.get("tools"), **row.get("chat_template_kwargs", {}))


def with_eos(text, eos):
    return text if text.endswith(eos) else text + eos


def assistant_spans(tok, messages, full, args, start=0, lenient=False):
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or i < start:
            continue
        before = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True, **args)
        through = tok.apply_chat_template(messages[: i + 1], tokenize=False, **args)
        if lenient and not through.startswith(before):
            before = tok.apply_chat_template(messages[:i], tokenize=False, **args)
        assert full.startswith(through) and through.startswith(before), (before, through, full)
        spans.append((len(before), len(through)))
    return spans


def tokenize_row(tok, row, assistant_only):
    eos = tok.eos_token
    if "messages" in row:
        messages, args = row["messages"], template_args(row)
        full = tok.apply_chat_template(messages, tokenize=False, **args)
        ids = list(tok.apply_chat_template(messages, tokenize=True, return_dict=True, **args)["input_ids"])
        enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
        assert list(enc["input_ids"]) == ids
        spans = assistant_spans(tok, messages, full, args) if assistant_only else [(0, len(full))]
        labels = [
            i if any(a <= start < b for a, b in spans) else IGNORE
            for i, (start, _) in zip(ids, enc["offset_mapping"])
        ]
        return ids, labels
    if "prompt" in row and isinstance(row["prompt"], list):
        # TRL's SFTTrainer: the prompt rendered with the generation prompt, the whole without;
        # the completion mask from where their tokens diverge, and (assistant_only_loss) the
        # assistant turns' spans.
        args = template_args(row)
        prompt_ids = list(tok.apply_chat_template(row["prompt"], tokenize=True, return_dict=True,
                                                  add_generation_prompt=True, **args)["input_ids"])
        messages = row["prompt"] + row["completion"]
        full = tok.apply_chat_template(messages, tokenize=False, **args)
        ids = list(tok.apply_chat_template(messages, tokenize=True, return_dict=True, **args)["input_ids"])
        enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
        assert list(enc["input_ids"]) == ids
        prompt_len = 0
        while prompt_len < min(len(prompt_ids), len(ids)) and prompt_ids[prompt_len] == ids[prompt_len]:
            prompt_len += 1
        # Under completion-only loss (always here) only the completion's assistant turns.
        spans = (assistant_spans(tok, messages, full, args, start=len(row["prompt"]), lenient=True)
                 if assistant_only else [(0, len(full))])
        labels = [
            i if t >= prompt_len and any(a <= start < b for a, b in spans) else IGNORE
            for t, (i, (start, _)) in enumerate(zip(ids, enc["offset_mapping"]))
        ]
        return ids, labels
    if "prompt" in row:
        prompt_ids = tok(row["prompt"])["input_ids"]
        ids = tok(with_eos(row["prompt"] + row["completion"], eos))["input_ids"]
        prompt_len = 0  # TRL's common_prefix_length
        while prompt_len < min(len(prompt_ids), len(ids)) and prompt_ids[prompt_len] == ids[prompt_len]:
            prompt_len += 1
        labels = [IGNORE if t < prompt_len else i for t, i in enumerate(ids)]
        return ids, labels
    ids = tok(with_eos(row["text"], eos))["input_ids"]
    return ids, list(ids)


def pack_bfd(lengths, capacity):
    """TRL's `_pack_bfd` placement, with a search over the rooms instead of its segment tree."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows, by_room = [], defaultdict(deque)
    for i in order:
        n = lengths[i]
        fits = [r for r, q in by_room.items() if r >= n and q]
        if fits:
            room = min(fits)
            row = by_room[room].popleft()
        else:
            rows.append([])
            row, room = len(rows) - 1, max(capacity, n)
        rows[row].append(i)
        if room - n > 0:
            by_room[room - n].append(row)
    return rows


def build(tok, rows, max_len, packing, assistant_only):
    examples, skipped, truncated = [], [], 0
    for line, row in rows:
        ids, labels = tokenize_row(tok, row, assistant_only)
        if len(ids) > max_len:
            truncated += 1
            ids, labels = ids[:max_len], labels[:max_len]
        if all(label == IGNORE for label in labels[1:]):
            skipped.append(line)
            continue
        examples.append((ids, labels))
    if packing:
        out = []
        for members in pack_bfd([len(e[0]) for e in examples], max_len):
            ids, labels, pos = [], [], []
            for i in members:
                e_ids, e_labels = examples[i]
                ids += e_ids
                labels += [IGNORE] + e_labels[1:]
                pos += list(range(len(e_ids)))
            out.append({"input_ids": ids, "labels": labels, "position_ids": pos})
    else:
        out = [{"input_ids": ids, "labels": labels, "position_ids": None} for ids, labels in examples]
    return {"rows": out, "skipped_lines": skipped, "truncated": truncated, "examples": len(examples)}


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main():
    root = sys.argv[1]
    for name, side in {**TEMPLATES, **CASE_TEMPLATES}.items():
        write_tokenizer(os.path.join(root, name), template=name, padding_side=side)
    data = os.path.join(root, "data")
    os.makedirs(data, exist_ok=True)
    files = {
        "text.jsonl": [{"text": t} for t in TEXTS],
        "pc.jsonl": [{"prompt": p, "completion": c} for p, c in PROMPT_COMPLETIONS],
        "messages.jsonl": [{"messages": m} for m in CONVERSATIONS],
        "tools.jsonl": TOOL_ROWS,
        "chat_pc.jsonl": CHAT_PROMPT_COMPLETIONS,
        "chat_pc_reasoning.jsonl": CHAT_PROMPT_COMPLETIONS_REASONING,
    }
    for fname, rows in files.items():
        write_jsonl(os.path.join(data, fname), rows)
    # Rows ({"messages", "tools", "chat_template_kwargs"}); the tool rows only for "tools".
    conversations = [{"messages": m} for m in CONVERSATIONS + RENDER_ONLY] + TOOL_ROWS
    with open(os.path.join(root, "conversations.json"), "w") as f:
        json.dump(conversations, f, ensure_ascii=False)

    toks = {name: AutoTokenizer.from_pretrained(os.path.join(root, name)) for name in {**TEMPLATES, **CASE_TEMPLATES}}
    chat = []
    for name, tok in toks.items():
        if name in CASE_TEMPLATES:
            continue
        for ci, conv in enumerate(conversations):
            if conv in TOOL_ROWS and name != "tools":
                continue
            for gen in (False, True):
                entry = {"template": name, "conversation": ci, "add_generation_prompt": gen}
                args = template_args(conv)
                try:
                    entry["text"] = tok.apply_chat_template(
                        conv["messages"], tokenize=False, add_generation_prompt=gen, **args
                    )
                    entry["ids"] = list(
                        tok.apply_chat_template(
                            conv["messages"], tokenize=True, return_dict=True, add_generation_prompt=gen, **args
                        )["input_ids"]
                    )
                except Exception as e:  # noqa: BLE001 - the message is what is compared
                    entry["error"] = str(e)
                chat.append(entry)
    cases = {}
    for name, model, fname, max_len, packing, assistant_only in CASES:
        rows = list(enumerate(files[fname], start=1))
        cases[name] = {
            "model": model,
            "data": fname,
            "max_seq_len": max_len,
            "packing": packing,
            "assistant_only_loss": assistant_only,
            **build(toks[model], rows, max_len, packing, assistant_only),
        }
    with open(os.path.join(root, "ref.json"), "w") as f:
        json.dump({"chat": chat, "cases": cases}, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
