"""Released-model format (models/io.py): round trip, and refusal of broken, tampered and pickle files."""
from __future__ import annotations

import hashlib
import json
import pickle
import struct

import pytest
import torch
from safetensors.torch import save as save_safetensors

from kd_depth_core.models import create_model
from kd_depth_core.models.io import (
    CHECKSUM_KEY,
    METADATA_KEY,
    ModelFileError,
    ModelMetadata,
    load_model,
    read_metadata,
    save_model,
)

TINY = {"backbone": "lcnet_050", "uncertainty": True}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = create_model("student_lcnet", **TINY).eval()
    meta = ModelMetadata.from_model(model, input_height=64, input_width=96, min_depth=0.1, max_depth=80.0,
                                    scale_kind="metric", focal_length_px=72.5,
                                    training_config={"task": {"name": "distill"}})
    return model, meta


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("io") / "tiny.safetensors"
    save_model(path, *tiny)
    return path


def write_released(path, state, meta_dict, checksum=True):
    """An independent writer of the format (safetensors + JSON metadata + data checksum)."""
    blob = save_safetensors(state, metadata={METADATA_KEY: json.dumps(meta_dict)})
    header_len = struct.unpack("<Q", blob[:8])[0]
    extra = {CHECKSUM_KEY: hashlib.sha256(blob[8 + header_len:]).hexdigest()} if checksum else {}
    path.write_bytes(save_safetensors(state, metadata={METADATA_KEY: json.dumps(meta_dict), **extra}))
    return path


def test_round_trip_restores_weights_metadata_and_outputs(tiny, saved):
    model, meta = tiny
    loaded, loaded_meta = load_model(saved)
    assert loaded_meta == meta
    assert loaded_meta.model_kwargs == {**TINY, "decoder_channels": list(model.model_spec["kwargs"]["decoder_channels"])}
    assert isinstance(loaded_meta.model_kwargs["decoder_channels"], list)  # as JSON reads it back
    assert (loaded_meta.stereo, loaded_meta.has_uncertainty, loaded_meta.size_multiple) == (False, True, 32)
    assert not loaded.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    image = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(image)["disp"][0], model(image)["disp"][0], rtol=0, atol=0)
    assert read_metadata(saved) == meta
    assert not list(saved.parent.glob(".*tmp")), "atomic write left a temporary file"


def test_truncated_file_is_refused_naming_it(saved, tmp_path):
    blob = saved.read_bytes()
    cut_data = tmp_path / "cut_data.safetensors"
    cut_data.write_bytes(blob[:-100])
    with pytest.raises(ModelFileError, match=r"cut_data\.safetensors.*(checksum|truncated)"):
        load_model(cut_data)
    cut_header = tmp_path / "cut_header.safetensors"
    cut_header.write_bytes(blob[:40])
    with pytest.raises(ModelFileError, match=r"cut_header\.safetensors: truncated"):
        read_metadata(cut_header)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty"):
        load_model(empty)


def test_tampered_weights_and_header_are_refused(saved, tmp_path):
    blob = bytearray(saved.read_bytes())
    blob[-5] ^= 0xFF  # one flipped byte in the last tensor
    flipped = tmp_path / "flipped.safetensors"
    flipped.write_bytes(bytes(blob))
    with pytest.raises(ModelFileError, match=r"flipped\.safetensors: the weights do not match the checksum"):
        load_model(flipped)
    # Same-length edit of the JSON metadata in the header: the field is named.
    text = saved.read_bytes().replace(b'\\"scale_kind\\": \\"metric\\"', b'\\"scale_kind\\": \\"metrix\\"')
    assert text != saved.read_bytes()
    edited = tmp_path / "edited.safetensors"
    edited.write_bytes(text)
    with pytest.raises(ModelFileError, match=r"edited\.safetensors: field 'scale_kind'"):
        read_metadata(edited)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["evil.safetensors", "evil.bin2"])
def test_pickle_content_is_never_unpickled(tmp_path, name):
    marker = tmp_path / "pwned"
    path = tmp_path / name
    path.write_bytes(pickle.dumps(_Exploit(str(marker))))
    with pytest.raises(ModelFileError, match=r"evil\.(safetensors|bin2).*Python pickle"):
        load_model(path)
    assert not marker.exists()
    zipped = tmp_path / "zipped.safetensors"
    torch.save({"weight": torch.zeros(2)}, zipped)  # torch.save's zip + pickle format
    with pytest.raises(ModelFileError, match=r"zipped\.safetensors.*zip archive"):
        read_metadata(zipped)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt"])
def test_pickle_suffix_is_refused_with_advice(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(ModelFileError, match=r"never unpickles.*weights_only=True.*save_model"):
        load_model(path)


def test_missing_unknown_and_future_metadata_fields_are_named(tiny, tmp_path):
    model, meta = tiny
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    data = meta.to_dict()
    del data["focal_length_px"]
    with pytest.raises(ModelFileError, match=r"missing\.safetensors: metadata field\(s\) missing: focal_length_px"):
        read_metadata(write_released(tmp_path / "missing.safetensors", state, data))
    with pytest.raises(ModelFileError, match="unknown metadata field.*colour"):
        ModelMetadata.from_dict({**meta.to_dict(), "colour": "red"})
    with pytest.raises(ModelFileError, match="format_version 99 is not supported"):
        ModelMetadata.from_dict({**meta.to_dict(), "format_version": 99})
    with pytest.raises(ModelFileError, match="'input_width'.*multiple of size_multiple=32"):
        ModelMetadata.from_dict({**meta.to_dict(), "input_width": 100})
    with pytest.raises(ModelFileError, match="'max_depth'.*0 < min_depth"):
        ModelMetadata.from_dict({**meta.to_dict(), "max_depth": 0.05})


def test_training_baseline_round_trips_and_older_files_load_with_it_unknown(tiny, tmp_path):
    model, meta = tiny
    assert meta.baseline_m is None  # not given: unknown
    stereo_meta = ModelMetadata.from_dict({**meta.to_dict(), "baseline_m": 0.54})
    path = save_model(tmp_path / "rig.safetensors", model, stereo_meta)
    assert read_metadata(path).baseline_m == 0.54 and load_model(path)[1].baseline_m == 0.54
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    older = meta.to_dict()
    del older["baseline_m"]  # a file written before the field existed
    assert read_metadata(write_released(tmp_path / "older.safetensors", state, older)).baseline_m is None
    for bad in (0.0, -0.1, True, "0.5", float("inf")):
        with pytest.raises(ModelFileError, match="'baseline_m'.*positive number of metres or null"):
            ModelMetadata.from_dict({**meta.to_dict(), "baseline_m": bad})


def test_files_without_metadata_checksum_or_matching_weights(tiny, tmp_path):
    model, meta = tiny
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    plain = tmp_path / "plain.safetensors"
    plain.write_bytes(save_safetensors(state))
    with pytest.raises(ModelFileError, match="plain.safetensors: safetensors file without kd-depth metadata"):
        load_model(plain)
    unsummed = write_released(tmp_path / "unsummed.safetensors", state, meta.to_dict(), checksum=False)
    with pytest.raises(ModelFileError, match="no 'kd_depth_sha256' checksum"):
        load_model(unsummed)
    narrow = [8] * len(meta.model_kwargs["decoder_channels"])
    other = {**meta.to_dict(), "model_kwargs": {**meta.model_kwargs, "decoder_channels": narrow}}
    with pytest.raises(ModelFileError, match="weights do not fit 'student_lcnet'"):
        load_model(write_released(tmp_path / "other.safetensors", state, other))
    unknown = {**meta.to_dict(), "model_name": "no_such_net"}
    with pytest.raises(ModelFileError, match="cannot rebuild model 'no_such_net'"):
        load_model(write_released(tmp_path / "unknown.safetensors", state, unknown))


def test_save_validates_before_writing(tiny, tmp_path):
    model, meta = tiny
    with pytest.raises(ValueError, match="'.safetensors'"):
        save_model(tmp_path / "m.pt", model, meta)
    with pytest.raises(TypeError, match="ModelMetadata"):
        save_model(tmp_path / "m.safetensors", model, meta.to_dict())
    bad = ModelMetadata(**{**meta.to_dict(), "training_config": {"fn": print}})
    with pytest.raises(ValueError, match="training_config"):
        save_model(tmp_path / "m.safetensors", model, bad)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="model_spec"):
        ModelMetadata.from_model(torch.nn.Conv2d(3, 1, 1), input_height=32, input_width=32, min_depth=0.1,
                                 max_depth=10.0, scale_kind="relative", focal_length_px=None)
