"""Lift a ``torch.export`` program into graphopt's module-level IR.

torch.export captures what symbolic tracing cannot (input checks that raise, Hugging Face transformers,
detectors), but its graph is ATen-level: parameters are graph inputs and layers are functions
(``aten.conv2d(x, p_stem_0_weight, ...)``). Every pass of graphopt edits modules, so the lifter rebuilds
the graph node by node (:mod:`graphopt.frontend.lift_rules` holds the tables):

- user inputs stay placeholders, with the forward signature's names;
- an op with a parameter weight becomes a ``call_module`` of a real ``nn`` layer named after that weight's
  owner (``encoder.layer.0.output.dense``); a layer called at several sites keeps one module;
- parameters, buffers and constants read by other ops become ``get_attr`` of tensors registered at their
  qualified names;
- an activation or pooling op that is all a parameterless leaf module did (``nn.ReLU`` at ``stem.2``)
  becomes that module again, under that name;
- ops with a torch-level twin become that call; the rest stay ATen calls;
- the output keeps the model's structure (dicts, Hugging Face ``ModelOutput``) through the exported output
  spec, so the optimized model returns what the original returned.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.fx.graph import _PyTreeCodeGen, _PyTreeInfo

from graphopt.frontend.lift_rules import (
    DROPPED,
    FUNCTION_RULES,
    KEYWORDS_MATCH,
    LAYER_RULES,
    METHOD_RULES,
    MODULE_RULES,
    SPECIAL_RULES,
    LayerRule,
)


class _Lifter:
    def __init__(self, program: torch.export.ExportedProgram):
        self.program = program
        signature = program.graph_signature
        self.tensor_of: dict[str, str] = {
            **signature.inputs_to_parameters,
            **signature.inputs_to_buffers,
            **signature.inputs_to_lifted_tensor_constants,
        }
        self.parameters = set(signature.inputs_to_parameters)
        self.user_inputs = list(signature.user_inputs)
        self.root = nn.Module()
        self.graph = fx.Graph()
        self.env: dict[fx.Node, Any] = {}
        self.layers: dict[str, tuple[Any, tuple[Any, ...]]] = {}  # layer name -> (op, literal arguments)
        self.scopes = _leaf_scopes(program)

    # -- tensors of the program --------------------------------------------------------------------------
    def tensor(self, placeholder: str) -> torch.Tensor:
        name = self.tensor_of[placeholder]
        if name in self.program.state_dict:
            return self.program.state_dict[name]
        return self.program.constants[name]

    def get_attr(self, placeholder: str) -> fx.Node:
        """A ``get_attr`` of a program tensor, registered on the root at its qualified name once."""
        name = self.tensor_of[placeholder]
        owner, _, leaf = name.rpartition(".")
        module = _ensure_path(self.root, owner)
        if not hasattr(module, leaf):
            value = self.tensor(placeholder)
            if placeholder in self.parameters:
                module.register_parameter(leaf, nn.Parameter(value.detach(), value.requires_grad))
            else:
                module.register_buffer(leaf, value)
        return self.graph.get_attr(name)

    # -- nodes -------------------------------------------------------------------------------------------
    def lift(self) -> fx.GraphModule:
        for node in self.program.graph.nodes:
            if node.op == "placeholder":
                if node.name in self.tensor_of:
                    continue  # a tensor: lifted where it is read
                self.env[node] = self.graph.placeholder(node.name)
            elif node.op == "output":
                self.output(self.user_outputs(node))
            elif node.target in DROPPED:
                continue
            else:
                self.env[node] = self.call(node)
        gm = fx.GraphModule(self.root, self.graph, class_name="Lifted")
        return gm.eval()

    def output(self, values: tuple[Any, ...]) -> None:
        """A tensor or a tuple of tensors is returned as it is (what passes read at the output node); any
        other structure (a dict, a ``ModelOutput``) is rebuilt from the exported output spec by codegen."""
        spec = self.program.call_spec
        if spec.out_spec.is_leaf():
            self.graph.output(values[0])
        elif spec.out_spec.type in (tuple, list) and all(c.is_leaf() for c in spec.out_spec.children_specs):
            self.graph.output(tuple(values))
        else:
            self.graph.output(values)
            info = _PyTreeInfo(list(self.user_inputs), spec.in_spec, spec.out_spec)
            self.graph._codegen = _PyTreeCodeGen(info)

    def user_outputs(self, node: fx.Node) -> tuple[Any, ...]:
        """The outputs the caller sees (the program also outputs mutated buffers: not ours in eval)."""
        specs = self.program.graph_signature.output_specs
        user = torch.export.graph_signature.OutputKind.USER_OUTPUT
        return tuple(self.value(a) for a, s in zip(node.args[0], specs, strict=True) if s.kind == user)

    def value(self, arg: Any) -> Any:
        """``arg`` in the new graph: a lifted node, a get_attr of a program tensor, or a literal."""
        if isinstance(arg, fx.Node):
            if arg.op == "placeholder" and arg.name in self.tensor_of:
                return self.get_attr(arg.name)
            return self.env[arg]
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.value(a) for a in arg)
        if isinstance(arg, dict):
            return {k: self.value(v) for k, v in arg.items()}
        return arg

    def call(self, node: fx.Node) -> fx.Node:
        layer = self.layer_call(node) or self.module_call(node)
        if layer is not None:
            return layer
        args, kwargs = self.value(node.args), self.value(node.kwargs)
        if node.target in SPECIAL_RULES:
            function, args, extra = SPECIAL_RULES[node.target](args)
            return self.graph.call_function(function, args, {**kwargs, **extra})
        if node.target in FUNCTION_RULES and (not kwargs or node.target in KEYWORDS_MATCH):
            return self.graph.call_function(FUNCTION_RULES[node.target], args, kwargs)
        if node.target in METHOD_RULES and not kwargs:
            return self.graph.call_method(METHOD_RULES[node.target], args)
        return self.graph.call_function(node.target, args, kwargs)

    def layer_call(self, node: fx.Node) -> fx.Node | None:
        rule = LAYER_RULES.get(node.target)
        if rule is None or node.kwargs or not self._owns(node, rule):
            return None
        weight = node.args[rule.weight]
        name = self.tensor_of[weight.name].rpartition(".")[0]
        literals = tuple(a for a in node.args if not isinstance(a, fx.Node))
        if name in self.layers:  # called again: the same layer if the same op and settings, else functional
            if self.layers[name] != (node.target, literals):
                return None
        else:
            module = self._build(node, rule)
            if module is None or not name or _exists(self.root, name):
                return None
            _set_path(self.root, name, module)
            self.layers[name] = (node.target, literals)
        return self.graph.call_module(name, (self.value(node.args[rule.data]),))

    def module_call(self, node: fx.Node) -> fx.Node | None:
        """A parameterless leaf module of the user's model (:data:`MODULE_RULES`), rebuilt under its name."""
        name = self.scopes.get(node)
        if name is None or node.target not in MODULE_RULES or node.kwargs:
            return None
        literals = (node.target, tuple(a for a in node.args[1:]))
        if name in self.layers:
            if self.layers[name] != literals:
                return None
        else:
            if _exists(self.root, name):
                return None
            _set_path(self.root, name, MODULE_RULES[node.target](node.args))
            self.layers[name] = literals
        return self.graph.call_module(name, (self.value(node.args[0]),))

    def _owns(self, node: fx.Node, rule: LayerRule) -> bool:
        """The weight is a parameter, and the bias and the owned statistics are program tensors or absent."""
        weight = node.args[rule.weight] if len(node.args) > rule.weight else None
        if not (isinstance(weight, fx.Node) and weight.name in self.parameters):
            return False
        for index in (rule.bias, *rule.owned):
            value = node.args[index] if index is not None and len(node.args) > index else None
            if value is not None and not (isinstance(value, fx.Node) and value.name in self.tensor_of):
                return False
        return True

    def _build(self, node: fx.Node, rule: LayerRule) -> nn.Module | None:
        args = tuple(
            self.tensor(a.name) if isinstance(a, fx.Node) and a.name in self.tensor_of else a
            for a in node.args
        )
        bias = args[rule.bias] if rule.bias is not None and len(args) > rule.bias else None
        return rule.build(args, args[rule.weight], bias)


def _leaf_scopes(program: torch.export.ExportedProgram) -> dict[fx.Node, str]:
    """The module each op ran in, for ops whose module ran nothing else and holds no other module or
    parameter (a leaf such as ``nn.ReLU``): op -> that module's qualified name."""
    scope: dict[fx.Node, str] = {}
    ops_in: dict[str, set[Any]] = {}
    for node in program.graph.nodes:
        stack = node.meta.get("nn_module_stack") if node.op == "call_function" else None
        if stack:
            path = list(stack.values())[-1][0]
            scope[node] = path
            ops_in.setdefault(path, set()).add(node.target)
    owners = {*program.state_dict, *program.constants, *ops_in}
    # Every proper prefix of a tensor's or an op's module path is a container (a tensor's owner included).
    containers = {name.rsplit(".", depth)[0] for name in owners for depth in range(1, name.count(".") + 1)}
    return {
        node: path for node, path in scope.items()
        if path and path not in containers and len(ops_in[path]) == 1
    }  # fmt: skip


def _ensure_path(root: nn.Module, path: str) -> nn.Module:
    module = root
    for part in path.split(".") if path else []:
        if not hasattr(module, part):
            module.add_module(part, nn.Module())
        module = getattr(module, part)
    return module


def _exists(root: nn.Module, path: str) -> bool:
    try:
        root.get_submodule(path)
        return True
    except AttributeError:
        return False


def _set_path(root: nn.Module, path: str, module: nn.Module) -> None:
    owner, _, leaf = path.rpartition(".")
    _ensure_path(root, owner).add_module(leaf, module)


def lift(program: torch.export.ExportedProgram) -> fx.GraphModule:
    """The module-level GraphModule of ``program`` (see the module docstring)."""
    return _Lifter(program).lift()
