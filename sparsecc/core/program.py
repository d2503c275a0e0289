"""Editing an `ExportedProgram` as a whole: graph, signature, state and constants.

Passes never mutate the program they are given. They open a `ProgramEditor`,
which copies the graph (node metadata shallow-copied, tensors shared, so a
copy costs graph size, not weight size), edit it, and call `finish()` to get a
new, validated `ExportedProgram` whose signature follows the graph.

`save_program` / `load_program` keep sparsecc's node metadata across
`torch.export.save`, which drops custom metadata on placeholders.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import os
import re
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.fx
from torch.export import ExportedProgram
from torch.export.graph_signature import (
    ExportGraphSignature,
    InputKind,
    InputSpec,
    TensorArgument,
)

from sparsecc.core.ir import MaskSpec, get_node_info, set_node_info
from sparsecc.errors import SparseccError

__all__ = [
    "ProgramEditor",
    "tensor_leaves",
    "placeholders_by_target",
    "input_spec_of",
    "constant_target",
    "constant_of",
    "state_tensor",
    "save_program",
    "load_program",
    "import_container_types",
    "PROGRAM_META_FILE",
    "ProgramFileError",
]

PROGRAM_META_FILE = "sparsecc.json"


class ProgramFileError(SparseccError, ValueError):
    """A ``.pt2`` file that cannot be loaded; the message names the file."""
_STATE_KINDS = (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)


def tensor_leaves(value: Any) -> list[torch.Tensor]:
    """The tensors of a model output (tuple, dict, ModelOutput...) in pytree order."""
    return [t for t in torch.utils._pytree.tree_leaves(value) if isinstance(t, torch.Tensor)]


def placeholders_by_target(program: ExportedProgram) -> dict[str, torch.fx.Node]:
    """Map each lifted parameter / buffer / constant FQN to its placeholder node."""
    by_name = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    out: dict[str, torch.fx.Node] = {}
    for spec in program.graph_signature.input_specs:
        if spec.kind in _STATE_KINDS and spec.target is not None:
            out[spec.target] = by_name[spec.arg.name]
    return out


def input_spec_of(program: ExportedProgram, node: torch.fx.Node) -> InputSpec | None:
    for spec in program.graph_signature.input_specs:
        if getattr(spec.arg, "name", None) == node.name:
            return spec
    return None


def constant_target(program: ExportedProgram, node: Any) -> str | None:
    """The parameter / buffer / constant FQN a placeholder node lifts, else None (a user input, a computed value)."""
    if not isinstance(node, torch.fx.Node) or node.op != "placeholder":
        return None
    spec = input_spec_of(program, node)
    return spec.target if spec is not None else None


def constant_of(program: ExportedProgram, node: Any) -> torch.Tensor | None:
    """The tensor behind a placeholder node that lifts a parameter, buffer or constant, else None."""
    target = constant_target(program, node)
    if target is None:
        return None
    return program.state_dict.get(target, program.constants.get(target))


def state_tensor(program: ExportedProgram, target: str) -> torch.Tensor:
    """The tensor behind a lifted parameter, buffer or constant."""
    if target in program.state_dict:
        return program.state_dict[target]
    if target in program.constants:
        return program.constants[target]
    raise KeyError(f"program has no parameter, buffer or constant named {target!r}")


class ProgramEditor:
    """A private, editable copy of an `ExportedProgram`."""

    def __init__(self, program: ExportedProgram):
        self.source = program
        graph = torch.fx.Graph()
        node_map: dict[torch.fx.Node, torch.fx.Node] = {}
        out = graph.graph_copy(program.graph, node_map)
        old_output = next(n for n in program.graph.nodes if n.op == "output")
        new_output = graph.output(out)
        new_output.meta = copy.copy(old_output.meta)
        # A bare graph: `finish` hands it to ExportedProgram with the source's module
        # as root, which copies the submodules it refers to (torch.cond branches)
        # and generates its code once, instead of once here and again there.
        self.graph = graph
        # Keyed by the copy's node names: copying may rename a placeholder (``input``
        # becomes ``input_1``, since FX avoids builtins), so follow node_map.
        old_by_name = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
        self._specs: dict[str, InputSpec] = {}
        for spec in program.graph_signature.input_specs:
            if not hasattr(spec.arg, "name"):
                continue
            new_name = node_map[old_by_name[spec.arg.name]].name
            if new_name != spec.arg.name:
                spec = copy.copy(spec)
                spec.arg = TensorArgument(name=new_name)
            self._specs[new_name] = spec
        self.state_dict: dict[str, torch.Tensor] = dict(program.state_dict)
        self.constants: dict[str, Any] = dict(program.constants)
        self._fake_mode = torch._guards.detect_fake_mode(
            [n.meta.get("val") for n in self.graph.nodes if n.op == "placeholder"]
        )

    # -- lookups -------------------------------------------------------------
    def placeholders(self) -> Iterator[torch.fx.Node]:
        return (n for n in self.graph.nodes if n.op == "placeholder")

    def node_for_target(self, target: str) -> torch.fx.Node:
        for n in self.placeholders():
            spec = self._specs.get(n.name)
            if spec is not None and spec.target == target:
                return n
        raise KeyError(f"program has no lifted input for {target!r}")

    def spec_of(self, node: torch.fx.Node) -> InputSpec | None:
        return self._specs.get(node.name)

    def tensor(self, target: str) -> torch.Tensor:
        if target in self.state_dict:
            return self.state_dict[target]
        return self.constants[target]

    # -- edits ---------------------------------------------------------------
    def fake(self, tensor: torch.Tensor) -> Any:
        """A fake tensor with the static shape of ``tensor`` for ``meta['val']``."""
        if self._fake_mode is None:
            return tensor
        return self._fake_mode.from_tensor(tensor, static_shapes=True)

    def fake_call(self, target: Any, *args: Any) -> Any:
        """Run ``target`` on the fake values of fx-node arguments."""
        vals = [a.meta["val"] if isinstance(a, torch.fx.Node) else a for a in args]
        if self._fake_mode is None:
            return target(*vals)
        with self._fake_mode:
            return target(*vals)

    def add_constant(self, target: str, tensor: torch.Tensor, name: str) -> torch.fx.Node:
        """Lift ``tensor`` as a constant input, placed after the other lifted state."""
        if target in self.constants or target in self.state_dict:
            raise ValueError(f"program already has a lifted input named {target!r}")
        first_user_input = next(
            (n for n in self.placeholders() if self._specs[n.name].kind not in _STATE_KINDS),
            None,
        )
        if first_user_input is not None:
            ctx = self.graph.inserting_before(first_user_input)
        else:
            last = list(self.placeholders())[-1] if any(True for _ in self.placeholders()) else None
            ctx = self.graph.inserting_after(last) if last is not None else self.graph.inserting_before(None)
        with ctx:
            node = self.graph.placeholder(name)
        node.meta["val"] = self.fake(tensor)
        self._specs[node.name] = InputSpec(
            kind=InputKind.CONSTANT_TENSOR, arg=TensorArgument(name=node.name), target=target
        )
        self.constants[target] = tensor
        return node

    def remove_input(self, node: torch.fx.Node) -> None:
        """Remove an unused lifted input and the tensor behind it."""
        if node.users:
            raise ValueError(f"input {node.name} still has users: {list(node.users)}")
        spec = self._specs.pop(node.name)
        self.graph.erase_node(node)
        if spec.kind == InputKind.CONSTANT_TENSOR:
            self.constants.pop(spec.target, None)
        else:
            self.state_dict.pop(spec.target, None)

    def set_tensor(self, target: str, tensor: torch.Tensor) -> None:
        """Replace the tensor behind a lifted parameter, buffer or constant."""
        if target in self.state_dict:
            old = self.state_dict[target]
            if isinstance(old, torch.nn.Parameter):
                tensor = torch.nn.Parameter(tensor, requires_grad=old.requires_grad)
            self.state_dict[target] = tensor
        elif target in self.constants:
            self.constants[target] = tensor
        else:
            raise KeyError(f"program has no lifted input named {target!r}")

    # -- result --------------------------------------------------------------
    def finish(self) -> ExportedProgram:
        self.graph.eliminate_dead_code(is_impure_node=lambda n: n.op in ("placeholder", "output"))
        self.graph.lint()
        specs = [self._specs[n.name] for n in self.placeholders()]
        output_specs = copy.deepcopy(self.source.graph_signature.output_specs)
        output_node = next(n for n in self.graph.nodes if n.op == "output")
        for spec, arg in zip(output_specs, torch.utils._pytree.tree_leaves(output_node.args[0])):
            if isinstance(spec.arg, TensorArgument) and isinstance(arg, torch.fx.Node):
                spec.arg = TensorArgument(name=arg.name)  # follow a replaced output node
        sig = ExportGraphSignature(input_specs=specs, output_specs=output_specs)
        src = self.source
        with warnings.catch_warnings():
            # deep-copying the call graph's pytree specs trips a torch-internal deprecation
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            module_call_graph = copy.deepcopy(src.module_call_graph)
        return ExportedProgram(
            root=self.source.graph_module,
            graph=self.graph,
            graph_signature=sig,
            state_dict=self.state_dict,
            range_constraints=copy.copy(src.range_constraints),
            module_call_graph=module_call_graph,
            example_inputs=src.example_inputs,
            constants=self.constants,
            verifiers=src.verifiers,
        )


# -- persistence ---------------------------------------------------------------


def _program_meta(program: ExportedProgram) -> dict[str, Any]:
    nodes: dict[str, Any] = {}
    for n in program.graph.nodes:
        info = get_node_info(n)
        if info is None:
            continue
        nodes[n.name] = {
            "spec": info.spec.to_dict() if info.spec else None,
            "mask": info.mask,
            "mask_of": info.mask_of,
            "apply_mask_of": info.apply_mask_of,
        }
    return {"format": 1, "nodes": nodes}


def save_program(program: ExportedProgram, path: str | os.PathLike) -> None:
    """`torch.export.save` plus sparsecc's node metadata, in one ``.pt2`` file."""
    meta = json.dumps(_program_meta(program), indent=1)
    torch.export.save(program, path, extra_files={PROGRAM_META_FILE: meta})


def import_container_types(path: str | Path) -> None:
    """Import the modules that define the program's input/output container types.

    A program whose outputs are, say, a transformers ``ModelOutput`` only
    deserializes once that class is registered with torch's pytree, which
    happens when its module is imported; a fresh process (a bench worker) has
    not imported it yet.
    """
    try:
        with zipfile.ZipFile(path) as z:
            texts = [z.read(n).decode("utf-8", "replace") for n in z.namelist()
                     if n.startswith("program/models/") and n.endswith(".json")]
    except (OSError, zipfile.BadZipFile):
        return  # torch.export.load reports what is wrong with the file
    for text in texts:
        for name in set(re.findall(r'\\"type\\": \\"([A-Za-z_][\w.]*)\.[A-Za-z_]\w*\\"', text)):
            if name.split(".")[0] not in sys.modules and importlib.util.find_spec(name.split(".")[0]) is None:
                continue
            try:
                importlib.import_module(name)
            except ImportError:
                pass  # the load then fails naming the type


def load_program(path: str | os.PathLike) -> ExportedProgram:
    """Load a ``.pt2`` file, restoring sparsecc metadata when it has any."""
    path = Path(path)
    if not path.is_file():
        raise ProgramFileError(f"{path}: no such program file")
    import_container_types(path)
    extra = {PROGRAM_META_FILE: ""}
    try:
        program = torch.export.load(path, extra_files=extra)
    except Exception as e:  # torch raises many types for a damaged archive; name the file once
        kernels_loaded = any(n.startswith("sparsecc::") for n in torch._C._dispatch_get_all_op_names())
        if not kernels_loaded and ("sparsecc" in str(e) or path.parent.name == "torch-sparse"):
            raise ProgramFileError(
                f"{path} calls sparsecc's CPU sparse kernels: load it with "
                "sparsecc.backends.torch_sparse.load_sparse_program, which builds and registers them "
                f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from e
        first = str(e).splitlines()[0][:300] if str(e) else ""
        raise ProgramFileError(f"{path}: not a loadable torch.export program ({type(e).__name__}: {first})") from e
    if extra[PROGRAM_META_FILE]:
        meta = json.loads(extra[PROGRAM_META_FILE])
        by_name = {n.name: n for n in program.graph.nodes}
        for name, d in meta.get("nodes", {}).items():
            node = by_name.get(name)
            if node is None:
                continue
            set_node_info(
                node,
                spec=MaskSpec.from_dict(d["spec"]) if d.get("spec") else None,
                mask=d.get("mask"),
                mask_of=d.get("mask_of"),
                apply_mask_of=d.get("apply_mask_of"),
            )
    return program
