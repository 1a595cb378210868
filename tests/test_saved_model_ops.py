"""A SavedModel is refused before TensorFlow loads it if anything in it could touch files.

Each hostile SavedModel here is built with TensorFlow itself and plants a file write on one of the
routes by which *loading* (not calling) runs graph code. Each test asserts that `load_backbone`
refuses it with `UnsafeModelError` naming the op, that nothing was written, and then that the
route is real: plain `tf.saved_model.load` of the same folder does write the file.
"""

from __future__ import annotations

import shutil

import pytest

import release_fixtures as rf
from ssl_zoo.loader import UnsafeModelError, load_backbone
from ssl_zoo.saved_model_ops import CHECKPOINT_IO_OPS, PURE_TENSOR_OPS, audit

SIZE = 16


def _read_proto(folder):
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((folder / "saved_model.pb").read_bytes())
    return proto


def _write_proto(folder, proto):
    (folder / "saved_model.pb").write_bytes(proto.SerializeToString())


def _assert_refused(folder, target, *patterns):
    with pytest.raises(UnsafeModelError) as err:
        load_backbone(folder)
    message = str(err.value)
    assert "refused" in message
    for pattern in patterns:
        assert pattern in message, message
    assert not target.exists(), "the SavedModel ran before it was refused"
    return message


def _assert_plain_tf_load_writes(folder, target):
    """The route is live: TensorFlow's own loader runs the planted write."""
    import tensorflow as tf

    tf.saved_model.load(str(folder))
    assert target.exists(), "the planted write is not on a route TensorFlow runs at load time"


# ---- TF2: a resource whose _initialize writes, named only by its object-graph node -------------
def _tf2_resource_initializer_writes(folder, target):
    import tensorflow as tf

    class Planted(tf.saved_model.experimental.TrackableResource):
        def _create_resource(self):
            return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[], shared_name="planted_resource")

        def _initialize(self):
            tf.io.write_file(str(target), "written at load")

    class Module(tf.Module):
        def __init__(self):
            super().__init__()
            self.planted = Planted()

        @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32, name="images")])
        def serve(self, images):
            return {"pooled": tf.reduce_mean(images, axis=[1, 2])}

    module = Module()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    assert not target.exists()
    # Hide the initializer from a scan that starts from signatures and the object graph's function
    # map: out of the map, named by its object node only (as a bare function without a signature),
    # and no longer a control input of the init op. TensorFlow still runs it when it loads.
    proto = _read_proto(folder)
    meta = proto.meta_graphs[0]
    writers = {f.signature.name for f in meta.graph_def.library.function if any(n.op == "WriteFile" for n in f.node_def)}
    assert writers
    for name in writers:
        del meta.object_graph_def.concrete_functions[name]
    for node in meta.object_graph_def.nodes:
        kind = node.WhichOneof("kind")
        if kind == "function" and writers & set(node.function.concrete_functions):
            name = node.function.concrete_functions[0]
            node.ClearField("function")
            del node.children[:]
            node.bare_concrete_function.concrete_function_name = name
        elif kind == "bare_concrete_function" and node.bare_concrete_function.concrete_function_name in writers:
            node.bare_concrete_function.ClearField("function_spec")
    for function in meta.graph_def.library.function:
        if function.signature.name in writers:  # a bare function without a signature returns nothing
            del function.signature.output_arg[:]
            function.ret.clear()
    callers = {n.name for n in meta.graph_def.node if "f" in n.attr and n.attr["f"].func.name in writers}
    for node in meta.graph_def.node:
        node.input[:] = [i for i in node.input if i.lstrip("^").split(":")[0] not in callers]
    _write_proto(folder, proto)
    return folder


def test_tf2_resource_initializer_that_writes_is_refused(tmp_path):
    target = tmp_path / "written.txt"
    folder = _tf2_resource_initializer_writes(tmp_path / "sm", target)
    _assert_refused(folder, target, "WriteFile")
    _assert_plain_tf_load_writes(folder, target)


# ---- TF1 (tf.compat.v1 Builder): init ops and the saver's restore op -------------------------
def _tf1_saved_model(folder, target, route):
    """A TF1-format SavedModel (images -> pooled) that writes `target` through `route`
    ("main_op", "legacy_init_op", "saver": the saver's restore op; "none": writes nothing)."""
    import tensorflow as tf

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as sess:
        images = v1.placeholder(tf.float32, [None, SIZE, SIZE, 3], name="images")
        scale = v1.get_variable("scale", [], initializer=v1.ones_initializer())
        pooled = tf.reduce_mean(images, axis=[1, 2]) * scale
        sess.run(v1.global_variables_initializer())
        signature = v1.saved_model.signature_def_utils.predict_signature_def({"images": images}, {"pooled": pooled})
        kwargs = {}
        if route in ("main_op", "legacy_init_op"):
            kwargs[route] = tf.io.write_file(str(target), "written at load")
        elif route == "saver":
            saver_def = v1.train.Saver([scale]).as_saver_def()
            write = tf.io.write_file(str(target), "written at load")
            restore = tf.group(write, graph.get_operation_by_name(saver_def.restore_op_name), name="restore_and_write")
            saver_def.restore_op_name = restore.name
            kwargs["saver"] = v1.train.Saver(saver_def=saver_def)
        builder = v1.saved_model.Builder(str(folder))
        builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"serving_default": signature},
                                             **kwargs)
        builder.save()
    assert not target.exists()
    return folder


@pytest.mark.parametrize("route", ["main_op", "legacy_init_op", "saver"])
def test_tf1_saved_model_that_writes_at_load_is_refused(route, tmp_path):
    target = tmp_path / "written.txt"
    folder = _tf1_saved_model(tmp_path / "sm", target, route)
    message = _assert_refused(folder, target, "WriteFile", "TF1-format")
    assert "RestoreV2" in message  # a TF1 saver's restore ops are main-graph nodes, refused as any other
    _assert_plain_tf_load_writes(folder, target)


def test_tf1_saved_model_is_refused_even_without_file_ops(tmp_path):
    folder = _tf1_saved_model(tmp_path / "sm", tmp_path / "unused.txt", "none")
    found = audit(folder)
    assert "WriteFile" not in found.ops
    assert any("TF1-format" in p for p in found.problems)
    _assert_refused(folder, tmp_path / "unused.txt", "TF1-format")


# ---- every op is counted, not only the ones something seems to call ------------------------
def test_a_function_nothing_calls_is_still_checked(tmp_path):
    """A library function that no signature, object or node refers to is audited all the same."""
    import tensorflow as tf

    target = tmp_path / "written.txt"
    folder = tmp_path / "sm"

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32, name="images")])
        def serve(self, images):
            return {"pooled": tf.reduce_mean(images, axis=[1, 2])}

    module = Module()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})

    @tf.function
    def orphan():
        tf.io.write_file(str(target), "x")

    proto = _read_proto(folder)
    orphan_def = orphan.get_concrete_function().function_def
    proto.meta_graphs[0].graph_def.library.function.append(orphan_def)
    _write_proto(folder, proto)
    assert "WriteFile" in audit(folder).refused
    _assert_refused(folder, target, "WriteFile", orphan_def.signature.name)


# ---- our own exports load; the checkpoint exception is exactly the saver's functions -------
def test_exported_saved_model_passes_and_file_ops_are_only_the_savers(tmp_path_factory):
    found = audit(rf.exported(tmp_path_factory)["saved_model"])
    assert found.safe, (found.refused, found.problems)
    assert {"Conv2D", "Relu", "Mean"} <= set(found.ops)
    assert len(found.checkpoint_functions) == 2  # _traced_save and _traced_restore
    for op in set(found.ops) - PURE_TENSOR_OPS:  # RestoreV2, SaveV2, ... : there, and nowhere else
        assert all(w.split(" ", 1)[1] in found.checkpoint_functions for w in found.ops[op]), (op, found.ops[op])
    assert {"RestoreV2", "SaveV2"} <= set(found.ops) and set(found.ops) - PURE_TENSOR_OPS >= CHECKPOINT_IO_OPS


def _export_copy(tmp_path, tmp_path_factory):
    folder = tmp_path / "saved_model"
    shutil.copytree(rf.exported(tmp_path_factory)["saved_model"], folder)
    return folder, _read_proto(folder)


def _saver_function(proto, role):
    meta = proto.meta_graphs[0]
    nodes = {n.name: n for n in meta.graph_def.node}
    name = getattr(meta.saver_def, {"save": "save_tensor_name", "restore": "restore_op_name"}[role]).split(":")[0]
    fname = nodes[name].attr["f"].func.name
    return next(f for f in meta.graph_def.library.function if f.signature.name == fname)


def _edit_restore_reads_elsewhere(proto):
    restore = _saver_function(proto, "restore")
    const = restore.node_def.add()
    const.name = "elsewhere"
    const.op = "Const"
    const.attr["dtype"].type = 7  # DT_STRING
    const.attr["value"].tensor.dtype = 7
    const.attr["value"].tensor.string_val.append(b"/etc/passwd")
    for node in restore.node_def:
        if node.op == "RestoreV2":
            node.input[0] = "elsewhere:output:0"


def _edit_object_graph_names_the_restore(proto):
    meta = proto.meta_graphs[0]
    restore = _saver_function(proto, "restore")
    meta.object_graph_def.concrete_functions[restore.signature.name].SetInParent()


def _edit_collection(proto):
    proto.meta_graphs[0].collection_def["saved_model_main_op"].node_list.value.append("saver_filename")


def _edit_asset(proto):
    asset = proto.meta_graphs[0].asset_file_def.add()
    asset.filename = "../../etc/passwd"
    asset.tensor_info.name = "saver_filename:0"


def _edit_registered_class(proto):
    proto.meta_graphs[0].object_graph_def.nodes[0].registered_name = "some_package.Reviver"


def _edit_op_named_as_function(proto):
    function = next(f for f in proto.meta_graphs[0].graph_def.library.function if f.node_def)
    function.node_def[0].attr["f"].func.name = "WriteFile"


def _edit_second_meta_graph(proto):
    extra = proto.meta_graphs.add()
    extra.CopyFrom(proto.meta_graphs[0])
    extra.meta_info_def.tags[:] = ["train"]


@pytest.mark.parametrize("edit, expected", [
    (_edit_restore_reads_elsewhere, "not its checkpoint prefix argument"),
    (_edit_object_graph_names_the_restore, "also referenced by"),
    (_edit_collection, "saved_model_main_op"),
    (_edit_asset, "assets"),
    (_edit_registered_class, "some_package.Reviver"),
    (_edit_op_named_as_function, "WriteFile"),
    (_edit_second_meta_graph, "TF1-format"),
], ids=lambda v: getattr(v, "__name__", "")[len("_edit_"):] if callable(v) else "")
def test_routes_this_check_does_not_follow_are_refused(edit, expected, tmp_path, tmp_path_factory):
    folder, proto = _export_copy(tmp_path, tmp_path_factory)
    edit(proto)
    _write_proto(folder, proto)
    assert not audit(folder).safe
    _assert_refused(folder, tmp_path / "never.txt", expected)
