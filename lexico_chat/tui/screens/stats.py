"""The /stats screen: session totals and a per-layer breakdown of the KV cache's memory."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from lexico_chat.engine.types import SessionStats
from lexico_chat.memory import LayerMemory
from lexico_chat.tui.format import human_bytes, memory_text, model_text, ratio_text

COLUMNS = ("Layer", "Compressed", "Buffer", "KV total", "fp16", "% of fp16", "Tok compressed", "Tok buffer")


def _row(label: str, compressed: int, buffer: int, fp16: int, tok_compressed: int, tok_buffer: int) -> tuple:
    kv = compressed + buffer
    share = f"{kv / fp16:.1%}" if fp16 else "—"
    sizes = (human_bytes(compressed), human_bytes(buffer), human_bytes(kv), human_bytes(fp16))
    return (label, *sizes, share, f"{tok_compressed:,}", f"{tok_buffer:,}")


def layer_row(layer: LayerMemory) -> tuple:
    return _row(
        str(layer.layer), layer.compressed_bytes, layer.buffer_bytes, layer.fp16_bytes, layer.compressed_tokens,
        layer.buffer_tokens,
    )  # fmt: skip


def summary_text(stats: SessionStats) -> str:
    return "\n".join(
        [
            model_text(stats),
            f"KV cache {human_bytes(stats.kv_bytes)} (fp16 {human_bytes(stats.fp16_bytes)}): {ratio_text(stats)}",
            f"compressed {human_bytes(stats.compressed_bytes)} · buffer {human_bytes(stats.buffer_bytes)}"
            f" · dictionary {human_bytes(stats.dictionary_bytes)}",
            f"context {stats.context_tokens:,} / {stats.max_positions:,} tokens"
            f" · {stats.tokens_compressed:,} compressed + {stats.tokens_buffer:,} in buffer",
            f"{memory_text(stats)} · torch allocated {human_bytes(stats.torch_allocated_bytes)}",
        ]
    )


class StatsScreen(ModalScreen[None]):
    """Figures of one ``engine.stats()`` call; Esc or q closes."""

    BINDINGS = [Binding("escape,q", "dismiss", "Close")]

    def __init__(self, stats: SessionStats) -> None:
        super().__init__()
        self.stats = stats

    def compose(self) -> ComposeResult:
        with Vertical(id="stats-panel") as panel:
            panel.border_title = "KV cache memory"
            panel.border_subtitle = "esc close"
            yield Static(summary_text(self.stats), id="stats-summary", markup=False)
            yield DataTable(id="stats-table", zebra_stripes=True, cursor_type="row")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns(*COLUMNS)
        table.add_rows(layer_row(layer) for layer in self.stats.layers)
        s = self.stats
        total = _row("all", s.compressed_bytes, s.buffer_bytes, s.fp16_bytes, s.tokens_compressed, s.tokens_buffer)
        table.add_row(*total, key="total")
        table.focus()
