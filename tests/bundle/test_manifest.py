"""The typed manifest: round trip, bundles of the previous format keep loading, clear errors naming the field."""

import json

import pytest

from sparsecc.bundle.hashes import BundleChangedError, check_hashes, hash_files, require_unchanged
from sparsecc.bundle.manifest import (SCHEMA_VERSION, Manifest, ManifestError, RecoveryRecord, read_manifest,
                                      write_manifest)
from sparsecc.errors import UsageError, VerificationError

# What `compile` wrote before the manifest had a schema_version (format 1), trimmed to one target.
FORMAT_1 = {
    "format": 1, "created": "2026-11-30T10:00:00+00:00", "model": "mlp", "machine": {"cpu": "x"},
    "recipe": {"pattern": "2:4"},
    "inputs": [{"name": "x", "shape": ["batch", 64], "dtype": "float32"}], "outputs": ["linear_2"],
    "dynamic_dims": {"batch": [1, 64]}, "parity_inputs": ["example", "random batch=3 seq=5"],
    "sparsity": {"summary": {}, "layers": [{"layer": "fc1", "status": "sparse"}, {"layer": "fc3", "status": "dense"}]},
    "targets": {"onnx": {"artifact": {"backend": "onnx", "files": {"model": "model.onnx"}, "inputs": [],
                                      "outputs": [], "meta": {}},
                         "check": [{"layer": "fc1", "support": "runs dense", "reason": "r"}],
                         "pattern_verification": {"ok": True, "layers": []},
                         "parity": {"ok": True, "rtol": 1e-4, "atol": 1e-5, "cases": []}, "timings_s": {"lower": 1.0}}},
    "timings_s": {"capture": 1.0},
    "dense_reference": {"program": "dense/program.pt2", "targets": {"onnx": {
        "folder": "dense/onnx", "artifact": {"backend": "onnx", "files": {"model": "model.onnx"}, "inputs": [],
                                             "outputs": [], "meta": {}}}}},
    "recovery": [{"method": "distill", "steps": 10, "loss_before": 2.0, "loss_after": 1.0, "seconds": 3.0,
                  "tokens": 100, "data": "wikitext", "options": {"lr": 1e-4}}],
}


def test_format_1_bundle_loads_with_typed_fields():
    m = Manifest.from_dict(json.loads(json.dumps(FORMAT_1)))
    assert m.schema_version == 1 and m.files == {} and m.reference is None
    assert m.targets["onnx"].folder == "onnx" and m.targets["onnx"].files == {"model": "onnx/model.onnx"}
    assert m.dense_reference.targets["onnx"].folder == "dense/onnx"
    assert [p.label for p in m.parity_inputs] == ["example", "random batch=3 seq=5"]
    assert [x["layer"] for x in m.sparsity_layers] == ["fc1", "fc3"]
    r = m.recovery[0]
    assert (r.method, r.steps, r.loss_after, r.extra) == ("distill", 10, 1.0, {"tokens": 100})


def test_round_trip_keeps_every_field_and_unknown_keys():
    d = {**FORMAT_1, "future_key": {"a": 1}}
    m = Manifest.from_dict(d)
    again = Manifest.from_dict(m.to_dict())
    assert again.to_dict() == m.to_dict()
    assert again.to_dict()["future_key"] == {"a": 1}
    assert again.to_dict()["schema_version"] == 1
    assert Manifest(model="m", inputs=[], targets={}).schema_version == SCHEMA_VERSION


def test_recovery_record_is_a_dataclass_compile_can_fill():
    rec = RecoveryRecord("reconstruct", steps=5, data="calib", loss_before=1.0, loss_after=0.5, seconds=2.0,
                         options={"lr": 0.1})
    m = Manifest(model="m", inputs=[], targets={}, recovery=[rec])
    back = Manifest.from_dict(m.to_dict()).recovery[0]
    assert back == rec


@pytest.mark.parametrize("edit, field", [
    (lambda d: d.pop("targets"), "'targets' is missing"),
    (lambda d: d.update(inputs={"x": 1}), "'inputs' should be list"),
    (lambda d: d["inputs"][0].pop("dtype"), "inputs[0]: field 'dtype' is missing"),
    (lambda d: d["targets"]["onnx"]["artifact"].pop("files"), "targets.onnx.artifact: field 'files' is missing"),
    (lambda d: d.update(schema_version=SCHEMA_VERSION + 1), "'schema_version'"),
    (lambda d: d["recovery"][0].pop("method"), "recovery[0]: field 'method' is missing"),
])
def test_a_bad_manifest_names_the_field(tmp_path, edit, field):
    d = json.loads(json.dumps(FORMAT_1))
    edit(d)
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(ManifestError, match=field.replace("[", r"\[").replace("]", r"\]")) as e:
        read_manifest(tmp_path)
    assert isinstance(e.value, UsageError) and str(tmp_path / "manifest.json") in str(e.value)


def test_not_a_bundle_and_not_json(tmp_path):
    with pytest.raises(ManifestError, match="is not a bundle"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(tmp_path)


def test_hashes_name_the_changed_and_missing_files(tmp_path):
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "model.onnx").write_bytes(b"abc")
    (tmp_path / "program.pt2").write_bytes(b"def")
    write_manifest(tmp_path, Manifest.from_dict(FORMAT_1))
    recorded = read_manifest(tmp_path).files
    assert set(recorded) == {"onnx/model.onnx", "program.pt2"} == set(hash_files(tmp_path))
    assert require_unchanged(tmp_path, recorded).ok
    (tmp_path / "onnx" / "model.onnx").write_bytes(b"abd")
    (tmp_path / "program.pt2").unlink()
    (tmp_path / "notes.txt").write_text("added later")
    r = check_hashes(tmp_path, recorded)
    assert (r.changed, r.missing, r.added) == (["onnx/model.onnx"], ["program.pt2"], ["notes.txt"])
    with pytest.raises(BundleChangedError, match="onnx/model.onnx") as e:
        require_unchanged(tmp_path, recorded)
    assert isinstance(e.value, VerificationError) and e.value.exit_code == 4
    assert not check_hashes(tmp_path, {}).recorded  # an older bundle: nothing recorded, nothing refused


def test_bench_reader_opens_a_format_1_bundle(tmp_path):
    from sparsecc.bundle.reader import DENSE, SPARSE, Bundle

    (tmp_path / "manifest.json").write_text(json.dumps(FORMAT_1))
    (tmp_path / "program.pt2").write_bytes(b"")
    b = Bundle(tmp_path)
    assert b.model_ref == "mlp" and b.backends() == ["onnx", "torch"] and b.has_dense()
    assert b.variant("onnx", SPARSE).path == tmp_path / "onnx" / "model.onnx"
    assert b.variant("onnx", DENSE).path == tmp_path / "dense" / "onnx" / "model.onnx"
    assert b.variant("torch", DENSE).path == tmp_path / "dense" / "program.pt2"
    assert [x["layer"] for x in b.sparse_layers] == ["fc1"]
    assert b.check_reason("onnx", "fc1") == {"support": "runs dense", "reason": "r"}
    assert not b.check_files().recorded  # no hashes recorded: nothing to refuse
