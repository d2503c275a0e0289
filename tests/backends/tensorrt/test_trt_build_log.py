"""The builder log's sparsity lines, as TensorRT 10 and 11 print them."""

from __future__ import annotations

from sparsecc.backends.tensorrt.build_log import parse_build_log, split_layer_list


def test_trt10_log_lists_eligible_and_picked_layers(fixtures):
    log = parse_build_log((fixtures / "trt10_resnet_sparse.build.log").read_text())
    assert log.trt_version == "10.3.0"
    assert log.eligible == ["node_Conv_132 + node_relu_3", "node_Conv_134 + node_add_86 + node_relu_4",
                            "node_Conv_136 + node_relu_5", "node_Conv_138 + node_add_122 + node_relu_6"]
    assert log.picked == ["node_Conv_136 + node_relu_5"]


def test_trt11_banner_and_lines(fixtures):
    log = parse_build_log((fixtures / "trt11_resnet_sparse.build.log").read_text())
    assert log.trt_version == "11.4.0"
    assert len(log.eligible) == 4 and log.picked == ["node_Conv_136 + node_relu_5"]


def test_empty_lists_are_found_but_empty():
    text = ("[11/29/2026-10:00:00] [I] [TRT] (Sparsity) Layers eligible for sparse math: \n"
            "[11/29/2026-10:00:00] [I] [TRT] (Sparsity) TRT inference plan picked sparse implementation for layers: \n")
    log = parse_build_log(text)
    assert log.found and log.eligible == [] and log.picked == []


def test_log_without_sparsity_lines():
    log = parse_build_log("[I] Engine built in 3.1 sec.\n[I] [TRT] Loaded engine size: 0 MiB\n")
    assert not log.found and log.eligible is None and log.picked is None


def test_polygraphy_style_prefix_and_old_banner():
    text = ("&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec\n"
            "[I]     (Sparsity) Layers eligible for sparse math: a, b\n")
    log = parse_build_log(text)
    assert log.trt_version == "8.6.1" and log.eligible == ["a", "b"] and log.picked is None


def test_several_profiles_union_without_duplicates():
    line = "[I] [TRT] (Sparsity) Layers eligible for sparse math: {}\n"
    log = parse_build_log(line.format("a, b") + line.format("b, c"))
    assert log.eligible == ["a", "b", "c"]


def test_split_keeps_brackets_together():
    assert split_layer_list("{ForeignNode[x,y...z]}, PWN(a, b), c + d") == [
        "{ForeignNode[x,y...z]}", "PWN(a, b)", "c + d"]
