"""Rendering conversations as text: chat templates, and HH-RLHF's plain-text turns as messages.

Training (conversational data) and scoring (`RewardScorer.score_conversations`) render messages the same way:
with the tokenizer's own chat template, else `DEFAULT_CHAT_TEMPLATE`, "role: content" turns separated by blank lines.

Implicit-prompt conversations (HH-RLHF: "\\n\\nHuman: ...\\n\\nAssistant: ...") are plain text, and this module
is the one place that reads them: `parse_implicit_conversation` (turns as messages), `hh_messages` (a prompt that
ends with an open assistant turn, as the messages before it) and `split_implicit_prompt` (a pair's shared prompt
and its two responses). With `implicit_prompt_rendering` "chat_template" (or "auto" and a tokenizer with a
template) they are parsed into messages and rendered with the template, so an instruct model sees its own format.

Where the reward is read: at the last token of the rendered text as the tokenizer encodes it, nothing appended
(`reward_trainer.loading`), so a conversation's reward is read at the end of the template's end-of-turn text:
SmolLM2 `... response<|im_end|>\\n`, the final `\\n`. Training, `RewardScorer`, the server, plain
`tokenizer(text)`, `apply_chat_template(..., tokenize=True)`, TRL's GRPO and RewardTrainer, verl and vLLM's chat
requests all read it at that token. A template that writes BOS (Llama 3) under a tokenizer that adds BOS gives
the BOS once (`data.tokenizing.drop_repeated_lead`), as `apply_chat_template(tokenize=True)` does.
"""

import re

HUMAN_MARKER = "\n\nHuman:"
ASSISTANT_MARKER = "\n\nAssistant:"  # HH-RLHF: the prompt ends with the last assistant turn's marker
HH_ROLES = {HUMAN_MARKER: "user", ASSISTANT_MARKER: "assistant"}
HH_TURN = re.compile("(" + "|".join(map(re.escape, HH_ROLES)) + ")")  # either marker; the group is the marker
IMPLICIT_PROMPT_RENDERINGS = ("auto", "raw", "chat_template")

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def chat_template_of(tokenizer) -> str:
    """The tokenizer's chat template, or `DEFAULT_CHAT_TEMPLATE` when it has none."""
    return getattr(tokenizer, "chat_template", None) or DEFAULT_CHAT_TEMPLATE


def end_of_turn(tokenizer) -> str:
    """The text the chat template writes after an assistant message's content (SmolLM2: `<|im_end|>\\n`; the
    default template: a blank line), or "" when the template cannot render a two-turn conversation."""
    sentinel = "\u2063reply\u2063"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": sentinel}]
    try:
        text = tokenizer.apply_chat_template(messages, chat_template=chat_template_of(tokenizer), tokenize=False)
    except Exception:  # jinja's TemplateError, or whatever the template raises
        return ""
    return text[text.rfind(sentinel) + len(sentinel) :] if sentinel in text else ""


def renders_implicit_prompt_with_template(rendering: str, tokenizer) -> bool:
    """Whether implicit-prompt text is rendered with the chat template: `chat_template` always (the default
    template when the tokenizer has none), `raw` never, `auto` when the tokenizer has its own template."""
    if rendering not in IMPLICIT_PROMPT_RENDERINGS:
        raise ValueError(f"implicit_prompt_rendering must be one of {IMPLICIT_PROMPT_RENDERINGS}, got {rendering!r}")
    if rendering == "auto":
        return bool(getattr(tokenizer, "chat_template", None))
    return rendering == "chat_template"


def split_rendered_prompt(
    tokenizer, template: str, prompt: list[dict], full: list[str], generation_prompts: tuple[bool, ...] = (True, False)
) -> tuple[str, list[str]] | None:
    """(rendered prompt, the text each rendered conversation in `full` adds after it), or None when no rendering
    of the prompt messages is a prefix of all of them: tried with the assistant's generation prompt, then
    without (`generation_prompts`). An empty prompt renders as ""."""
    for generation_prompt in generation_prompts:
        text = (
            tokenizer.apply_chat_template(
                prompt, tokenize=False, chat_template=template, add_generation_prompt=generation_prompt
            )
            if prompt
            else ""
        )
        if all(f.startswith(text) for f in full):
            return text, [f[len(text) :] for f in full]
    return None


def parse_implicit_conversation(text: str) -> list[dict]:
    """HH-RLHF text -> messages: each "\\n\\nHuman:" turn is a `user` message, each "\\n\\nAssistant:" turn an
    `assistant` one, content stripped of surrounding whitespace (an empty turn is an empty message). Text before
    the first marker, if any, is a `user` message of its own.

    >>> parse_implicit_conversation("\\n\\nHuman: hi\\n\\nAssistant: hello\\n\\nHuman: bye\\n\\nAssistant:")
    [{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'hello'}, {'role': 'user', 'content': 'bye'}, {'role': 'assistant', 'content': ''}]
    """
    preamble, *turns = HH_TURN.split(text)  # preamble, marker, text, marker, text, ...
    messages = [{"role": "user", "content": preamble.strip()}] if preamble.strip() else []
    return messages + [
        {"role": HH_ROLES[marker], "content": content.strip()} for marker, content in zip(turns[::2], turns[1::2])
    ]


def hh_messages(prompt: str) -> list[dict] | None:
    """An HH-RLHF prompt ("\\n\\nHuman: ...\\n\\nAssistant:", nothing before its first marker or after its last,
    which is the assistant's) as the messages before its open assistant turn; None if it is not one.

    >>> hh_messages("\\n\\nHuman: hi\\n\\nAssistant:"), hh_messages("cat?\\nanswer:")
    ([{'role': 'user', 'content': 'hi'}], None)
    """
    parts = HH_TURN.split(prompt)
    if len(parts) < 3 or parts[0].strip() or parts[-2] != ASSISTANT_MARKER or parts[-1].strip():
        return None
    return parse_implicit_conversation(prompt)[:-1]  # less the open assistant turn


def writes_human_turn(response: str) -> bool:
    """Whether a response (the text after a prompt's last marker) goes on to write the human's next turn: a sample
    that continued the conversation, or a pair whose conversations differ before their final turn."""
    return HUMAN_MARKER in response


def common_prefix_length(a: str, b: str) -> int:
    """Length of the longest common prefix: a binary search over slices compared in C (`os.path.commonprefix`
    compares character by character in Python, the slowest step of reading HH-RLHF)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def split_implicit_prompt(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen response, rejected response) of two whole conversations.

    The prompt is the shared text up to and including the last "\\n\\nAssistant:" that both share; when the
    conversations differ before their final turn, the responses are the differing remainders (several
    turns), so `prompt + response` is still exactly each original conversation. With no shared marker the prompt
    is "" and the responses are the whole texts.
    """
    cut = chosen.rfind(ASSISTANT_MARKER, 0, common_prefix_length(chosen, rejected))
    cut = 0 if cut < 0 else cut + len(ASSISTANT_MARKER)
    return chosen[:cut], chosen[cut:], rejected[cut:]
