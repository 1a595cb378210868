"""What a SavedModel would run, read from its protobuf without loading it.

A SavedModel is a program: its graph can hold ops that read or write files (`ReadFile`,
`WriteFile`, `SaveV2`, dataset readers), memory-map them (`ImmutableConst`) or call back into
Python (`PyFunc`), and loading it runs its init op. So before `ssl_zoo.loader` hands a SavedModel
to TensorFlow, it lists every op that loading and calling its signatures can reach, and refuses
any op outside `PURE_TENSOR_OPS`. Parsing the protobuf executes nothing.

Reachable means: the nodes that any signature's outputs depend on in the main graph (the init op
that loading runs is a signature too), every function the restored Python object exposes (the
object graph's concrete functions, which include what a restored resource runs at load), and the
whole body of every function those call, transitively. The checkpoint functions that every TF2
SavedModel carries (`_traced_save` / `_traced_restore`, full of `SaveV2` / `RestoreV2`) are
reachable from none of these, and TensorFlow restores variables without them, so they do not
count; a signature that called them would.
"""

from __future__ import annotations

import os
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


def _node_name(tensor_name: str) -> str:
    """'^ctrl' / 'node:0' / 'node' -> 'node' (main-graph tensor and control-input names)."""
    return tensor_name.lstrip("^").split(":")[0]


def _called_functions(node, functions) -> set[str]:
    """Functions a node calls: its op itself, or any function-valued attribute (f, then_branch, body...)."""
    called = {node.op} & functions.keys()
    for value in node.attr.values():
        if value.HasField("func"):
            called.add(value.func.name)
        called.update(f.name for f in value.list.func)
    return called


def reachable_ops(saved_model_dir: str | os.PathLike) -> dict[str, set[str]]:
    """Op type -> names of the nodes/functions using it, for everything that loading the SavedModel
    and calling what it exposes can execute."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((Path(saved_model_dir) / "saved_model.pb").read_bytes())
    found: dict[str, set[str]] = {}
    for meta_graph in proto.meta_graphs:
        graph = meta_graph.graph_def
        nodes = {n.name: n for n in graph.node}
        functions = {f.signature.name: f for f in graph.library.function}
        pending = [_node_name(t.name) for sig in meta_graph.signature_def.values() for t in sig.outputs.values()]
        calls = set(meta_graph.object_graph_def.concrete_functions)
        seen_nodes: set[str] = set()
        while pending:  # the main graph, backwards from the signatures' outputs
            name = pending.pop()
            if name in seen_nodes or name not in nodes:
                continue
            seen_nodes.add(name)
            node = nodes[name]
            found.setdefault(node.op, set()).add(name)
            calls |= _called_functions(node, functions)
            pending.extend(_node_name(i) for i in node.input)
        seen_functions: set[str] = set()
        while calls:  # every node of every function called, transitively
            fname = calls.pop()
            if fname in seen_functions or fname not in functions:
                continue
            seen_functions.add(fname)
            for node in functions[fname].node_def:
                found.setdefault(node.op, set()).add(fname)
                calls |= _called_functions(node, functions)
    return found


def impure_ops(saved_model_dir: str | os.PathLike) -> dict[str, set[str]]:
    """The reachable ops that are not pure tensor ops (empty when the SavedModel is safe to load)."""
    return {op: where for op, where in reachable_ops(saved_model_dir).items() if op not in PURE_TENSOR_OPS}
