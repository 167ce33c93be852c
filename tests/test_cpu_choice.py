"""The int8 target and the ORT peer's reduce_range follow the CPU's flags."""

from __future__ import annotations

import pytest

from graphopt.benchmark.cli import default_pipelines
from graphopt.reporting.cpu import host_int8_choice, int8_choice


@pytest.mark.parametrize(
    ("arch", "flags", "target", "reduce_range"),
    [
        ("x86_64", {"avx2", "fma"}, "x86-int8", True),
        ("x86_64", {"avx2", "avx512f", "avx512_vnni"}, "x86-vnni-int8", False),
        ("x86_64", {"avx2", "avx_vnni"}, "x86-vnni-int8", False),
        ("aarch64", {"asimd", "asimddp"}, "arm-int8", False),
    ],
)
def test_int8_choice_follows_the_flags(arch, flags, target, reduce_range):
    choice = int8_choice(arch, flags)
    assert (choice.target, choice.reduce_range) == (target, reduce_range)
    assert choice.reason


def test_default_bench_pipelines_use_the_choice():
    vnni = int8_choice("x86_64", {"avx512_vnni"})
    assert default_pipelines(vnni) == ("generic-fp32", "x86-vnni-int8", "x86-vnni-int8+prune=0.5")
    assert default_pipelines(int8_choice("aarch64", set()))[0] == "arm-fp32"


def test_the_ort_peer_uses_reduce_range_exactly_where_this_cpu_needs_it(monkeypatch):
    import graphopt.benchmark.peers as peers
    from graphopt.benchmark.peer_rows import quantize_static_presets

    seen = {}
    monkeypatch.setattr(peers, "quantize_static", lambda *a, **kw: seen.update(kw))
    monkeypatch.setattr(peers, "quant_pre_process", lambda src, dst: __import__("shutil").copy(src, dst))
    import torch
    from torch import nn

    peers.ort_quantize_static(
        nn.Linear(4, 2), (torch.randn(1, 4),), [(torch.randn(1, 4),)], "/tmp/unused.onnx"
    )
    assert seen["reduce_range"] is host_int8_choice().reduce_range
    assert ("reduce_range" in quantize_static_presets()["best"]) is host_int8_choice().reduce_range
