"""Arm's Vela compiler for Ethos-U NPUs, in process: an int8 ``.tflite`` in, the NPU's ``.tflite`` and an
estimate out.

Vela (``pip install ethos-u-vela``) compiles the operators an Ethos-U55 / U65 / U85 supports into one
``ethos-u`` custom operator holding the NPU's command stream, leaves the rest for the microcontroller's CPU
(TFLite Micro), and estimates, without hardware, the cycles per inference from its performance model of the
accelerator and the system's memories:

    inference_ms = cycles_total / core_clock_hz * 1000

The estimate covers the NPU's work only: an operator left on the CPU costs 0 cycles in it. A graph with CPU
operators is therefore not comparable by this number, and :class:`VelaEstimate` keeps each CPU operator with
Vela's reason.

The compile goes through ``ethosu.regor.compile``, the C++ core the ``vela`` command calls, with the system
configuration text built as ``ethosu/vela/vela.py`` builds it: in a child process for bytes graphopt did not
write (a crash of the C++ on a damaged file ends the child, not the caller), in process for its own exports.
Vela's defaults pick the system configuration and memory mode when :class:`~graphopt.targets.EthosUConfig`
(a target's ``BackendSettings.ethos_u``) leaves them out.
"""

from __future__ import annotations

import configparser
import importlib.util
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from graphopt.backends import vela_worker
from graphopt.backends.vela_worker import regor_compile
from graphopt.errors import ConfigError, ExportError, first_line
from graphopt.targets import EthosUConfig

INSTALL = "pip install 'graphopt[litert]'  (brings ethos-u-vela)"
#: Vela's defaults per NPU family (architecture_features._set_default_sys_config / _set_default_mem_mode).
DEFAULT_SYSTEM = {
    "u55": "Ethos_U55_High_End_Embedded",
    "u65": "Ethos_U65_Client_Server",
    "u85": "Ethos_U85_SYS_DRAM_Mid",
}
DEFAULT_MEMORY = {"u55": "Shared_Sram", "u65": "Dedicated_Sram_384KB", "u85": "Dedicated_Sram_384KB"}
#: Operators that must run on the NPU: a conv or linear on a Cortex-M CPU is orders of magnitude slower.
MUST_RUN_ON_NPU = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")

T = TypeVar("T")
#: A compile in a child process that has not answered by then is given up (regor takes seconds).
CHILD_TIMEOUT_S = 600


def require_vela() -> None:
    """A :class:`ConfigError` naming the extra when Vela is not installed."""
    if importlib.util.find_spec("ethosu") is None:
        raise ConfigError(f"Ethos-U targets need Arm's Vela compiler: {INSTALL}")


def resolve(config: EthosUConfig) -> EthosUConfig:
    """``config`` with Vela's defaults filled in, every name checked against Vela's own lists."""
    require_vela()
    from ethosu.vela.architecture_features import Accelerator

    known = Accelerator.member_list()
    if config.accelerator not in known:
        raise ConfigError(
            f"unknown Ethos-U accelerator {config.accelerator!r}; Vela knows {', '.join(known)}"
        )
    systems, memories = _ini_sections("System_Config"), _ini_sections("Memory_Mode")
    system = config.system_config or DEFAULT_SYSTEM[config.family]
    memory = config.memory_mode or DEFAULT_MEMORY[config.family]
    for kind, name, names in (("system_config", system, systems), ("memory_mode", memory, memories)):
        if name not in names:
            raise ConfigError(f"unknown Vela {kind} {name!r}; vela.ini defines {', '.join(names)}")
    return EthosUConfig(config.accelerator, system, memory, config.optimise)


@dataclass(frozen=True)
class CpuOperator:
    """An operator Vela left on the CPU, and why (Vela's first reason)."""

    op: str
    tensor: str
    reason: str

    def __str__(self) -> str:
        return f"{self.op} ({self.reason})"


@dataclass(frozen=True)
class VelaEstimate:
    """Vela's compile of one ``.tflite`` (module docstring): an ESTIMATE, not a measurement."""

    config: EthosUConfig
    clock_hz: float
    cycles_npu: int
    cycles_total: int
    macs: int
    npu_ops: tuple[str, ...]
    cpu_ops: tuple[CpuOperator, ...]
    #: Peak use per memory, bytes, by Vela's name (``sram``, ``offchipflash``, ``dram``, ...).
    memory_bytes: dict[str, int]
    weights_encoded_bytes: int
    #: The compiled ``.tflite``: the NPU's command stream in an ``ethos-u`` custom op, CPU ops around it.
    model: bytes

    @property
    def inference_ms(self) -> float:
        return self.cycles_total / self.clock_hz * 1e3

    @property
    def all_on_npu(self) -> bool:
        return not self.cpu_ops

    def summary(self) -> str:
        """One line for a report row."""
        memory = ", ".join(
            f"{name} {size / 1024:.1f} KiB" for name, size in self.memory_bytes.items() if size
        )
        where = "every op on the NPU" if self.all_on_npu else f"CPU: {', '.join(map(str, self.cpu_ops))}"
        return (
            f"Vela {self.config.accelerator} ({self.config.system_config}, {self.config.memory_mode}): "
            f"ESTIMATED {self.inference_ms:.4f} ms, {self.cycles_total} cycles, {len(self.npu_ops)} NPU ops; "
            f"{where}; {memory}"
        )


def estimate_ms(estimate: VelaEstimate | None) -> float:
    """The estimated milliseconds per inference; ``inf`` unless every operator runs on the NPU (a CPU
    operator costs 0 cycles in Vela's number, so a graph with one would look cheaper than it is), and for no
    compile at all (``None``: an fp32 model, which no NPU runs)."""
    if estimate is None or not estimate.all_on_npu:
        return math.inf
    return estimate.inference_ms


#: Vela's ``ethos-u55-128`` with its default system configuration and memory mode.
DEFAULT_CONFIG = EthosUConfig()


def compile_for_ethos_u(
    data: bytes, config: EthosUConfig = DEFAULT_CONFIG, *, isolate: bool = True
) -> VelaEstimate:
    """Compile the int8 ``.tflite`` ``data`` with Vela for ``config`` (module docstring).

    ``isolate``: compile in a child process (:mod:`graphopt.backends.vela_worker`), so that regor crashing
    on a damaged file (SIGSEGV from C++) is an :class:`ExportError` here instead of the end of this process.
    graphopt's own exports pass ``isolate=False``: bytes it has just written with a LiteRT converter and
    checked, where the child's start (about a second) buys nothing."""
    config = resolve(config)
    from ethosu.vela import vela

    arch = _architecture(config)
    system_text, options = _system_text(arch), _compiler_options(vela, config, arch.arena_cache_size)
    accelerator = "".join(part.capitalize() for part in config.accelerator.split("-")[:-1])  # EthosU55
    compile_ = _compile_in_child if isolate else _compile_in_process
    numbers, model, log = compile_(config, accelerator, data, system_text, options)
    return VelaEstimate(
        config=config,
        clock_hz=float(arch.core_clock),
        cycles_npu=numbers["cycles_npu"],
        cycles_total=numbers["cycles_total"],
        macs=numbers["macs"],
        npu_ops=tuple(numbers["npu_ops"]),
        cpu_ops=tuple(cpu_operators(log)),
        memory_bytes=dict(numbers["memory_bytes"]),
        weights_encoded_bytes=numbers["weights_encoded_bytes"],
        model=model,
    )


def _compile_failed(config: EthosUConfig, cause: str) -> ExportError:
    return ExportError(
        f"Vela could not compile the model for {config.accelerator} ({cause}); give a complete, fully int8 "
        ".tflite (target litert-int8)"
    )


def _compile_in_process(
    config: EthosUConfig, accelerator: str, data: bytes, system_text: str, options: str
) -> tuple[dict[str, Any], bytes, str]:
    try:
        (numbers, model), log = _capturing_output(
            lambda: regor_compile(accelerator, data, system_text, options)
        )
    except Exception as exc:  # regor raises RuntimeError / ValueError from C++, its stats UnicodeDecodeError
        raise _compile_failed(config, f"{type(exc).__name__}: {first_line(exc)}") from exc
    return numbers, model, log


def _compile_in_child(
    config: EthosUConfig, accelerator: str, data: bytes, system_text: str, options: str
) -> tuple[dict[str, Any], bytes, str]:
    """:func:`regor_compile` in a child process (``vela_worker.py`` as a script; ``-P``: its folder, with
    graphopt's own modules, stays off the child's ``sys.path``)."""
    request = json.dumps({"accelerator": accelerator, "system_text": system_text, "options": options})
    with tempfile.TemporaryDirectory(prefix="graphopt-vela-child-") as scratch:
        source = Path(scratch) / "source.tflite"
        source.write_bytes(data)
        command = [sys.executable, "-P", vela_worker.__file__, str(source), scratch]
        try:
            child = subprocess.run(
                command, input=request.encode(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                timeout=CHILD_TIMEOUT_S, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise _compile_failed(config, f"no answer within {CHILD_TIMEOUT_S} s") from exc
        log = child.stdout.decode(errors="replace")
        if child.returncode < 0:
            name = signal.Signals(-child.returncode).name
            raise _compile_failed(
                config, f"Vela crashed with {name} on this file: it is damaged or not a .tflite"
            )
        result_path = Path(scratch) / "result.json"
        if not result_path.exists():
            last = log.strip().splitlines()[-1:] or [f"exit status {child.returncode}"]
            raise _compile_failed(config, f"Vela's process failed: {last[0]}")
        result = json.loads(result_path.read_text())
        if "error" in result:
            raise _compile_failed(config, f"{result['error']}: {result['message']}")
        return result, (Path(scratch) / "model.tflite").read_bytes(), log


def require_on_npu(estimate: VelaEstimate, allow_cpu: tuple[str, ...] = ()) -> None:
    """An :class:`ExportError` naming every conv / linear Vela left on the CPU, with its reason, unless
    its op is in ``allow_cpu``."""
    stuck = [op for op in estimate.cpu_ops if op.op in MUST_RUN_ON_NPU and op.op not in allow_cpu]
    if stuck:
        raise ExportError(
            f"Vela left {len(stuck)} conv / linear op(s) on the CPU of {estimate.config.accelerator}: "
            f"{'; '.join(map(str, stuck))}. Export a fully int8 model (target litert-int8) with int8 I/O"
        )


_WARNING = re.compile(r"operator: (?P<op>[A-Z0-9_]+), ofm: '(?P<tensor>.*)'")


def cpu_operators(log: str) -> list[CpuOperator]:
    """The operators of Vela's fallback log, each with its first reason. The log reads
    ``Warning (supported operators) operator: CONV_2D, ofm: '<tensor>'`` then ``Reason: <why> (<tensor>)``."""
    found: list[CpuOperator] = []
    pending: tuple[str, str] | None = None
    for line in log.splitlines():
        match = _WARNING.search(line)
        if match:
            pending = (match["op"], match["tensor"])
        elif pending is not None and line.strip().startswith("Reason:"):
            reason = line.strip().removeprefix("Reason:").strip().split(" (")[0]
            found.append(CpuOperator(pending[0], pending[1], reason))
            pending = None
    return found


def _ini_path() -> Path:
    from ethosu.vela import architecture_features

    return Path(architecture_features.CONFIG_FILES_PATH) / "Arm" / "vela.ini"


def _ini_sections(kind: str) -> list[str]:
    parser = configparser.ConfigParser()
    parser.read(_ini_path())
    return [s.split(".", 1)[1] for s in parser.sections() if s.startswith(f"{kind}.")]


def _architecture(config: EthosUConfig) -> Any:
    """Vela's ``ArchitectureFeatures`` for a resolved configuration (clock, MACs, memories)."""
    from ethosu.vela.architecture_features import ArchitectureFeatures

    return ArchitectureFeatures(
        vela_config_files=[str(_ini_path())],
        system_config=config.system_config,
        memory_mode=config.memory_mode,
        accelerator_config=config.accelerator,
        max_blockdep=3,
        verbose_config=False,
        arena_cache_size=None,
    )


def _system_text(arch: Any) -> str:
    """Vela's system configuration text, as ``vela.py`` builds it for ``regor.compile``."""
    text = f"[architecture]\nmacs={arch.num_macs_per_cycle}\ncores={arch.ncores}\n[vela]\n"
    text += f"system_config_name={arch.system_config}\nmemory_mode_name={arch.memory_mode}\n"
    return text + _ini_path().read_text()


def _compiler_options(vela: Any, config: EthosUConfig, arena_cache_size: int | None) -> str:
    """Vela's command-line defaults, with the operator database on (for NPU / CPU placement)."""
    return vela.get_compiler_config(
        enable_debug_db=False, verbose_all=False, verbose_high_level_command_stream=False,
        verbose_register_command_stream=False, optimize=config.optimise, arena_cache_size=arena_cache_size,
        verbose_schedule=False, verbose_allocation=False, verbose_graph=False, verbose_quantization=False,
        verbose_packing=False, verbose_performance=False, show_cpu_operations=True, output_format="tflite",
        disable_chaining=False, disable_fwd=False, disable_cascading=False, disable_buffering=False,
        disable_ifm_reuse=False, cop_format="COP1", separate_io_regions=False, cpu_tensor_alignment=16,
        tensor_allocator="HillClimb", softmax_int16_neg_exp_range=10.0,
    )  # fmt: skip


def _capturing_output(call: Callable[[], T]) -> tuple[T, str]:
    """``call()`` with file descriptors 1 and 2 captured: regor prints its CPU-fallback reasons (and
    nothing else a user needs) from C++."""
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as captured:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(captured.fileno(), 1)
        os.dup2(captured.fileno(), 2)
        try:
            result = call()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
        captured.seek(0)
        return result, captured.read().decode(errors="replace")
