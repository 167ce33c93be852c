"""bench/minilm_search.py's own pieces, without the model: the machine record and the table it writes
(a search of an hour must not fail at its last line)."""

from __future__ import annotations

from bench.minilm_search import machine, markdown


def test_the_search_script_records_the_machine_and_writes_its_table():
    facts = machine()
    assert facts["cpu"] and isinstance(facts["flags"], (list, tuple))
    row = {"candidate": "prune=0.5/activation int8 [onnx]", "status": "measured", "speedup": 2.96,
           "bytes": 17_573_687, "cosine": 0.877, "goals": "met", "seconds": 1375.0,
           "chosen": True}  # fmt: skip
    result = {
        "date": "2026-12-07", "machine": facts, "command": "python bench/minilm_search.py", "goals": "g",
        "wall_s": 1.0, "returned": row["candidate"], "returned_bytes": row["bytes"],
        "lee": {"spearman": 0.55, "fp32_spearman": 0.508, "worst_cosine": 0.7, "mean_cosine": 0.85},
        "rows": [row, {**row, "status": "ruled out", "speedup": None, "bytes": None, "cosine": None,
                       "chosen": False}],
        "notes": ["search: returned it"],
    }  # fmt: skip
    text = markdown(result)
    assert (
        "| prune=0.5/activation int8 [onnx] (chosen) | measured | 2.96 | 17.6 | 0.877 | met | 1375.0 |"
        in text
    )
    assert "Lee Spearman 0.550" in text and "- search: returned it" in text
