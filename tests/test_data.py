"""deepdoctor.data: shapes, determinism, options, local-file loaders and their errors."""

from __future__ import annotations

import gzip
import pickle
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from deepdoctor import data


def _same_split(a: data.Split, b: data.Split) -> bool:
    return all(
        torch.equal(x, y)
        for x, y in zip(
            (a.X_train, a.y_train, a.X_val, a.y_val),
            (b.X_train, b.y_train, b.X_val, b.y_val),
            strict=True,
        )
    )


# -- embedded sets ------------------------------------------------------------------------


def test_digits_has_1797_samples_of_64_raw_pixels() -> None:
    split = data.load("digits", standardize=False)
    assert len(split.X_train) + len(split.X_val) == 1797
    assert len(split.X_val) == 360  # ceil(0.2 * 1797), stratified
    assert split.input_shape == (64,) and split.n_features == 64
    assert split.n_classes == 10
    assert split.X_train.dtype == torch.float32 and split.y_train.dtype == torch.long
    assert float(split.X_train.min()) == 0.0 and float(split.X_train.max()) == 16.0
    assert sorted(split.y_train.unique().tolist()) == list(range(10))


def test_digits_standardized_with_training_statistics() -> None:
    split = data.load("digits")
    mean, std = split.X_train.mean(0), split.X_train.std(0, unbiased=False)
    assert float(mean.abs().max()) < 1e-5
    varying = std > 0  # a few border pixels are always 0 and stay 0
    assert int(varying.sum()) >= 60
    assert torch.allclose(std[varying], torch.ones(int(varying.sum())), atol=1e-4)
    # the validation part is scaled with the training statistics, so it is only close to 0/1
    assert 0 < float(split.X_val.mean(0).abs().max()) < 0.5


def test_digits_flatten_false_keeps_the_image_shape() -> None:
    split = data.load("digits", flatten=False, standardize=False)
    assert split.input_shape == (1, 8, 8)
    flat = data.load("digits", standardize=False)
    assert torch.equal(split.X_train.reshape(len(split.X_train), -1), flat.X_train)


def test_same_seed_same_tensors_other_seed_other_split() -> None:
    a, b = data.load("digits", seed=3), data.load("digits", seed=3)
    assert _same_split(a, b)
    c = data.load("digits", seed=4)
    assert not torch.equal(a.y_train, c.y_train)


@pytest.mark.parametrize("fraction,n_val", [(0.1, 180), (0.5, 899)])
def test_val_fraction_sets_the_validation_size(fraction: float, n_val: int) -> None:
    split = data.load("digits", val_fraction=fraction)
    assert len(split.X_val) == n_val and len(split.X_train) == 1797 - n_val


def test_mnist1d_has_4000_train_1000_test_of_40_features() -> None:
    split = data.load("mnist1d")
    assert split.X_train.shape == (4000, 40) and split.X_val.shape == (1000, 40)
    assert split.n_classes == 10
    again = data.load("mnist1d", flatten=False)
    assert again.input_shape == (1, 40)
    assert torch.equal(again.X_train.reshape(4000, 40), split.X_train)


def test_mnist1d_is_cached_and_callers_get_copies() -> None:
    first = data._mnist1d()
    first[0][:] = 123.0  # a caller scribbling on its arrays ...
    second = data._mnist1d()
    assert not np.all(second[0] == 123.0)  # ... does not change the cache
    assert data._make_mnist1d.cache_info().hits >= 1


def test_mnist1d_restores_the_global_random_generators() -> None:
    np.random.seed(5)
    random.seed(5)
    np_before, py_before = np.random.get_state()[1].copy(), random.getstate()
    data.load("mnist1d", num_samples=200)  # a small size: a fresh generation, not the cache
    assert np.array_equal(np.random.get_state()[1], np_before)
    assert random.getstate() == py_before


def test_teacher_any_size_and_seeded() -> None:
    split = data.load("teacher", n=500, features=7, classes=3, depth=2, width=16, seed=1)
    assert split.X_train.shape == (400, 7) and split.X_val.shape == (100, 7)
    assert split.n_classes == 3
    counts = np.bincount(split.y_train.numpy(), minlength=3)
    assert counts.min() > 400 / 3 / 3  # the teacher's logits are centred: no class starves
    assert _same_split(
        split, data.load("teacher", n=500, features=7, classes=3, depth=2, width=16, seed=1)
    )
    other = data.load("teacher", n=500, features=7, classes=3, depth=2, width=16, seed=2)
    assert not torch.equal(split.X_train, other.X_train)


def test_spirals_are_2d_with_one_arm_per_class() -> None:
    split = data.load("spirals", n=300, classes=3, standardize=False)
    assert split.X_train.shape == (240, 2) and split.X_val.shape == (60, 2)
    assert np.bincount(split.y_train.numpy()).tolist() == [80, 80, 80]
    radius = split.X_train.norm(dim=1)
    assert float(radius.max()) < 3 * 1.0 + 1.0  # radius up to 3 plus the noise


def test_subset_keeps_that_many_training_samples_stratified() -> None:
    full = data.load("digits", standardize=False)
    small = data.load("digits", subset=100, standardize=False)
    assert len(small.X_train) == 100
    assert np.bincount(small.y_train.numpy()).min() >= 9  # 10 per class, give or take one
    assert torch.equal(small.X_val, full.X_val)  # the validation part is untouched
    assert len(data.load("digits", subset=5000).X_train) == len(full.X_train)


def test_label_noise_flips_exactly_that_fraction_to_other_classes() -> None:
    clean = data.load("digits", seed=2)
    noisy = data.load("digits", seed=2, label_noise=0.3)
    assert torch.equal(clean.X_train, noisy.X_train)
    assert torch.equal(clean.y_val, noisy.y_val)  # only training labels get noise
    flipped = int((clean.y_train != noisy.y_train).sum())
    assert flipped == round(0.3 * len(clean.y_train))  # 431 of 1437


@pytest.mark.parametrize("ratio", [4.0, 10.0])
def test_imbalance_makes_the_ratio_of_most_to_least_frequent_class(ratio: float) -> None:
    split = data.load("digits", imbalance=ratio)
    counts = np.bincount(split.y_train.numpy(), minlength=10)
    assert counts.argmax() == 0 and counts.argmin() == 9  # class k keeps ratio**(-k/9)
    assert counts.max() / counts.min() == pytest.approx(ratio, rel=0.15)


# -- bad arguments ------------------------------------------------------------------------


def test_unknown_name_lists_what_is_available() -> None:
    with pytest.raises(ValueError, match="unknown data set 'mnist2d'") as err:
        data.load("mnist2d")
    for name in ("digits", "mnist1d", "teacher", "spirals", "mnist", "fashion-mnist", "cifar10"):
        assert name in str(err.value)


def test_an_option_the_data_set_does_not_take_is_an_error() -> None:
    with pytest.raises(TypeError, match="digits does not take the option.*n; its options: none"):
        data.load("digits", n=100)
    with pytest.raises(TypeError, match="teacher does not take the option.*noise; its options: n"):
        data.load("teacher", noise=0.1)


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"val_fraction": 0.0}, ValueError, r"val_fraction must be a fraction in \(0, 1\)"),
        ({"val_fraction": 1.0}, ValueError, "val_fraction must be a fraction"),
        ({"val_fraction": "0.2"}, TypeError, "val_fraction must be a number, got '0.2'"),
        ({"seed": -1}, ValueError, "seed must be at least 0"),
        ({"seed": "0"}, TypeError, "seed must be a whole number"),
        ({"label_noise": 1.0}, ValueError, "label_noise must be a fraction"),
        ({"subset": 1}, ValueError, "subset must be at least 2"),
        ({"subset": 10.5}, TypeError, "subset must be a whole number"),
        ({"imbalance": 0.5}, ValueError, "imbalance must be at least 1.0"),
    ],
)
def test_bad_options_are_named(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        data.load("digits", **kwargs)


def test_bad_teacher_size_is_named() -> None:
    with pytest.raises(TypeError, match="n must be a whole number, got 'many'"):
        data.load("teacher", n="many")


# -- local files: IDX (MNIST, Fashion-MNIST) ------------------------------------------------


def _write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def _write_mnist(root: Path, gz: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (12, 5, 4)),
        "train-labels-idx1-ubyte": np.arange(12) % 3,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (6, 5, 4)),
        "t10k-labels-idx1-ubyte": np.arange(6) % 3,
    }
    root.mkdir(exist_ok=True)
    for name, array in arrays.items():
        _write_idx(root / name, array, gz)
    return arrays


@pytest.mark.parametrize("name,gz", [("mnist", False), ("fashion-mnist", True)])
def test_idx_loader_reads_files_the_test_wrote(tmp_path: Path, name: str, gz: bool) -> None:
    arrays = _write_mnist(tmp_path, gz)
    split = data.load(name, root=tmp_path, standardize=False, flatten=False)
    assert split.X_train.shape == (12, 1, 5, 4) and split.X_val.shape == (6, 1, 5, 4)
    expected = torch.tensor(arrays["train-images-idx3-ubyte"] / 255.0, dtype=torch.float32)
    assert torch.equal(split.X_train[:, 0], expected)
    assert split.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert split.y_val.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert split.n_classes == 3
    flat = data.load(name, root=str(tmp_path))  # a str root works too; standardized
    assert flat.X_train.shape == (12, 20)


def test_read_idx_round_trips_other_dtypes(tmp_path: Path) -> None:
    values = (np.arange(24).reshape(2, 3, 4) - 7).astype(">i4")  # big-endian, as IDX is
    header = bytes([0, 0, 0x0C, 3]) + struct.pack(">3I", 2, 3, 4)
    (tmp_path / "a.idx").write_bytes(header + values.tobytes())
    assert np.array_equal(data.read_idx(tmp_path / "a.idx"), values)


def test_read_idx_rejects_broken_files(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x02ab")
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 0x08, 1, 0, 0, 0, 5]) + b"abc")
    with pytest.raises(ValueError, match=r"header says \(5,\), file holds 3 values"):
        data.read_idx(tmp_path / "short")
    (tmp_path / "cut").write_bytes(bytes([0, 0, 0x08, 3, 0, 0]))
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(tmp_path / "cut")


def test_idx_images_and_labels_of_different_lengths(tmp_path: Path) -> None:
    _write_mnist(tmp_path, gz=False)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(11) % 3, gz=False)
    with pytest.raises(ValueError, match="the train files do not match"):
        data.load("mnist", root=tmp_path)


def test_local_sets_need_a_root_that_exists_and_holds_the_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pass root='path/to/dir'.*train-images-idx3-ubyte"):
        data.load("mnist")
    with pytest.raises(FileNotFoundError, match="does not exist; pass root="):
        data.load("mnist", root=tmp_path / "nowhere")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"train-labels-idx1-ubyte\[\.gz\] not found"):
        data.load("mnist", root=tmp_path)


# -- local files: CIFAR-10 ----------------------------------------------------------------


def _write_cifar_batch(path: Path, n: int, first_label: int) -> np.ndarray:
    pixels = np.random.default_rng(first_label).integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [(first_label + i) % 10 for i in range(n)]
    with open(path, "wb") as f:
        pickle.dump({b"data": pixels, b"labels": labels}, f)
    return pixels


def test_cifar10_reads_python_batches_the_test_wrote(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    p1 = _write_cifar_batch(folder / "data_batch_1", 4, 0)
    _write_cifar_batch(folder / "data_batch_2", 3, 4)
    _write_cifar_batch(folder / "test_batch", 2, 8)
    split = data.load("cifar10", root=tmp_path, standardize=False, flatten=False)
    assert split.X_train.shape == (7, 3, 32, 32) and split.X_val.shape == (2, 3, 32, 32)
    assert split.y_train.tolist() == [0, 1, 2, 3, 4, 5, 6, 7][:7]
    assert split.y_val.tolist() == [8, 9]
    expected = torch.tensor(p1[0].reshape(3, 32, 32) / 255.0, dtype=torch.float32)
    assert torch.equal(split.X_train[0], expected)
    assert split.n_features == 3072


def test_cifar10_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no data_batch_"):
        data.load("cifar10", root=tmp_path)
    _write_cifar_batch(tmp_path / "data_batch_1", 2, 0)
    with pytest.raises(FileNotFoundError, match="test_batch not found"):
        data.load("cifar10", root=tmp_path)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match=r"expected \(n, 3072\)"):
        data.load("cifar10", root=tmp_path)


def test_split_repr_and_pairs() -> None:
    split = data.load("spirals", n=90)
    assert repr(split) == "Split('spirals': train (72, 2), val (18, 2), 3 classes)"
    assert split.train[0] is split.X_train and split.val[1] is split.y_val
    assert [d.name for d in data.available()] == list(data.DATASETS)
