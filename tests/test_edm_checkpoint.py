"""Official EDM checkpoints (``network-snapshot-*.pkl``): a pickle written here in EDM's
layout (NVIDIA's persistence wrappers, their source inside, an EasyDict of data set
arguments) imports into genbench's EDM tensor for tensor, without importing or running
anything of the file."""

from __future__ import annotations

import collections
import pickle
import sys
import types
from pathlib import Path

import pytest
import torch

from genbench.benchmarks.checkpoints import load_checkpoint
from genbench.core.errors import CheckpointError
from genbench.generators import DataShape
from genbench.generators.edm import EDM, EDMConfig
from genbench.generators.edm_checkpoint import export_edm_state
from tests.trainkit import wake

CPU = torch.device("cpu")
DATA = DataShape(1, 16, 10)
TINY = {
    "channels": 16,
    "channel_mult": (1, 2),
    "num_res_blocks": 1,
    "attn_resolutions": (8,),
    "dropout": 0.0,
    "norm_groups": 8,
    "time_embed_dim": 64,
    "augment": 0.12,  # EDM's CIFAR-10 augmentation: map_augment exists
}
NEVER = "raise SystemExit('the checkpoint's own source code must never run')"


def _edm(seed: int, **config) -> EDM:
    torch.manual_seed(seed)
    return wake(EDM(EDMConfig(**{**TINY, **config}), DATA, CPU), seed)


def _tree(flat: dict[str, torch.Tensor]) -> dict:
    root: dict = {}
    for name, value in flat.items():
        node = root
        *path, leaf = name.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return root


def write_edm_pickle(path: Path, official: dict[str, torch.Tensor], monkeypatch) -> None:
    """``{"ema": EDMPrecond(model=SongUNet)}`` etc. as EDM's training loop pickles it: every
    network a persistent object whose reduce is ``_reconstruct_persistent_obj(meta)``."""
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # what unpickling with EDM's code would call
        raise AssertionError("EDM's reconstruct must never be called")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util = types.ModuleType("dnnlib.util")
    util.EasyDict = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
    for name, module in (
        ("torch_utils", types.ModuleType("torch_utils")),
        ("torch_utils.persistence", persistence),
        ("dnnlib", types.ModuleType("dnnlib")),
        ("dnnlib.util", util),
    ):
        monkeypatch.setitem(sys.modules, name, module)

    class Persistent:
        def __init__(self, class_name: str, state: dict) -> None:
            self.class_name, self.state = class_name, state

        def __reduce__(self):
            meta = {"type": "class", "version": 6, "module_src": NEVER,
                    "class_name": self.class_name, "state": self.state}  # fmt: skip
            return (_reconstruct_persistent_obj, (meta,))

    def module(class_name: str, tree: dict) -> Persistent:
        params = collections.OrderedDict(
            (k, torch.nn.Parameter(v, requires_grad=False))
            for k, v in tree.items()
            if isinstance(v, torch.Tensor) and k != "resample_filter"
        )
        buffers = collections.OrderedDict((k, v) for k, v in tree.items() if k == "resample_filter")
        children = collections.OrderedDict(
            (k, module("Block", v)) for k, v in tree.items() if isinstance(v, dict)
        )
        state = {"training": False, "_parameters": params, "_buffers": buffers,
                 "_non_persistent_buffers_set": set(), "_modules": children,
                 "_init_kwargs": {"model_channels": 16}}  # fmt: skip
        return Persistent(class_name, state)

    tree = _tree(official)
    ema = module("EDMPrecond", {})
    ema.state["_modules"]["model"] = module("SongUNet", tree)
    ema.state.update(sigma_data=0.5, label_dim=10)
    snapshot = {
        "ema": ema,
        "loss_fn": Persistent("EDMLoss", {"P_mean": -1.2, "P_std": 1.2}),
        "augment_pipe": None,
        "dataset_kwargs": util.EasyDict(path="datasets/cifar10-32x32.zip", use_labels=True),
    }
    with path.open("wb") as fh:
        pickle.dump(snapshot, fh, protocol=4)
    for name in ("torch_utils.persistence", "torch_utils", "dnnlib.util", "dnnlib"):
        monkeypatch.delitem(sys.modules, name)  # the reader must not find them either


def test_an_official_pickle_imports_tensor_for_tensor(tmp_path: Path, monkeypatch) -> None:
    source = _edm(1)
    official = export_edm_state(source.net, 16, (1, 2))
    assert "enc.16x16_conv.weight" in official and "dec.8x8_in0.qkv.weight" in official
    assert "dec.16x16_aux_conv.weight" in official and "map_augment.weight" in official
    assert official["enc.8x8_down.conv0.resample_filter"].shape == (1, 1, 2, 2)
    path = tmp_path / "network-snapshot-000100.pkl"
    write_edm_pickle(path, official, monkeypatch)

    target = _edm(2)
    assert not torch.equal(target.net.conv_in.weight, source.net.conv_in.weight)
    load_checkpoint(target, path, "edm")
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value, rtol=0, atol=0)
    assert "torch_utils" not in sys.modules and "dnnlib" not in sys.modules
    # The same network: the same denoiser output.
    x = torch.randn(2, 1, 16, 16)
    labels = torch.tensor([3, 7])
    source.eval(), target.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            target.net(x, torch.full((2,), 0.3), labels),
            source.net(x, torch.full((2,), 0.3), labels),
        )


def test_names_follow_edm_songunet_for_the_cifar10_layout() -> None:
    # EDM's SongUNet names its blocks by resolution: written out here from its construction
    # rules for DDPM++ at 32 px, channel_mult (2, 2, 2), 4 blocks, attention at 16.
    edm = EDM(EDMConfig(channels=16, time_embed_dim=64), DataShape(3, 32, 10), CPU)
    official = export_edm_state(edm.net, 32, (2, 2, 2))
    blocks = {".".join(k.split(".")[:2]) for k in official if k.startswith(("enc.", "dec."))}
    expected = {"enc.32x32_conv", "dec.8x8_in0", "dec.8x8_in1", "dec.32x32_aux_norm"}
    expected |= {"dec.32x32_aux_conv", "enc.16x16_down", "enc.8x8_down", "dec.16x16_up"}
    expected |= {"dec.32x32_up"}
    expected |= {f"enc.{r}x{r}_block{i}" for r in (32, 16, 8) for i in range(4)}
    expected |= {f"dec.{r}x{r}_block{i}" for r in (32, 16, 8) for i in range(5)}
    assert blocks == expected
    attention = {".".join(k.split(".")[:2]) for k in official if k.endswith("qkv.weight")}
    assert attention == {f"enc.16x16_block{i}" for i in range(4)} | {
        "dec.8x8_in0",
        "dec.16x16_block4",
    }
    assert official["map_label.weight"].shape == (16, 10)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"channels": 32}, "map_label.weight is (16, 10), this config's network needs (32, 10)"),
        ({"augment": 0.0}, "map_augment.weight, which this config's network has no place for"),
    ],
)  # fmt: skip
def test_a_checkpoint_of_another_config_is_refused_in_one_line(
    tmp_path: Path, monkeypatch, change: dict, expected: str
) -> None:
    path = tmp_path / "snapshot.pkl"
    write_edm_pickle(path, export_edm_state(_edm(1).net, 16, (1, 2)), monkeypatch)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(_edm(2, **change), path, "edm")
    assert expected in str(exc.value) and "\n" not in str(exc.value)


def test_fir_resampling_and_foreign_files_are_refused(tmp_path: Path, monkeypatch) -> None:
    official = export_edm_state(_edm(1).net, 16, (1, 2))
    official["enc.8x8_down.conv0.resample_filter"] = torch.tensor([[[[1.0, 3.0], [3.0, 9.0]]]]) / 16
    path = tmp_path / "fir.pkl"
    write_edm_pickle(path, official, monkeypatch)
    with pytest.raises(CheckpointError, match="FIR resampling"):
        load_checkpoint(_edm(2), path, "edm")
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a pickle at all")
    with pytest.raises(CheckpointError, match="not a readable pickle"):
        load_checkpoint(_edm(2), junk, "edm")


def test_a_pickle_that_calls_code_runs_nothing(tmp_path: Path) -> None:
    import os

    from genbench.core.safe_pickle import Foreign, load_object

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"ema": Evil(), "w": torch.ones(2)}))
    obj = load_object(path)
    assert isinstance(obj["ema"], Foreign) and obj["ema"].name == "posix.system"
    assert obj["ema"].args == (f"touch {marker}",) and not marker.exists()
    assert torch.equal(obj["w"], torch.ones(2))
