"""`score_chunks`: a merged `@serve.batch` call that fails is re-scored chunk by chunk, so
only the chunk with the bad item fails (no Serve needed)."""

from __future__ import annotations

from fgrlhf_ray.serve.deployments import _ChunkFailure, _count_items, chunked, score_chunks


def lengths(items):
    if any(r == "boom" for _, r in items):
        raise ValueError("cannot score 'boom'")
    return [len(r) for _, r in items]


def test_merged_call_results_are_split_back_per_chunk():
    calls = []

    def score(items):
        calls.append(len(items))
        return lengths(items)

    chunks = [[("q", "a")], [("q", "bb"), ("q", "ccc")], [("q", "dddd")]]
    assert score_chunks(score, chunks) == [[1], [2, 3], [4]]
    assert calls == [4]  # one model call for the whole batch


def test_a_failing_chunk_fails_alone():
    chunks = [[("q", "a")], [("q", "boom"), ("q", "x")], [("q", "dddd")]]
    out = score_chunks(lengths, chunks)
    assert out[0] == [1] and out[2] == [4]
    assert isinstance(out[1], _ChunkFailure) and out[1].message == "ValueError: cannot score 'boom'"
    single = score_chunks(lengths, [[("q", "boom")]])
    assert len(single) == 1 and isinstance(single[0], _ChunkFailure)


def test_chunking_and_batch_size_count_items():
    assert chunked(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert chunked([], 3) == []
    assert _count_items([[1, 2], [3], [4, 5, 6]]) == 6
