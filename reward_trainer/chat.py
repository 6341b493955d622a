"""Rendering conversations as text: chat templates, and HH-RLHF's plain-text turns as messages.

Training (conversational data) and scoring (`RewardScorer.score_conversations`) render messages the same way:
with the tokenizer's own chat template, else `DEFAULT_CHAT_TEMPLATE`, "role: content" turns separated by blank lines.

Implicit-prompt conversations (HH-RLHF: "\\n\\nHuman: ...\\n\\nAssistant: ...") are plain text. With
`implicit_prompt_rendering` "chat_template" (or "auto" and a tokenizer with a template) they are parsed into
messages (`parse_implicit_conversation`) and rendered with the template, so an instruct model sees its own format.

Where the reward is read: at the last token of the rendered text as the tokenizer encodes it, nothing appended
(`reward_trainer.loading`), so a conversation's reward is read at the end of the template's end-of-turn text:
SmolLM2 `... response<|im_end|>\\n`, the final `\\n`. Training, `RewardScorer`, the server, plain
`tokenizer(text)`, `apply_chat_template(..., tokenize=True)`, TRL's GRPO and RewardTrainer, verl and vLLM's chat
requests all read it at that token. A template that writes BOS (Llama 3) under a tokenizer that adds BOS gives
the BOS once (`data.tokenizing.drop_repeated_lead`), as `apply_chat_template(tokenize=True)` does.
"""

HUMAN_MARKER = "\n\nHuman:"
ASSISTANT_MARKER = "\n\nAssistant:"  # HH-RLHF: the prompt ends with the last assistant turn's marker
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
    `assistant` one, content stripped of surrounding whitespace. Text before the first marker, if any, is a
    `user` message of its own.

    >>> parse_implicit_conversation("\\n\\nHuman: hi\\n\\nAssistant: hello\\n\\nHuman: bye\\n\\nAssistant:")
    [{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'hello'}, {'role': 'user', 'content': 'bye'}, {'role': 'assistant', 'content': ''}]
    """
    markers = ((HUMAN_MARKER, "user"), (ASSISTANT_MARKER, "assistant"))
    messages, role, start, position = [], "user", 0, 0
    while True:
        found = [(text.find(marker, position), marker, r) for marker, r in markers]
        found = [f for f in found if f[0] >= 0]
        end = min(found)[0] if found else len(text)
        content = text[start:end].strip()
        if content or (messages or start > 0):
            messages.append({"role": role, "content": content})
        if not found:
            return messages
        end, marker, role = min(found)
        start = position = end + len(marker)
