"""The data pipeline's stages without a model: sources, order, render, tokenize, pack, streams.

No XLA compile runs here: the tokenizer is the tiny SentencePiece model of tests/tiny.py used
directly (`tok` fixture), the way the pipeline uses a keras-hub tokenizer's proto.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from tiny import CORPUS

from gemma_cli.config import DataConfig
from gemma_cli.engine.data import chat_prompt_ids, pack, pipeline, sources
from gemma_cli.engine.data.render import Renderer
from gemma_cli.engine.data.tokenize import Encoder
from gemma_cli.errors import UsageError


# ------------------------------------------------------------------------------ fixtures ---
def _tokenizer(control_markers: bool) -> Any:
    """A keras-hub-like tokenizer (its SentencePiece proto and special ids) trained here the
    way Gemma's is built: BPE, byte fallback, identity normalizer, no dummy prefix. With
    `control_markers` the turn markers are CONTROL pieces, as in the Gemma 3 270M converted
    from GGUF; else user-defined pieces, as in the official tokenizer.model."""
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    markers = ["<start_of_turn>", "<end_of_turn>"]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([c + "\n" for c in CORPUS] * 20),
        model_writer=buf,
        vocab_size=400,
        model_type="bpe",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        byte_fallback=True,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        **({"control_symbols": markers} if control_markers else {"user_defined_symbols": markers}),
        character_coverage=1.0,
        minloglevel=2,
    )
    return SimpleNamespace(proto=buf.getvalue(), start_token_id=2, end_token_id=1, pad_token_id=0)


@pytest.fixture(scope="module", params=[False, True], ids=["user-defined-markers", "control-markers"])
def tok(request) -> Any:
    return _tokenizer(request.param)


@pytest.fixture(scope="module")
def ctok() -> Any:
    return _tokenizer(True)


def data_cfg(**kw: Any) -> DataConfig:
    return DataConfig(**{"paths": ["x"], "sequence_length": 16, "batch_size": 4, **kw})


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


CHAT = {"messages": [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "what does a mesh have"},
    {"role": "assistant", "content": "a batch axis and a model axis"},
    {"role": "user", "content": "and layout rules"},
    {"role": "assistant", "content": "map variable paths to mesh axes"},
]}


# ------------------------------------------------------------------------------- sources ---
@pytest.mark.parametrize("chunk", [7, 64, 4 << 20])
def test_jsonl_index_skips_blank_lines_and_keeps_line_numbers(tmp_path, chunk):
    text, want = "", []
    for i in range(300):
        kind = i % 7
        if kind == 3:
            text += "\n"
        elif kind == 5:
            text += "  \t \r\n"
        else:
            text += json.dumps({"text": f"r{i}"}) + ("\r\n" if kind == 1 else "\n")
            want.append((text.count("\n"), f"r{i}"))
    text += json.dumps({"text": "last"})  # no newline at the end
    want.append((text.count("\n") + 1, "last"))
    p = tmp_path / "d.jsonl"
    p.write_text(text)
    offsets, _, records, n = sources._scan_lines(p, chunk)  # noqa: SLF001
    assert n == len(want) and records.tolist() == list(range(0, n, sources.SPARSE)) and len(offsets) == len(records)
    src = sources.JsonlSource(p)
    got = [src[i] for i in range(len(src))]
    assert [(w, r["text"]) for w, r in got] == [(f"{p}:{ln}", t) for ln, t in want]
    assert src[len(src) // 2] == got[len(src) // 2]  # random access after sequential


def test_index_blocks_are_bounded_in_bytes(tmp_path):
    p = write_jsonl(tmp_path / "big.jsonl", [{"text": f"r{i}", "pad": "x" * 30_000} for i in range(40)])
    offsets, lines, records, n = sources._scan_lines(p, 1 << 16)  # noqa: SLF001
    assert n == 40 and len(records) > 40 // sources.SPARSE + 10  # a block every ~2 records
    assert all(b - a <= sources.BLOCK_BYTES + 30_100 for a, b in zip(offsets, offsets[1:], strict=False))
    src = sources.JsonlSource(p)
    assert [src[i][1]["text"] for i in (39, 0, 17)] == ["r39", "r0", "r17"]
    assert src[17][0] == f"{p}:18"


def test_bad_json_line_names_file_and_line(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}] * 40 + ['{"text": "broken'] + [{"text": "b"}] * 40)
    src = sources.JsonlSource(p)
    assert len(src) == 81
    with pytest.raises(UsageError, match=rf"{p}:41: not valid JSON"):
        src[40]
    write_jsonl(p, [[1, 2]])
    with pytest.raises(UsageError, match=rf"{p}:1: expected a JSON object per line, got list"):
        sources.JsonlSource(p)[0]


def test_txt_csv_parquet_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.txt").write_text("one\n\ntwo\n")
    (tmp_path / "b.csv").write_text('text,label\n"multi\nline",1\nplain,0\n')
    pq.write_table(pa.table({"text": [f"p{i}" for i in range(10)], "n": list(range(10))}), tmp_path / "c.parquet", row_group_size=3)
    src = sources.open_local([str(tmp_path / "*")], None, "data.paths", block=4)
    assert len(src) == 2 + 2 + 10 and not src.random_access
    texts = [src[i][1]["text"] for i in range(len(src))]
    assert texts == ["one", "two", "multi\nline", "plain"] + [f"p{i}" for i in range(10)]
    assert src[3][0] == f"{tmp_path / 'b.csv'}:4" and src[13][0] == f"{tmp_path / 'c.parquet'}:row 10"
    assert src[12][1] == {"text": "p8", "n": 8}  # a later block after an earlier one: reread


def test_unknown_extension_and_empty_file(tmp_path):
    (tmp_path / "x.dat").write_text("a\n")
    with pytest.raises(UsageError, match="cannot tell the format"):
        sources.open_local([str(tmp_path / "x.dat")], None, "data.paths", 4)
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(UsageError, match="e.jsonl: no records"):
        sources.open_local([str(tmp_path / "e.jsonl")], None, "data.paths", 4)


# --------------------------------------------------------------------------------- order ---
@pytest.mark.parametrize("window", [None, 4])
def test_order_is_a_seeded_permutation_per_epoch(window):
    n = 10
    o = pipeline.Order(n, seed=3, window=window)
    epochs = [[o(e * n + i) for i in range(n)] for e in range(3)]
    for e in epochs:
        assert sorted(e) == list(range(n))
    assert epochs[0] != epochs[1]  # reshuffled each epoch
    assert epochs == [[pipeline.Order(n, seed=3, window=window)(e * n + i) for i in range(n)] for e in range(3)]
    assert epochs[0] != [pipeline.Order(n, seed=4, window=window)(i) for i in range(n)]
    if window:  # shuffled only inside windows [0,4), [4,8), [8,10)
        assert all(i // 4 == o(i) // 4 for i in range(n))
    assert [pipeline.Order(n, 3, shuffle=False)(i) for i in range(n)] == list(range(n))


# -------------------------------------------------------------------------------- render ---
def weighted_text(enc: Encoder, doc: Any) -> str:
    """The tokens that carry the loss, decoded (special pieces as their names)."""
    ids = [int(t) for t, w in zip(doc.ids[1:], doc.weights[1:], strict=True) if w > 0]
    return "".join(enc._sp.id_to_piece(t) if enc._sp.is_control(t) else enc.decode([t]) for t in ids)  # noqa: SLF001


def test_chat_renders_gemma_turns_from_special_ids(tok):
    enc = Encoder(tok)
    r = Renderer(data_cfg(format="chat"))
    doc = enc.doc(r("d.jsonl:1", CHAT), 1000)
    sot, eot = enc.special("<start_of_turn>"), enc.special("<end_of_turn>")
    ids = doc.ids.tolist()
    assert ids[0] == 2 and ids.count(sot) == 4 and ids.count(eot) == 4
    # the exact format, system folded into the first user turn
    pieces = [("<start_of_turn>" if t == sot else "<end_of_turn>" if t == eot else enc.decode([t])) for t in ids[1:]]
    assert "".join(pieces) == (
        "<start_of_turn>user\nbe brief\n\nwhat does a mesh have<end_of_turn>\n"
        "<start_of_turn>model\na batch axis and a model axis<end_of_turn>\n"
        "<start_of_turn>user\nand layout rules<end_of_turn>\n"
        "<start_of_turn>model\nmap variable paths to mesh axes<end_of_turn>\n"
    )
    # loss only on the answers and their <end_of_turn>
    assert weighted_text(enc, doc) == "a batch axis and a model axis<end_of_turn>map variable paths to mesh axes<end_of_turn>"
    # loss_on: all weighs every predicted token
    doc_all = enc.doc(Renderer(data_cfg(format="chat", loss_on="all"))("d:1", CHAT), 1000)
    assert doc_all.weights[1:].min() == 1.0 and doc_all.ids.tolist() == ids


def test_marker_text_is_not_the_marker_id_in_a_control_vocabulary(ctok):
    enc = Encoder(ctok)
    sot = enc.special("<start_of_turn>")
    as_text = enc.encode(["<start_of_turn>"])[0]
    assert as_text != [sot] and len(as_text) > 1  # what a string template would have trained on


def test_sharegpt_and_pairs_render_like_messages(tok):
    enc = Encoder(tok)
    msgs = {"messages": [{"role": "user", "content": "hi"}, {"role": "model", "content": "hello there"}]}
    share = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello there"}]}
    pair = {"prompt": "hi", "completion": "hello there"}
    docs = [enc.doc(Renderer(data_cfg())("d:1", rec), 100) for rec in (msgs, share, pair)]  # chat chosen automatically
    assert docs[0].ids.tolist() == docs[1].ids.tolist() == docs[2].ids.tolist()
    assert docs[0].weights.tolist() == docs[1].weights.tolist() == docs[2].weights.tolist()


def test_text_content_parts_render_like_strings(tok):
    """`content` as OpenAI / transformers parts: the text parts joined, as transformers' own
    Gemma chat template joins them."""
    enc = Encoder(tok)
    plain = {"messages": [{"role": "user", "content": "what does inspect show"}, {"role": "assistant", "content": "the layout"}]}
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "what does "}, {"type": "text", "text": "inspect show"}]},
                          {"role": "assistant", "content": [{"type": "text", "text": "the layout"}]}]}
    a, b = (enc.doc(Renderer(data_cfg(format="chat"))("d:1", rec), 100) for rec in (plain, parts))
    assert a.ids.tolist() == b.ids.tolist() and a.weights.tolist() == b.weights.tolist()


def test_generate_prompt_is_the_training_prefix(tok):
    enc = Encoder(tok)
    doc = enc.doc(Renderer(data_cfg(format="chat"))("d:1", CHAT), 1000)
    turns = [(t["role"], t["content"]) for t in CHAT["messages"]]
    for upto in (2, 4):  # before the first and before the second answer
        prompt = chat_prompt_ids(tok, turns[:upto])
        assert doc.ids[: len(prompt)].tolist() == prompt
        # the next training token is the first of the answer, the first with loss weight
        assert doc.weights[len(prompt)] == 1.0 and doc.weights[len(prompt) - 1] == 0.0


def test_template_with_response_field_masks_the_prompt(tok):
    enc = Encoder(tok)
    cfg = data_cfg(template="Instruction: {q}\nResponse: {a}", response_field="a")
    doc = enc.doc(Renderer(cfg)("d:1", {"q": "what does inspect show", "a": "the layout rules"}), 100)
    assert weighted_text(enc, doc) == "the layout rules" + enc._sp.id_to_piece(1)  # noqa: SLF001 — and <eos>
    plain = enc.doc(Renderer(data_cfg(template="Instruction: {q}\nResponse: {a}"))("d:1", {"q": "x", "a": "y"}), 100)
    assert plain.weights[1:].min() == 1.0


@pytest.mark.parametrize(
    "record, words",
    [
        ({"messages": "hi"}, ["`messages` must be a list of turns, got str"]),
        ({"messages": [{"role": "robot", "content": "x"}]}, ["unknown role 'robot'", "system, user, assistant"]),
        ({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "a"}]}, ["empty 'content'"]),
        ({"messages": [{"role": "user", "content": "q"}]}, ["no assistant turn"]),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q"}]}, ["turn 1 is a user turn where an assistant turn was expected"]),
        ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}, ["a `conversations` record among `messages` records (mixed formats)"]),
        ({"text": "plain"}, ["expected a chat record", "fields there: ['text']"]),
        ({"conversations": [{"from": "bot", "value": "q"}]}, ["mixed formats"]),
        ({"messages": [{"role": "user", "content": [{"type": "image", "url": "x.png"}, {"type": "text", "text": "q"}]},
                       {"role": "assistant", "content": "a"}]}, ["`messages`[0]: 'content'[0]: an image part", "text-only model"]),
        ({"messages": [{"role": "user", "content": {"text": "q"}}, {"role": "assistant", "content": "a"}]},
         ["'content' must be a string (or a list of", "got dict"]),
        ({"messages": [{"role": "user", "content": []}, {"role": "assistant", "content": "a"}]}, ["`messages`[0]: empty 'content'"]),
    ],
    ids=["not-a-list", "unknown-role", "empty-content", "no-answer", "not-alternating", "mixed", "not-chat", "mixed-2",
         "image-part", "content-dict", "no-parts"],
)
def test_bad_chat_records_name_file_line_and_what_was_expected(record, words):
    r = Renderer(data_cfg(format="chat"))
    r.decide("d.jsonl:1", CHAT)
    with pytest.raises(UsageError) as e:
        r("d.jsonl:7", record)
    msg = str(e.value)
    assert msg.startswith("d.jsonl:7: "), msg
    for w in words:
        assert w in msg, (w, msg)


def test_long_conversations_are_cut_at_turn_boundaries(tok):
    enc = Encoder(tok)
    r = Renderer(data_cfg(format="chat"))
    full = enc.doc(r("d:1", CHAT), 1000)
    first_answer_end = full.ids.tolist().index(enc.special("<end_of_turn>"), full.ids.tolist().index(enc.special("<end_of_turn>")) + 1) + 2
    cut = enc.doc(r("d:1", CHAT), first_answer_end + 3)  # room for one exchange and a bit
    assert cut.ids.tolist() == full.ids[:first_answer_end].tolist()
    assert cut.cut_turns == 2 and cut.cut_tokens == len(full.ids) - first_answer_end
    hard = enc.doc(r("d:1", CHAT), 6)  # not even the first answer fits: cut at the row
    assert len(hard.ids) == 6 and hard.cut_turns == 0 and hard.cut_tokens == len(full.ids) - 6


# ---------------------------------------------------------------------------------- pack ---
def _docs(lengths: list[int]) -> list[Any]:
    from gemma_cli.engine.data.tokenize import Doc

    out = []
    for i, n in enumerate(lengths):
        ids = np.arange(100 * i + 1, 100 * i + 1 + n, dtype=np.int32)
        w = np.ones(n, np.float32)
        w[: n // 2] = 0
        out.append(Doc(ids, w, f"d:{i}", index=i))
    return out


def test_packed_rows_keep_documents_apart():
    docs = _docs([5, 4, 7, 3, 9, 2])
    rows = list(pack.rows(docs, 10, 0, packing=True))
    # next-fit over 4,3,6,2,8,1 positions in rows of 10: [4+3] [6+2] [8+1], whole and in order
    seg = [r.arrays["segment_ids"].tolist() for r in rows]
    assert seg[0] == [1, 1, 1, 1, 2, 2, 2, 0, 0, 0]
    assert seg[1] == [1, 1, 1, 1, 1, 1, 2, 2, 0, 0]
    r0 = rows[0].arrays
    assert r0["positions"].tolist() == [0, 1, 2, 3, 0, 1, 2, 0, 0, 0]
    assert r0["token_ids"].tolist()[:7] == [1, 2, 3, 4, 101, 102, 103]
    assert r0["labels"].tolist()[:7] == [2, 3, 4, 5, 102, 103, 104]  # never the next document's token
    assert r0["weights"].tolist() == [0, 1, 1, 1, 0, 1, 1, 0, 0, 0]  # w[1:] of each document
    assert len(rows) == 3 and [r.next_index for r in rows[:-1]] == [2, 4]
    # resuming at a row's next_index gives exactly the rows after it
    for k, r in enumerate(rows[:-1]):
        again = list(pack.rows(docs[r.next_index :], 10, 0, packing=True))
        assert [a.arrays["token_ids"].tolist() for a in again] == [b.arrays["token_ids"].tolist() for b in rows[k + 1 :]]


def test_unpacked_rows_one_document_each():
    rows = list(pack.rows(_docs([5, 11]), 10, 0, packing=False))
    assert [r.arrays["segment_ids"].tolist() for r in rows] == [[1] * 4 + [0] * 6, [1] * 10]
    x, y, sw = pack.model_batch(pack.stack(rows), segment_ids=False)
    assert x["padding_mask"].dtype == np.int32 and x["padding_mask"].max() == 1
    assert y.shape == sw.shape == (2, 10)


# ----------------------------------------------------------------------------- pipeline ---
def _corpus(tmp: Path, n: int = 60) -> Path:
    return write_jsonl(tmp / "c.jsonl", [{"text": CORPUS[i % len(CORPUS)] + f" {i}"} for i in range(n)])


def _take(bundle: Any, n: int) -> list[list[list[int]]]:
    it = iter(bundle.train)
    return [next(it)[0]["token_ids"].tolist() for _ in range(n)]


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_stream_is_deterministic_resumable_and_split_by_stream(tmp_path, ctok, packing):
    cfg = data_cfg(paths=[str(_corpus(tmp_path))], packing=packing, sequence_length=24, workers=2)
    build = lambda **kw: pipeline.build(cfg, ctok, seed=5, streams=kw.pop("streams", (0, 2, 2)), **kw)  # noqa: E731
    a = build()
    ref = _take(a, 12)  # more than an epoch (60 records / 4 per batch unpacked)
    assert ref == _take(build(), 12)  # same seed, same batches
    assert ref != _take(pipeline.build(cfg, ctok, seed=6, streams=(0, 2, 2)), 12)
    # resume: the state after step 5 gives exactly batches 6..
    state = json.loads(json.dumps(a.state(5)))  # as it travels through state.json
    assert state["positions"] == ([10, 10] if not packing else state["positions"]) and len(state["positions"]) == 2
    assert _take(build(start_step=5, resume=state), 7) == ref[5:]
    # two processes, one stream each, give the rows of the one-process batches
    p0, p1 = iter(build(streams=(0, 1, 2)).train), iter(build(streams=(1, 2, 2)).train)
    for want in ref[:6]:
        assert next(p0)[0]["token_ids"].tolist() + next(p1)[0]["token_ids"].tolist() == want
    c = a.counters(5)
    assert c["sequences"] == 20 and c["tokens_trained"] <= c["tokens_total"]
    if not packing:
        assert c["records"] == 20 and a.info.steps_per_epoch == 15 and a.info.exact


def test_every_record_is_checked_before_training(tmp_path, ctok):
    p = write_jsonl(tmp_path / "c.jsonl", [{"text": "a b"}] * 50 + [{"body": "x"}] + [{"text": "c"}] * 10)
    with pytest.raises(UsageError, match=rf"data.field: 'text' is not in the record at {p}:51"):
        pipeline.build(data_cfg(paths=[str(p)]), ctok, seed=0)


def test_chat_batches_weigh_only_answers(tmp_path, ctok):
    p = write_jsonl(tmp_path / "chat.jsonl", [CHAT] * 8)
    b = pipeline.build(data_cfg(paths=[str(p)], sequence_length=128), ctok, seed=0)
    assert b.info.kind == "chat"
    enc = Encoder(ctok)
    x, y, sw = next(iter(b.train))
    for row in range(4):
        trained = [int(t) for t, w in zip(y[row], sw[row], strict=True) if w > 0]
        text = "".join("<end_of_turn>" if t == enc.special("<end_of_turn>") else enc.decode([t]) for t in trained)
        assert text == "a batch axis and a model axis<end_of_turn>map variable paths to mesh axes<end_of_turn>"
