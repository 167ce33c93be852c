"""Stats keys that one layer writes and another reads: named once, so a rename cannot silently break a
reader (the benchmark reads what export and the passes record)."""

from __future__ import annotations

ZIPPED_BYTES = "zipped_bytes"  # artifact rows: the file compressed with zlib (what sparsity saves)
EXPECTED_MACS_SHARE = "expected_macs_share"  # insert_early_exit: expected MACs per input / backbone MACs
SHIPPED_FP32 = "shipped_fp32"  # artifact rows: 1 when the latency guard shipped the fp32 model
