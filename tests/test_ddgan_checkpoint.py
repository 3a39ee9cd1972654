"""Official DDGAN checkpoints (``netG_*.pth``): a state dict written here in the official
layout (NCSN++ with adaptive group norms: one flat ``all_modules`` list, NIN attention
matrices, gamma/beta style layers, ``module.`` before every key) imports into genbench's
DDGAN, gives the output the official network computes from it, and exports back.

The official names and shapes, and the official forward pass, are written below from the
construction rules of ``ncsnpp_generator_adagn`` (the order in which its constructor appends
modules, and what each one computes), independently of ``ddgan_checkpoint``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from genbench.benchmarks.checkpoints import load_checkpoint
from genbench.core.errors import CheckpointError
from genbench.generators import DataShape
from genbench.generators.ddgan import DDGAN, DDGANConfig
from genbench.generators.ddgan_checkpoint import export_ddgan_state
from genbench.generators.ddgan_nets import fir_down, fir_up

CPU = torch.device("cpu")
DATA = DataShape(3, 16, None)
TINY = {
    "channels": 16,
    "channel_mult": (1, 2),
    "num_res_blocks": 1,
    "attn_resolutions": (8,),
    "nz": 8,
    "z_emb_dim": 16,
    "n_mlp": 2,
    "num_timesteps": 4,
    "d_channels": 8,
    "d_channel_mult": (2, 4),
}


def _ddgan(seed: int, **config) -> DDGAN:
    torch.manual_seed(seed)
    return DDGAN(DDGANConfig(**{**TINY, **config}), DATA, CPU)


def official_modules(nf: int, mult: tuple[int, ...], blocks: int, attn: tuple[int, ...],
                     size: int) -> list[tuple]:  # fmt: skip
    """``all_modules`` in the constructor's order: ("linear", in, out), ("conv", in, out),
    ("res", in, out, has_skip, resample), ("attn", C), ("pyramid", in, out), ("norm", C)."""
    mods: list[tuple] = [("linear", nf, 4 * nf), ("linear", 4 * nf, 4 * nf), ("conv", 3, nf)]
    sizes = [size >> i for i in range(len(mult))]
    hs, cin, pyramid = [nf], nf, 3
    for level, m in enumerate(mult):
        for _ in range(blocks):
            mods.append(("res", cin, nf * m, cin != nf * m, None))
            cin = nf * m
            if sizes[level] in attn:
                mods.append(("attn", cin))
            hs.append(cin)
        if level != len(mult) - 1:
            mods += [("res", cin, cin, True, "down"), ("pyramid", pyramid, cin)]
            pyramid = cin
            hs.append(cin)
    mods += [("res", cin, cin, False, None), ("attn", cin), ("res", cin, cin, False, None)]
    for level in reversed(range(len(mult))):
        for _ in range(blocks + 1):
            skip = hs.pop()
            mods.append(("res", cin + skip, nf * mult[level], True, None))
            cin = nf * mult[level]
        if sizes[level] in attn:
            mods.append(("attn", cin))
        if level != 0:
            mods.append(("res", cin, cin, True, "up"))
    return [*mods, ("norm", cin), ("conv", cin, 3)]


def official_shapes(nf=16, mult=(1, 2), blocks=1, attn=(8,), size=16, nz=8, zdim=16, n_mlp=2):
    """{official key (no ``module.``): shape} for an NCSN++ AdaGN generator."""
    out: dict[str, tuple[int, ...]] = {}
    for i, (kind, *a) in enumerate(official_modules(nf, mult, blocks, attn, size)):
        p = f"all_modules.{i}"
        if kind == "linear":
            out |= {f"{p}.weight": (a[1], a[0]), f"{p}.bias": (a[1],)}
        elif kind == "conv":
            out |= {f"{p}.weight": (a[1], a[0], 3, 3), f"{p}.bias": (a[1],)}
        elif kind == "norm":
            out |= {f"{p}.weight": (a[0],), f"{p}.bias": (a[0],)}
        elif kind == "pyramid":
            out |= {f"{p}.Conv2d_0.weight": (a[1], a[0], 3, 3), f"{p}.Conv2d_0.bias": (a[1],)}
        elif kind == "attn":
            c = a[0]
            out |= {f"{p}.GroupNorm_0.weight": (c,), f"{p}.GroupNorm_0.bias": (c,)}
            for n in range(4):
                out |= {f"{p}.NIN_{n}.W": (c, c), f"{p}.NIN_{n}.b": (c,)}
        else:
            cin, cout, skip, _ = a
            out |= {
                f"{p}.GroupNorm_0.style.weight": (2 * cin, zdim),
                f"{p}.GroupNorm_0.style.bias": (2 * cin,),
                f"{p}.Conv_0.weight": (cout, cin, 3, 3), f"{p}.Conv_0.bias": (cout,),
                f"{p}.Dense_0.weight": (cout, 4 * nf), f"{p}.Dense_0.bias": (cout,),
                f"{p}.GroupNorm_1.style.weight": (2 * cout, zdim),
                f"{p}.GroupNorm_1.style.bias": (2 * cout,),
                f"{p}.Conv_1.weight": (cout, cout, 3, 3), f"{p}.Conv_1.bias": (cout,),
            }  # fmt: skip
            if skip:
                out |= {f"{p}.Conv_2.weight": (cout, cin, 1, 1), f"{p}.Conv_2.bias": (cout,)}
    out |= {"z_transform.1.weight": (zdim, nz), "z_transform.1.bias": (zdim,)}
    for k in range(n_mlp):
        out |= {f"z_transform.{3 + 2 * k}.weight": (zdim, zdim),
                f"z_transform.{3 + 2 * k}.bias": (zdim,)}  # fmt: skip
    return out


def random_official_state(seed: int) -> dict[str, torch.Tensor]:
    """Random tensors in the official layout; style biases near (gamma, beta) = (1, 0), as
    the official initialisation sets them, so activations stay of order one."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in official_shapes().items():
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        value = torch.randn(shape, generator=g) / math.sqrt(fan_in)
        if name.endswith("style.bias"):
            value = 0.1 * torch.randn(shape, generator=g)
            value[: shape[0] // 2] += 1.0
        state[name] = value
    return state


def official_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor,
                     z: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """The official NCSN++ AdaGN forward pass on a state dict, written functionally; ``t``
    is the official time index (0..T-1)."""
    mods = official_modules(16, (1, 2), 1, (8,), 16)
    it = iter(enumerate(mods))

    def take(kind: str) -> tuple[str, tuple]:
        i, (k, *a) = next(it)
        assert k == kind, (i, k, kind)
        return f"all_modules.{i}", tuple(a)

    def lin(p, h):
        return F.linear(h, sd[f"{p}.weight"], sd[f"{p}.bias"])

    def conv(p, h, padding=1, stride=1):
        return F.conv2d(h, sd[f"{p}.weight"], sd[f"{p}.bias"], stride=stride, padding=padding)

    def ada_norm(p, h, zemb):
        gamma, beta = lin(f"{p}.style", zemb)[:, :, None, None].chunk(2, dim=1)
        return gamma * F.group_norm(h, min(h.shape[1] // 4, 32), eps=1e-6) + beta

    def res(h, temb, zemb):
        p, (_, _, skip, resample) = take("res")
        out = F.silu(ada_norm(f"{p}.GroupNorm_0", h, zemb))
        if resample:
            op = fir_down if resample == "down" else fir_up
            out, h = op(out), op(h)
        out = conv(f"{p}.Conv_0", out) + lin(f"{p}.Dense_0", F.silu(temb))[:, :, None, None]
        out = conv(f"{p}.Conv_1", F.silu(ada_norm(f"{p}.GroupNorm_1", out, zemb)))
        if skip:
            h = conv(f"{p}.Conv_2", h, padding=0)
        return (h + out) / math.sqrt(2)

    def attn(h):
        p, _ = take("attn")
        B, C, H, W = h.shape
        n = F.group_norm(h, min(C // 4, 32), sd[f"{p}.GroupNorm_0.weight"],
                         sd[f"{p}.GroupNorm_0.bias"], eps=1e-6)  # fmt: skip

        def nin(k, u):
            return torch.einsum("bchw,co->bohw", u, sd[f"{p}.NIN_{k}.W"]) + sd[
                f"{p}.NIN_{k}.b"
            ].view(1, -1, 1, 1)

        q, k, v = nin(0, n), nin(1, n), nin(2, n)
        w = torch.einsum("bchw,bcij->bhwij", q, k) * C**-0.5
        w = F.softmax(w.reshape(B, H, W, H * W), dim=-1).reshape(B, H, W, H, W)
        return (h + nin(3, torch.einsum("bhwij,bcij->bchw", w, v))) / math.sqrt(2)

    zemb = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)
    for layer in range(3):
        zemb = F.silu(lin(f"z_transform.{1 + 2 * layer}", zemb))
    half = 8
    freqs = torch.exp(-math.log(10000) * torch.arange(half) / (half - 1))
    temb = t.float()[:, None] * freqs[None]
    temb = torch.cat([temb.sin(), temb.cos()], dim=1)
    temb = lin(take("linear")[0], temb)
    temb = lin(take("linear")[0], F.silu(temb))
    hs, pyramid = [conv(take("conv")[0], x)], x
    for level in range(2):
        h = res(hs[-1], temb, zemb)
        if h.shape[-1] == 8:
            h = attn(h)
        hs.append(h)
        if level == 0:
            h = res(hs[-1], temb, zemb)
            p, _ = take("pyramid")
            blur = torch.tensor([1.0, 3.0, 3.0, 1.0])
            kernel = torch.outer(blur, blur) / 64
            blurred = F.conv2d(pyramid, kernel.expand(3, 1, 4, 4), padding=2, groups=3)
            pyramid = (conv(f"{p}.Conv2d_0", blurred, padding=0, stride=2) + h) / math.sqrt(2)
            hs.append(pyramid)
    h = res(hs[-1], temb, zemb)
    h = res(attn(h), temb, zemb)
    for level in (1, 0):
        for _ in range(2):
            h = res(torch.cat([h, hs.pop()], dim=1), temb, zemb)
        if h.shape[-1] == 8:
            h = attn(h)
        if level:
            h = res(h, temb, zemb)
    p, _ = take("norm")
    h = F.silu(F.group_norm(h, 4, sd[f"{p}.weight"], sd[f"{p}.bias"], eps=1e-6))
    h = conv(take("conv")[0], h)
    assert next(it, None) is None and not hs
    return torch.tanh(h)


def _save(tmp_path: Path, state: dict[str, torch.Tensor], name="netG_1200.pth") -> Path:
    path = tmp_path / name
    torch.save({f"module.{k}": v for k, v in state.items()}, path)  # as DDP-wrapped netG saves
    return path


def test_export_has_the_official_names_and_shapes() -> None:
    exported = export_ddgan_state(_ddgan(0).G)
    assert {k: tuple(v.shape) for k, v in exported.items()} == {
        f"module.{k}": v for k, v in official_shapes().items()
    }


def test_an_official_checkpoint_gives_the_official_networks_output(tmp_path: Path) -> None:
    official = random_official_state(1)
    gen = _ddgan(2)
    d_before = {k: v.clone() for k, v in gen.D.state_dict().items()}
    load_checkpoint(gen, _save(tmp_path, official), "ddgan")
    g = torch.Generator().manual_seed(3)
    x, z = torch.randn(4, 3, 16, 16, generator=g), torch.randn(4, 8, generator=g)
    t = torch.tensor([1, 2, 3, 4])  # genbench's reverse steps; the official code embeds t - 1
    with torch.no_grad():
        ours = gen.G.eval()(x, z, t)
        theirs = official_forward(official, x, t - 1, z)
    assert ours.std() > 0.1  # a generic output, not a saturated or constant one
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    # Back out: every tensor as it came in, except the key projection's bias, which the
    # softmax cancels (its random value above did not change the output): zeros.
    exported = export_ddgan_state(gen.G)
    for name, value in official.items():
        want = torch.zeros_like(value) if name.endswith("NIN_1.b") else value
        torch.testing.assert_close(exported[f"module.{name}"], want, rtol=0, atol=1e-7)
    for key, value in gen.D.state_dict().items():  # the files hold G only
        assert torch.equal(value, d_before[key])


def test_a_genbench_generator_round_trips_through_the_official_layout(tmp_path: Path) -> None:
    source = _ddgan(4)
    for p in source.G.parameters():  # away from the zero initialisation of branch ends
        p.data += 0.05 * torch.randn_like(p)
    path = tmp_path / "netG.pth"
    torch.save(export_ddgan_state(source.G), path)
    target = _ddgan(5)
    load_checkpoint(target, path, "ddgan")
    for key, value in source.G.state_dict().items():
        torch.testing.assert_close(target.G.state_dict()[key], value, rtol=0, atol=1e-7)
    seeds = [0, 1, 2]
    torch.testing.assert_close(target.sample(seeds), source.sample(seeds), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"channels": 32}, "all_modules.0.weight is (64, 16), which does not fit"),
        ({"n_mlp": 1}, "holds module.z_transform.5.bias, which this config's generator has"),
        ({"attn_resolutions": ()}, "the checkpoint has no module.all_modules.7.GroupNorm_0.style"),
    ],
)
def test_a_checkpoint_of_another_config_is_refused_in_one_line(
    tmp_path: Path, change: dict, expected: str
) -> None:
    path = _save(tmp_path, random_official_state(1))
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(_ddgan(2, **change), path, "ddgan")
    assert expected in str(exc.value) and "\n" not in str(exc.value)


def test_foreign_files_are_refused_in_one_line(tmp_path: Path) -> None:
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.ones(2, 2)}, other)
    with pytest.raises(CheckpointError, match="nor an official DDGAN generator"):
        load_checkpoint(_ddgan(0), other, "ddgan")
    training_state = tmp_path / "content.pth"  # the official resume file: not tensors only
    torch.save({"epoch": 3, "args": {"lr": 1.0}, "netG_dict": {}}, training_state)
    with pytest.raises(CheckpointError, match="holds no state dict"):
        load_checkpoint(_ddgan(0), training_state, "ddgan")
