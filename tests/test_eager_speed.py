"""The eager forms that make DN fast on a CPU (issue 25) give the same numbers as the plain ones,
and keep what made them fast: large buffers reused, channels-last maps left channels-last."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dn_cli.dense_norm import DenseNorm2d, DensePass, Neighbourhood, PassScope, _centred_in, centred_range

T, M = 64, 16
SIDE = T + 2 * M


def test_the_crop_of_a_part_is_the_mask_of_a_part():
    """The eager layer crops the feature pixels the compiled one masks: the same ones, for every
    part of every padded tile size the tests and the slivers can make."""
    for n in (1, 2, 3, 4, 6, 8, 12, 24, 48):
        for side in (8, 12, 96):
            parts = [(a, b) for a in range(side) for b in range(a + 1, side + 1)]
            masks = _centred_in(torch.tensor(parts), n, side)
            for (start, stop), mask in zip(parts, masks, strict=True):
                first, end = centred_range(start, stop, n, side)
                assert mask.nonzero().flatten().tolist() == list(range(first, end)), (n, side, start, stop)


def layer(channels: int, affine: bool) -> DenseNorm2d:
    dense = DenseNorm2d(channels, 1e-5, PassScope(), index=0)
    if affine:
        dense.weight = nn.Parameter(torch.randn(channels), requires_grad=False)
        dense.bias = nn.Parameter(torch.randn(channels), requires_grad=False)
    return dense


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_eager_instance_norm_equals_torchs(affine, channels_last):
    """On a CPU the plain layer is moments then one ``x·s + t`` pass, not the batch-norm kernel:
    the same numbers as nn.InstanceNorm2d, and the input's memory order kept."""
    torch.manual_seed(0)
    dense = layer(8, affine)
    x = torch.randn(3, 8, 24, 20) * 4 + 2
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    reference = nn.InstanceNorm2d(8, affine=affine)
    if affine:
        reference.weight.data, reference.bias.data = dense.weight.data, dense.bias.data
    with torch.inference_mode():
        y = dense(x)
    torch.testing.assert_close(y, reference(x.contiguous()).detach(), rtol=1e-5, atol=1e-5)
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.parametrize("affine", [False, True])
def test_eager_crops_equal_the_compiled_forms_masks(affine):
    """Tiles that reach past the image: the eager layer's per-tile crops give the numbers of the
    masked form a compiled model runs (output and moments), whole tiles in the batch included."""
    torch.manual_seed(1)
    dense = layer(6, affine)
    x = (torch.randn(4, 6, 24, 24) * 3 + 1).contiguous(memory_format=torch.channels_last)
    inside = ((16, 96, 16, 96), (0, 96, 0, 96), (0, 40, 5, 96), (0, 96, 0, 17))
    collect = DensePass("collect", T, M, inside=inside, inside_tensor=torch.tensor(inside))
    results = []
    for fused in (False, True):
        dense.fused = fused
        with torch.inference_mode(), dense.scope.running(collect):
            results.append(dense.collect(x))
    for eager, masked in zip(*results, strict=True):
        torch.testing.assert_close(eager, masked, rtol=1e-5, atol=1e-5)


def test_the_dense_pass_keeps_channels_last_maps_channels_last():
    """The runner's tiles arrive channels-last and the convolutions keep that order; a DN layer
    that answered in the other order made every following convolution convert (issue 25)."""
    dense = layer(4, True)
    x = torch.randn(2, 4, 24, 24).contiguous(memory_format=torch.channels_last)
    moments = torch.rand(2, 3, 3, 2, 4) + 0.5
    for complete in (True, False):
        valid = torch.ones(2, 3, 3)
        if not complete:
            valid[:, 0] = 0
        neighbourhood = Neighbourhood([moments], valid, complete)
        with torch.inference_mode(), dense.scope.running(DensePass("apply", T, M, neighbourhood=neighbourhood)):
            y = dense(x)
        assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous(), complete


REMADE = """
import resource, sys
import dn_cli.cli  # what the dn command imports first, before torch
import torch
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def resident():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS")) * 1024
torch.empty(50_000_000).fill_(1)  # 200 MB, touched and freed, as each batch's feature maps are
before, size = faults(), resident()
for _ in range(4):
    torch.empty(50_000_000).fill_(1)
print(faults() - before, resident() - size)
"""


THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@pytest.mark.skipif(not THP.exists() or "[never]" in THP.read_text(), reason="no transparent huge pages here")
def test_the_dn_command_faults_its_large_tensors_in_on_huge_pages():
    """Under the dn command a 200 MB tensor made again and again costs a few hundred page faults
    each time, not 49 000 (4 KB pages), and the process does not grow (memory kept for reuse in
    glibc's heap did grow: a batch's maps every batch)."""
    done = subprocess.run([sys.executable, "-c", REMADE], capture_output=True, text=True, check=True)
    faults, grown = map(int, done.stdout.split())
    assert faults < 4 * 5_000 and grown < 50e6, (faults, grown)
    env = {**os.environ, "THP_MEM_ALLOC_ENABLE": "0"}  # a user's own setting is kept, and shows the difference
    done = subprocess.run([sys.executable, "-c", REMADE], capture_output=True, text=True, check=True, env=env)
    assert int(done.stdout.split()[0]) > 4 * 40_000
