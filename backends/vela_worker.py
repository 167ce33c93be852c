"""One Vela compile (``ethosu.regor.compile``), in this process or as a child process's whole job.

:mod:`graphopt.backends.vela` calls :func:`regor_compile` directly for the ``.tflite`` graphopt just wrote
and checked, and runs this file as a script (``python -P vela_worker.py IN OUT``) for any other bytes:
regor is C++ and a damaged flatbuffer can crash it with a signal (SIGSEGV), which no ``try`` catches. In a
child the crash ends the child only, and the parent turns its exit status into an ``ExportError``.

The script imports nothing of graphopt (only ``ethosu``), so the child starts in well under a second:

    stdin   JSON {"accelerator", "system_text", "options"}
    IN      the .tflite bytes
    OUT     a folder: ``result.json`` (the numbers, or {"error": ...}) and ``model.tflite`` (Vela's output)
    stdout  regor's own printing (its CPU-fallback reasons), stderr folded in by the parent
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

#: The exit status of a child whose compile raised a Python exception (the reason is in result.json).
COMPILE_FAILED = 3


def regor_compile(
    accelerator: str, data: bytes, system_text: str, options: str
) -> tuple[dict[str, Any], bytes]:
    """Vela's compile of ``data``: its numbers (JSON-ready) and its output model's bytes."""
    from ethosu import regor
    from ethosu.vela import vela

    compiled = regor.compile(accelerator, data, "TFLITE", system_text, options=options, verbose=True)
    report = compiled.perf_report
    _cpu_lines, npu_lines = vela.stats_writer.regor_operations_from_database(compiled.opt_database)
    numbers = {
        "cycles_npu": int(report.npuCycles),
        "cycles_total": int(report.totalCycles),
        "macs": int(report.macCount),
        "npu_ops": [line.split(" = ")[0] for line in npu_lines],
        "memory_bytes": {str(k).lower(): int(v.peakUsage) for k, v in report.memories.items()},
        "weights_encoded_bytes": int(report.encodedWeights),
    }
    return numbers, bytes(compiled.model)


def main(argv: list[str]) -> int:
    source, out = Path(argv[1]), Path(argv[2])
    request = json.load(sys.stdin)
    try:
        numbers, model = regor_compile(
            request["accelerator"], source.read_bytes(), request["system_text"], request["options"]
        )
    except Exception as exc:  # regor raises RuntimeError / ValueError, its stats parser UnicodeDecodeError
        text = str(exc).strip()
        reason = {"error": type(exc).__name__, "message": text.splitlines()[0] if text else ""}
        (out / "result.json").write_text(json.dumps(reason))
        return COMPILE_FAILED
    sys.stdout.flush()
    (out / "model.tflite").write_bytes(model)
    (out / "result.json").write_text(json.dumps(numbers))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
