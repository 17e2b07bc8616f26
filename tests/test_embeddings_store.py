"""The embedding store: float16 round trip, several writers, resume after reopening, shard roll-over, a torn index
line after a crash, and row-shape checks."""

from __future__ import annotations

import numpy as np
import pytest

from store.embeddings import EmbeddingStore
from store.recipe import table_name


def test_round_trip_across_writers_shards_and_reopen(tmp_path):
    rng = np.random.default_rng(0)
    store = EmbeddingStore(tmp_path, "encoder-abc")
    vectors = {f"f{i:03d}": rng.standard_normal(8).astype(np.float32) for i in range(25)}
    ids = list(vectors)
    w0 = store.writer("pooled", (8,), "r0", shard_rows=4)
    w0.append(ids[:7], np.stack([vectors[i] for i in ids[:7]]))
    w1 = store.writer("pooled", (8,), "r1", shard_rows=999)  # the table's shard size wins
    w1.append(ids[7:12], np.stack([vectors[i] for i in ids[7:12]]))
    reopened = EmbeddingStore(tmp_path, "encoder-abc").writer("pooled", (8,), "r0")
    assert (reopened.shard, reopened.row) == (1, 3)  # resumes after its 7th row
    reopened.append(ids[12:], np.stack([vectors[i] for i in ids[12:]]))
    got_ids, rows = EmbeddingStore(tmp_path, "encoder-abc").all()
    assert got_ids == sorted(ids) and rows.dtype == np.float16
    want = np.stack([vectors[i] for i in got_ids]).astype(np.float16)
    np.testing.assert_array_equal(rows, want)
    assert len(list((tmp_path / "encoder-abc" / "pooled").glob("r0-*.npy"))) == 5  # 20 rows / 4 per shard
    shard = np.load(tmp_path / "encoder-abc" / "pooled" / "r0-00000.npy", mmap_mode="r")  # plain .npy
    assert shard.shape == (4, 8)
    assert store.index_entries() == 25


def test_token_tables_and_torn_index_line(tmp_path):
    store = EmbeddingStore(tmp_path, "encoder-abc")
    grids = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    store.writer(table_name("grid", -1), (3, 4, 5)).append(["a", "b"], grids)
    store.writer(table_name("grid", 2), (3, 4, 5)).append(["a"], grids[:1] * 2)
    assert store.tables() == ["tokens", "tokens.2"]
    np.testing.assert_array_equal(store.get(["b", "a"], "tokens"), grids[::-1].astype(np.float16))
    with open(tmp_path / "encoder-abc" / "tokens" / "r0.index", "a") as f:
        f.write("c\tr0-00000.npy")  # a crash mid-append leaves a line without its newline
    assert sorted(store.index("tokens")) == ["a", "b"]
    with pytest.raises(KeyError, match="frame c"):
        store.get(["c"], "tokens")
    store.writer("tokens", (3, 4, 5)).append(["d"], grids[:1])  # the next writer cuts the torn line first
    assert sorted(store.index("tokens")) == ["a", "b", "d"] and store.index("tokens")["d"] == ("r0-00000.npy", 2)
    with pytest.raises(ValueError, match="shape"):
        store.writer("tokens", (3, 4, 6))
    with pytest.raises(ValueError, match="do not fit"):
        store.writer("tokens", (3, 4, 5)).append(["z"], np.zeros((1, 3, 4, 6)))
