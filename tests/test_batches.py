"""Data paths: device-resident and host (background thread) batches equal PoseDataset's for the same (seed, epoch)."""

import numpy as np
import pytest
import torch

from kdbench.errors import KdbenchError
from kdbench.runners.batches import DeviceBatches, HostBatches, choose_data_path, make_batches
from kdbench.scenes.cache import load_split_cache
from kdbench.scenes.dataset import PoseDataset

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("normalize", ["imagenet", "mean", "sckd"])
def test_device_and_host_batches_equal_the_datasets(tiny_data_root, normalize):
    cache = load_split_cache("SynthRoom", tiny_data_root, "train", 32)
    ds = PoseDataset(cache, 28, train=True, normalize=normalize, seed=3)
    cpu = torch.device("cpu")
    for epoch in (0, 5):
        expected = list(ds.batches(4, shuffle=True, epoch=epoch, drop_last=True))
        plans = ds.epoch_plans(4, shuffle=True, epoch=epoch, drop_last=True)
        assert len(plans) == len(expected) == 4
        for source in (DeviceBatches(ds, cpu), HostBatches(ds, cpu)):
            got = list(source.iterate(plans))
            source.close()
            assert len(got) == len(expected)
            for (x, pose), (ex, epose) in zip(got, expected):
                assert torch.equal(x, ex) and torch.equal(pose, epose)
    # crops really move between epochs (an equality of constant batches would prove nothing)
    a, b = ds.epoch_plans(4, True, epoch=0), ds.epoch_plans(4, True, epoch=1)
    assert not all(np.array_equal(p.ys, q.ys) and np.array_equal(p.indices, q.indices) for p, q in zip(a, b))


def test_data_path_choice(tiny_data_root):
    ds = PoseDataset(load_split_cache("SynthRoom", tiny_data_root, "train", 32), 28, train=True)
    cpu = torch.device("cpu")
    assert choose_data_path(ds, cpu) == "host"  # on CPU the memory-mapped cache is already "resident"
    assert isinstance(make_batches(ds, cpu, "device"), DeviceBatches)
    with pytest.raises(KdbenchError, match="data path must be one of"):
        choose_data_path(ds, cpu, "gpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_device_batches_on_cuda_equal_the_datasets(tiny_data_root):
    ds = PoseDataset(load_split_cache("SynthRoom", tiny_data_root, "train", 32), 28, train=True, seed=1)
    cuda = torch.device("cuda")
    assert choose_data_path(ds, cuda, share=0.25) == "device" and choose_data_path(ds, cuda, share=0.0) == "host"
    plans = ds.epoch_plans(4, shuffle=True, epoch=2, drop_last=True)
    expected = list(ds.batches(4, shuffle=True, epoch=2, drop_last=True))
    for source in (DeviceBatches(ds, cuda), HostBatches(ds, cuda)):
        for (x, pose), (ex, epose) in zip(source.iterate(plans), expected):
            assert x.is_cuda
            torch.testing.assert_close(x.cpu(), ex, rtol=0, atol=1e-5)
            assert torch.equal(pose.cpu(), epose)
        source.close()
