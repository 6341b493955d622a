"""Rendering conversations as text: the chat template used when a tokenizer has none.

Training (conversational data) and scoring (`RewardScorer.score_conversations`) render messages the same way:
with the tokenizer's own chat template, else `DEFAULT_CHAT_TEMPLATE`, "role: content" turns separated by blank lines.
"""

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def chat_template_of(tokenizer) -> str:
    """The tokenizer's chat template, or `DEFAULT_CHAT_TEMPLATE` when it has none."""
    return getattr(tokenizer, "chat_template", None) or DEFAULT_CHAT_TEMPLATE
