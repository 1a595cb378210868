"""Every op a SavedModel holds, read from its protobuf without loading it, and whether it may load.

A SavedModel is a program: its graph can hold ops that read or write files (`ReadFile`,
`WriteFile`, `SaveV2`, dataset readers), memory-map them (`ImmutableConst`) or call back into
Python (`PyFunc`), and TensorFlow runs some of it while *loading*, before any signature is
called: a restored resource's `_create_resource` / `_initialize`, a saveable object's restore
function, and for a TF1-format file its init op (`saved_model_main_op` / `legacy_init_op`
collections, `__saved_model_init_op`) and its saver's `restore_op_name`. Deciding which parts
loading reaches is how this check once missed all of those, so it decides nothing of the kind:

- **Every op is accounted for.** All nodes of every meta graph's graph and the body of every
  function in its library, whether anything seems to call it or not, must be pure tensor ops
  (`PURE_TENSOR_OPS`). A function-valued attribute (`f`, `then_branch`, `body`, ... and any
  function attribute nested in those) that names no library function names an op TensorFlow
  would instantiate as a one-op function, and is checked as an op. Parsing executes nothing.
- **Only the TF2 object-graph format loads.** A file without an object graph, or with more than
  one meta graph, is loaded by TensorFlow's TF1 path (`load_v1_in_v2`: saver restore, init and
  table-initializer ops from collections): refused outright, whatever its ops. So is anything in
  a TF2 file whose effect this module does not check: a `collection_def` entry other than the
  `saved_model_main_op` NoOp that `tf.saved_model.save` records, an asset (a file path handed to
  the graph), an object revived by a registered Python class (`registered_name`) other than
  TensorFlow's `tf.TrackableConstant` (which reads a Const node's value) or restored by a
  registered saver (`registered_saver`), a saver that is not the V2 saver `tf.saved_model.save`
  writes.
- **The one exception: the saver's checkpoint functions.** Every TF2 SavedModel carries the two
  functions its `saver_def` names, `_traced_save` (`SaveV2`, `MergeV2Checkpoints`) and
  `_traced_restore` (`RestoreV2`). TensorFlow's TF2 loader never runs them: it restores the
  variables with restore ops it builds itself (in Python, from the TensorFlow installed) that
  read `variables/variables.*` inside the SavedModel folder. They are still allowed only where
  they can do no more than that: `CHECKPOINT_OPS` are accepted in a function only if (1) it is
  called by the saver_def's save or restore node of the main graph and by nothing else (no other
  node or function, no object of the object graph), (2) that node feeds it the saver's own
  filename placeholder as first argument, and (3) every file path those ops use comes from that
  argument alone: `RestoreV2` reads exactly the prefix it is given (through `Identity` only),
  `SaveV2` / `MergeV2Checkpoints` write the prefix plus constant suffixes such as
  `_temp/part` (no `..`, no absolute path). Run by a TF1-style saver, they read or write only
  the checkpoint prefix the caller passes, which for a loader is the SavedModel's own
  `variables/variables`.

`audit` returns all of it (every op and where it is, the ops refused where they are, the other
reasons to refuse); `ssl_zoo.loader` refuses a SavedModel with anything refused, naming it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

# Ops that compute on tensors and variables only: no file, network, Python or process access.
# A backbone exported by ssl_zoo uses a subset of these (tested); the list is wider so that other
# Keras vision backbones pass. Extend it only with ops of the same kind.
PURE_TENSOR_OPS = frozenset("""
Abs Add AddN AddV2 All Any ArgMax ArgMin AssignAddVariableOp AssignSubVariableOp AssignVariableOp
AvgPool AvgPool3D BatchMatMul BatchMatMulV2 BatchMatMulV3 BiasAdd BroadcastArgs BroadcastGradientArgs
BroadcastTo Cast Ceil CheckNumerics ClipByValue ConcatV2 Const Conv2D Conv3D Cos Cumsum
DepthToSpace DepthwiseConv2dNative DisableCopyOnRead Div DivNoNan Einsum Elu Equal Erf Erfc Exp
ExpandDims Expm1 Fill Floor FloorDiv FloorMod FusedBatchNorm FusedBatchNormV2 FusedBatchNormV3
GatherNd GatherV2 Gelu Greater GreaterEqual Identity IdentityN L2Loss LeakyRelu Less LessEqual
Log Log1p LogSoftmax LogicalAnd LogicalNot LogicalOr MatMul Max MaxPool MaxPool3D MaxPoolV2 Maximum
Mean Min Minimum MirrorPad Mul Neg NoOp NotEqual OneHot OnesLike Pack Pad PadV2 PartitionedCall
Placeholder PlaceholderWithDefault Pow Prod Range Rank ReadVariableOp RealDiv Reciprocal Relu Relu6
Reshape ResizeArea ResizeBicubic ResizeBilinear ResizeNearestNeighbor Round Rsqrt Select SelectV2
Selu Shape ShapeN Sigmoid Sign Sin Size Slice Softmax Softplus Softsign SpaceToDepth Split SplitV
Sqrt Square SquaredDifference Squeeze StatefulPartitionedCall StopGradient StridedSlice Sub Sum
Tanh Tile Transpose Unpack VarHandleOp VarIsInitializedOp ZerosLike
""".split())

# Allowed only inside the saver's checkpoint functions, under the conditions of the module docstring.
CHECKPOINT_IO_OPS = frozenset({"RestoreV2", "SaveV2", "MergeV2Checkpoints"})  # touch files
CHECKPOINT_PATH_OPS = frozenset({"ShardedFilename", "StringJoin", "StaticRegexFullMatch"})  # string ops on the prefix
CHECKPOINT_OPS = CHECKPOINT_IO_OPS | CHECKPOINT_PATH_OPS
# Inputs of the I/O ops that are file paths (by position).
_PATH_INPUTS = {"RestoreV2": (0,), "SaveV2": (0,), "MergeV2Checkpoints": (0, 1)}
# Ops through which a written path may be derived from the prefix argument.
_PATH_DERIVATION_OPS = frozenset({"Identity", "StringJoin", "ShardedFilename", "Select", "SelectV2",
                                  "StaticRegexFullMatch", "Pack"})
_CALL_OPS = ("StatefulPartitionedCall", "PartitionedCall")
# Object-graph node kinds TF2 loading revives without running anything but library functions.
_OBJECT_KINDS = frozenset({"user_object", "function", "bare_concrete_function", "variable", "constant",
                           "resource", "captured_tensor"})
# Registered Python classes that revive an object from the file without running any of it:
# TensorFlow's TrackableConstant reads a main-graph Const node's value into a constant.
_REVIVERS_OF_KIND = {"tf.TrackableConstant": "constant"}


@dataclasses.dataclass
class Audit:
    ops: dict[str, set[str]]  # every op type in the file -> where it is ("graph node X", "function F")
    refused: dict[str, set[str]]  # the ops not allowed where they are
    problems: list[str]  # other reasons to refuse the file (format, collections, saver, assets, ...)
    checkpoint_functions: set[str]  # the saver functions allowed CHECKPOINT_OPS

    @property
    def safe(self) -> bool:
        return not self.refused and not self.problems


def _node_name(tensor_name: str) -> str:
    """'^ctrl' / 'node:0' / 'node:output:0' / 'node' -> 'node' (tensor and control-input names)."""
    return tensor_name.lstrip("^").split(":")[0]


def _attr_functions(attrs) -> set[str]:
    """Names of the functions in function-valued attributes, recursively (a NameAttrList has attrs)."""
    names: set[str] = set()
    for value in attrs.values():
        funcs = ([value.func] if value.HasField("func") else []) + list(value.list.func)
        for func in funcs:
            names.add(func.name)
            names |= _attr_functions(func.attr)
    return names


def _object_graph_functions(object_graph) -> set[str]:
    """Every function name the object graph refers to (what TF2 loading revives and may call)."""
    names = set(object_graph.concrete_functions)
    for node in object_graph.nodes:
        kind = node.WhichOneof("kind")
        if kind == "function":
            names.update(node.function.concrete_functions)
        elif kind == "bare_concrete_function":
            names.add(node.bare_concrete_function.concrete_function_name)
        elif kind == "captured_tensor":
            names.add(node.captured_tensor.concrete_function)
    return names


def _path_is_safe_constant(node) -> bool:
    """A constant used in a checkpoint path: numbers, or relative strings without '..'."""
    tensor = node.attr["value"].tensor
    for raw in tensor.string_val:
        text = raw.decode("utf-8", "replace")
        parts = re.split(r"[/\\]", text)
        if text.startswith(("/", "\\")) or ".." in parts or ":" in text:
            return False
    return True


def _path_sources(ref: str, body: dict, args: list[str], strict: bool, seen: set[str] | None = None) -> set[str] | None:
    """Which function arguments the path tensor `ref` is derived from; None if it derives from
    anything else (a non-constant op outside the derivation ops, an unsafe constant)."""
    seen = set() if seen is None else seen
    name = _node_name(ref)
    if name in args:
        return {name}
    if name in seen:
        return set()
    seen.add(name)
    node = body.get(name)
    if node is None:
        return None
    if node.op == "Const" and not strict:
        return set() if _path_is_safe_constant(node) else None
    allowed = {"Identity"} if strict else _PATH_DERIVATION_OPS
    if node.op not in allowed:
        return None
    found: set[str] = set()
    for inp in node.input:
        if inp.startswith("^"):
            continue
        sub = _path_sources(inp, body, args, strict, seen)
        if sub is None:
            return None
        found |= sub
    return found


def _checkpoint_paths_ok(fdef) -> list[str]:
    """Problems with the file paths of the I/O ops in checkpoint function `fdef` (empty if none)."""
    args = [a.name for a in fdef.signature.input_arg]
    body = {n.name: n for n in fdef.node_def}
    problems = []
    for node in fdef.node_def:
        for position in _PATH_INPUTS.get(node.op, ()):
            sources = (_path_sources(node.input[position], body, args, strict=node.op == "RestoreV2")
                       if position < len(node.input) else None)
            if not args or sources != {args[0]}:
                problems.append(f"{node.op} {node.name!r} in function {fdef.signature.name} uses a file path that is "
                                f"not its checkpoint prefix argument"
                                + ("" if node.op != "RestoreV2" else " as given"))
    return problems


def _saver_checkpoint_functions(meta_graph, nodes, functions, problems) -> dict[str, str]:
    """Library function -> which saver node calls it, for the V2 saver of a TF2 meta graph. Any
    saver of another shape is a problem (it is a route this module does not check)."""
    from tensorflow.core.protobuf import saver_pb2

    if not meta_graph.HasField("saver_def"):
        return {}
    saver = meta_graph.saver_def
    where = "the saver (saver_def)"
    if saver.version != saver_pb2.SaverDef.V2:
        problems.append(f"{where} is not a V2 checkpoint saver")
        return {}
    filename = nodes.get(_node_name(saver.filename_tensor_name))
    if filename is None or filename.op != "Placeholder":
        problems.append(f"{where}: its filename tensor {saver.filename_tensor_name!r} is not a placeholder")
        return {}
    called: dict[str, str] = {}
    for role, tensor in (("save", saver.save_tensor_name), ("restore", saver.restore_op_name)):
        node = nodes.get(_node_name(tensor))
        if (node is None or node.op not in _CALL_OPS or not node.attr["f"].func.name
                or node.attr["f"].func.name not in functions or not node.input
                or _node_name(node.input[0]) != filename.name):
            problems.append(f"{where}: its {role} op {tensor!r} is not a call of a library function on the "
                            f"saver's filename placeholder")
            continue
        called[node.attr["f"].func.name] = node.name
    return called


def audit(saved_model_dir: str | os.PathLike) -> Audit:
    """Reads `saved_model_dir/saved_model.pb` (nothing executed) and accounts for everything in it."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((Path(saved_model_dir) / "saved_model.pb").read_bytes())
    ops: dict[str, set[str]] = {}
    refused: dict[str, set[str]] = {}
    problems: list[str] = []
    checkpoint: set[str] = set()
    if len(proto.meta_graphs) != 1 or not proto.meta_graphs[0].object_graph_def.nodes:
        with_objects = sum(bool(m.object_graph_def.nodes) for m in proto.meta_graphs)
        problems.append(f"it is a TF1-format SavedModel ({len(proto.meta_graphs)} meta graph(s), {with_objects} with "
                        f"an object graph; TensorFlow loads it by running its saver's restore op and its init "
                        f"ops); only TF2 SavedModels (one meta graph with an object graph: tf.saved_model.save, "
                        f"keras ExportArchive) are loaded")
    for meta_graph in proto.meta_graphs:
        graph = meta_graph.graph_def
        nodes = {n.name: n for n in graph.node}
        functions = {f.signature.name: f for f in graph.library.function}
        callers: dict[str, set[str]] = {}  # function -> who references it

        def account(op: str, where: str, extra: frozenset = frozenset()):
            ops.setdefault(op, set()).add(where)
            if op not in PURE_TENSOR_OPS and op not in extra:
                refused.setdefault(op, set()).add(where)

        def references(node, where: str) -> set[str]:
            names = ({node.op} if node.op in functions else set()) | _attr_functions(node.attr)
            for name in names:
                callers.setdefault(name, set()).add(where)
            return names

        for node in graph.node:
            references(node, f"graph node {node.name}")
        for fdef in graph.library.function:
            for node in fdef.node_def:
                references(node, f"function {fdef.signature.name}")
            for name in _attr_functions(fdef.attr):
                callers.setdefault(name, set()).add(f"function {fdef.signature.name}")
        object_refs = _object_graph_functions(meta_graph.object_graph_def)

        # The saver's functions, if they are called from nowhere but the saver's own nodes.
        saver_calls = _saver_checkpoint_functions(meta_graph, nodes, functions, problems)
        for fname, saver_node in saver_calls.items():
            others = callers.get(fname, set()) - {f"graph node {saver_node}"}
            if others or fname in object_refs:
                shown = sorted(others) + (["the object graph"] if fname in object_refs else [])
                problems.append(f"the saver's function {fname} is also referenced by {', '.join(shown[:3])}")
            elif not any(_attr_functions(n.attr) & functions.keys() or n.op in functions
                         for n in functions[fname].node_def):
                path_problems = _checkpoint_paths_ok(functions[fname])
                problems.extend(path_problems)
                if not path_problems:
                    checkpoint.add(fname)
            else:
                problems.append(f"the saver's function {fname} calls other functions")

        for node in graph.node:  # every node of the main graph
            if node.op not in functions:
                account(node.op, f"graph node {node.name}")
        for fdef in graph.library.function:  # every node of every function
            fname = fdef.signature.name
            extra = CHECKPOINT_OPS if fname in checkpoint else frozenset()
            for node in fdef.node_def:
                if node.op not in functions:
                    account(node.op, f"function {fname}", extra)
        for name, where in callers.items():  # a function attribute naming an op, not a function
            if name not in functions:
                for w in where:
                    account(name, f"{w} (as a function)")

        for key, collection in meta_graph.collection_def.items():
            # tf.saved_model.save records its init op, a NoOp, here; anything else is a route unchecked.
            listed = list(collection.node_list.value) if collection.WhichOneof("kind") == "node_list" else None
            if not (key == "saved_model_main_op" and listed
                    and all(_node_name(n) in nodes and nodes[_node_name(n)].op == "NoOp" for n in listed)):
                problems.append(f"it has a graph collection {key!r} other than the NoOp init op TF2 writes, which "
                                f"TF1 loading runs or reads and this check does not follow")
        if meta_graph.asset_file_def:
            problems.append(f"it has assets ({', '.join(a.filename for a in meta_graph.asset_file_def[:3])}): "
                            f"file paths handed to the graph at load time")
        for i, obj in enumerate(meta_graph.object_graph_def.nodes):
            kind = obj.WhichOneof("kind")
            if obj.registered_name in _REVIVERS_OF_KIND and kind == _REVIVERS_OF_KIND[obj.registered_name]:
                operation = nodes.get(obj.constant.operation)
                if operation is None or operation.op != "Const":
                    problems.append(f"object {i} is a constant that names no Const node")
            elif obj.registered_name:
                problems.append(f"object {i} is revived by the registered Python class {obj.registered_name!r}")
            if obj.registered_saver:
                problems.append(f"object {i} is restored by the registered saver {obj.registered_saver!r}")
            if kind not in _OBJECT_KINDS:
                problems.append(f"object {i} is of kind {kind!r} (an asset or a kind this check does not know)")
    return Audit(ops, refused, problems, checkpoint)


def all_ops(saved_model_dir: str | os.PathLike) -> dict[str, set[str]]:
    """Op type -> where it occurs, for every node of every graph and function in the file."""
    return audit(saved_model_dir).ops


def impure_ops(saved_model_dir: str | os.PathLike) -> dict[str, set[str]]:
    """The ops refused where they are (empty when every op is allowed; see `audit` for the rest)."""
    return audit(saved_model_dir).refused
