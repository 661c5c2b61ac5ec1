"""How a conversation (user and assistant turns) is written as one text, for probes that are
a chat (mrcr), so that its exact length counts the whole rendered conversation.

A format is five strings: the text before the first user message (`head`), what goes from a
user message to the assistant's reply (`to_assistant`), from a reply to the next user message
(`to_user`), and after the last user message (`tail`: it closes the message and opens the
answer). So a conversation renders as

    head + u1 + to_assistant + a1 + to_user + u2 + ... + to_user + u_last + tail

and each exchange is a unit that can be tokenized once and counted by prefix sums. Units are cut
just before the whitespace that ends `head` and `to_user` (`lead`, e.g. the "\n\n" after Llama 3's
user header), so that no unit ends in whitespace that the next unit's first word would pull
apart: `lead + u + to_assistant + a + to_user - lead`. `TRANSCRIPT` is the plain one for base models and servers (which apply
their own template to the messages); `ChatFormat.from_renderer` reads the five strings off a
checkpoint's chat template by rendering marker messages, and refuses a template that renders a
turn differently by its position (then prefix sums cannot count it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

_MARK = "\x00ctxprobe-turn-{}\x00"
_ROLES = ("user", "assistant", "user", "assistant", "user")


@dataclass(frozen=True)
class ChatFormat:
    name: str                 # provenance: "transcript", or "template:<sha256 prefix>"
    head: str
    to_assistant: str
    to_user: str
    tail: str
    content_prefix: str = ""  # before each message's text (" " in the transcript: units start with a space)
    lead: str = ""            # whitespace that ends both head and to_user: it starts each unit

    @property
    def prefix(self) -> str:
        """What comes before the first exchange."""
        return self.head[: len(self.head) - len(self.lead)]

    def exchange(self, request: str, reply: str) -> str:
        """One user request and the assistant's reply, up to the next user message's `lead`."""
        cp = self.content_prefix
        return (self.lead + cp + request + self.to_assistant + cp + reply
                + self.to_user[: len(self.to_user) - len(self.lead)])

    def ask(self, request: str) -> str:
        """The last user message and the opening of the assistant's answer."""
        return self.lead + self.content_prefix + request + self.tail

    def render(self, messages: list[dict]) -> str:
        """messages alternate user and assistant, from a user message to a user message."""
        roles = [m["role"] for m in messages]
        if not messages or len(messages) % 2 == 0 or \
                roles != ["user", "assistant"] * (len(messages) // 2) + ["user"]:
            raise ValueError("a conversation must alternate user and assistant messages, "
                             "starting and ending with a user message")
        pairs = (self.exchange(messages[i]["content"], messages[i + 1]["content"])
                 for i in range(0, len(messages) - 1, 2))
        return self.prefix + "".join(pairs) + self.ask(messages[-1]["content"])

    @classmethod
    def from_renderer(cls, render: Callable[[list[dict]], str], name: str) -> "ChatFormat":
        """The format of `render(messages) -> text` (a chat template with the generation prompt)."""
        marks = [_MARK.format(i) for i in range(len(_ROLES))]
        text = render([{"role": r, "content": m} for r, m in zip(_ROLES, marks)])
        pieces, rest = [], text
        for mark in marks:
            before, found, rest = rest.partition(mark)
            if not found or mark in rest:
                raise ValueError(f"chat template {name}: a message's text does not appear exactly "
                                 "once in the rendered conversation, so a chat probe cannot be "
                                 "counted with it; probe without the chat template")
            pieces.append(before)
        head, to_assistant, to_user, to_assistant2, to_user2 = pieces
        if (to_assistant, to_user) != (to_assistant2, to_user2):
            raise ValueError(f"chat template {name} renders a turn differently by its position "
                             "(e.g. a marker on the last turns only); a chat probe's length could "
                             "not be counted by prefix sums; probe without the chat template")
        lead = _trailing_space(head)
        lead = lead if to_user.endswith(lead) else ""
        return cls(name, head, to_assistant, to_user, rest, lead=lead)


def _trailing_space(text: str) -> str:
    return text[len(text.rstrip()):]


TRANSCRIPT = ChatFormat("transcript", head="User:", to_assistant="\n\nAssistant:",
                        to_user="\n\nUser:", tail="\n\nAssistant:", content_prefix=" ")
