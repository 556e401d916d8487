"""The conversation: a scrolling column of user messages, streamed assistant replies and app notes."""

from __future__ import annotations

from textual.containers import VerticalScroll

from lexico_chat.engine.types import Message
from lexico_chat.tui.widgets.assistant_message import AssistantMessage
from lexico_chat.tui.widgets.note import Note
from lexico_chat.tui.widgets.user_message import UserMessage


class ChatView(VerticalScroll):
    """Follows the bottom as text arrives (an anchor), until the user scrolls up; scrolling back re-anchors."""

    def on_mount(self) -> None:
        self.anchor()

    async def add_user(self, text: str) -> UserMessage:
        message = UserMessage(text)
        await self.mount(message)
        return message

    async def start_reply(self) -> AssistantMessage:
        """Mount an empty reply; a worker then posts ``AssistantMessage.TokenReceived`` to it."""
        reply = AssistantMessage()
        await self.mount(reply)
        return reply

    async def add_note(self, markdown: str) -> Note:
        note = Note(markdown)
        await self.mount(note)
        return note

    async def show_transcript(self, transcript: list[Message]) -> None:
        """Replace the log with ``transcript`` (after /resume, /clear, /system); system turns are not shown."""
        await self.remove_children()
        for message in transcript:
            if message.role == "user":
                await self.mount(UserMessage(message.content))
            elif message.role == "assistant":
                await self.mount(AssistantMessage(message.content, streaming=False))
        self.anchor()
