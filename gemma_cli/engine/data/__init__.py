"""Training data by stage: sources → render → tokenize → pack → pipeline.

- `sources`: records by index from local files (JSONL, TXT, CSV, Parquet) and tfds.
- `render`: a record → pieces of text and special tokens with loss weights (plain text,
  string templates, chat turns in Gemma's format).
- `tokenize`: pieces → token ids and per-token weights, cut to the row at turn boundaries.
- `pack`: documents → fixed-length rows with segment ids and per-document positions.
- `pipeline`: the streaming, per-host, resumable pipeline (Grain) and `build`, the one entry
  point of the trainer.

Only `sources.TfdsSource` imports TensorFlow; local files train without it.
"""

from gemma_cli.engine.data.pipeline import DataBundle, build, check_records, streams_for
from gemma_cli.engine.data.render import Renderer, chat_format_for
from gemma_cli.engine.data.tokenize import Encoder


def chat_prompt_ids(tokenizer, turns, chat=None) -> list[int]:
    """Token ids of a generation prompt for a conversation prefix (ending with a user turn):
    the pieces training renders for it, then the open model turn (`<start_of_turn>model\\n`).

    Args:
        tokenizer: keras_hub tokenizer of the model.
        turns: str (one user message) or list of (role, content).
        chat: families.ChatFormat of the model's family; Gemma's when None.
    """
    ids_per, _ = Encoder(tokenizer).pieces_of(Renderer.for_chat(chat).prompt(turns))
    return [t for ids in ids_per for t in ids]


__all__ = ["DataBundle", "Encoder", "Renderer", "build", "chat_format_for", "chat_prompt_ids", "check_records", "streams_for"]
