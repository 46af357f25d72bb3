"""Reading uploaded .npy/.npz files: memory-mapped, never unpickled, damaged files refused with the reason."""

import zipfile

import numpy as np
import pytest

from workers import array_files
from workers.array_files import ArrayFileError


def test_npz_written_by_savez_is_memory_mapped_with_the_same_values(tmp_path):
    x = np.random.default_rng(0).standard_normal((300, 4)).astype(np.float32)
    ids = np.arange(900, dtype=np.int64).reshape(300, 3)
    np.savez(tmp_path / "in.npz", x=x, ids=ids)

    arrays = array_files.open_arrays(tmp_path / "in.npz")

    assert list(arrays) == ["x", "ids"]
    assert all(isinstance(array, np.memmap) for array in arrays.values())
    np.testing.assert_array_equal(arrays["x"], x)
    np.testing.assert_array_equal(arrays["ids"], ids)


def test_compressed_npz_members_are_read_into_memory(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.savez_compressed(tmp_path / "in.npz", x=x)

    headers = array_files.read_headers(tmp_path / "in.npz")
    arrays = array_files.open_arrays(tmp_path / "in.npz")

    assert headers["x"].offset is None and headers["x"].to_dict() == {"shape": [3, 4], "dtype": "float32"}
    assert not isinstance(arrays["x"], np.memmap)
    np.testing.assert_array_equal(arrays["x"], x)


def test_npy_is_one_array_named_empty(tmp_path):
    x = np.arange(10, dtype=np.int64)
    np.save(tmp_path / "x.npy", x)

    arrays = array_files.open_arrays(tmp_path / "x.npy")

    assert list(arrays) == [""]
    np.testing.assert_array_equal(arrays[""], x)


def test_fortran_order_and_big_endian_arrays_keep_their_values(tmp_path):
    fortran = np.asfortranarray(np.arange(20, dtype=np.float32).reshape(4, 5))
    big_endian = np.arange(6, dtype=">i8").reshape(3, 2)
    np.savez(tmp_path / "in.npz", f=fortran, b=big_endian)

    arrays = array_files.open_arrays(tmp_path / "in.npz")

    np.testing.assert_array_equal(arrays["f"], fortran)
    assert arrays["b"].dtype == np.dtype("int64") and arrays["b"].dtype.isnative
    np.testing.assert_array_equal(arrays["b"], big_endian)


def test_empty_arrays_are_read_without_mapping(tmp_path):
    np.savez(tmp_path / "in.npz", x=np.zeros((0, 4), dtype=np.float32))

    assert array_files.open_arrays(tmp_path / "in.npz")["x"].shape == (0, 4)


def test_object_arrays_are_refused_from_the_header_without_unpickling(tmp_path):
    np.savez(tmp_path / "in.npz", x=np.array([{"a": 1}], dtype=object))

    with pytest.raises(ArrayFileError, match="pickle"):
        array_files.read_headers(tmp_path / "in.npz")


def test_a_file_that_is_neither_npy_nor_zip_is_refused(tmp_path):
    (tmp_path / "in.npz").write_bytes(b"col1,col2\n1,2\n")

    with pytest.raises(ArrayFileError, match="neither"):
        array_files.array_file_format(tmp_path / "in.npz")


def test_a_truncated_npy_is_refused_with_what_its_header_promised(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((100, 4), dtype=np.float32))
    data = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "x.npy").write_bytes(data[:-100])

    with pytest.raises(ArrayFileError, match="truncated"):
        array_files.open_arrays(tmp_path / "x.npy")


def test_a_truncated_npz_is_refused(tmp_path):
    np.savez(tmp_path / "in.npz", x=np.zeros((100, 4), dtype=np.float32))
    data = (tmp_path / "in.npz").read_bytes()
    (tmp_path / "in.npz").write_bytes(data[: len(data) // 2])

    with pytest.raises(ArrayFileError, match="npz"):
        array_files.read_headers(tmp_path / "in.npz")


def test_a_corrupted_member_fails_its_crc_check(tmp_path):
    np.savez(tmp_path / "in.npz", x=np.zeros((1000,), dtype=np.float32))
    data = bytearray((tmp_path / "in.npz").read_bytes())
    data[2000] ^= 0xFF  # inside the array's data
    (tmp_path / "in.npz").write_bytes(bytes(data))

    array_files.read_headers(tmp_path / "in.npz")  # headers are intact
    with pytest.raises(ArrayFileError, match="damaged"):
        array_files.verify(tmp_path / "in.npz")


def test_members_other_than_npy_are_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "in.npz", "w") as archive:
        archive.writestr("notes.txt", "hello")

    with pytest.raises(ArrayFileError, match=r"notes\.txt"):
        array_files.read_headers(tmp_path / "in.npz")


def test_the_size_limit_is_checked_from_the_headers(tmp_path):
    np.savez(tmp_path / "in.npz", x=np.zeros((1000, 1000), dtype=np.float32))

    with pytest.raises(ArrayFileError, match="limit is 1000 bytes"):
        array_files.open_arrays(tmp_path / "in.npz", max_bytes=1000)


def test_streamed_npz_reads_back_with_zipfile_numpy_and_our_reader(tmp_path):
    import hashlib

    arrays = {"y": np.arange(30_000, dtype=np.float32).reshape(10_000, 3), "ids_sum": np.arange(7, dtype=np.int64)}
    with (tmp_path / "o.npz").open("wb") as file:
        archive = array_files.NpzStreamWriter(file)
        for name, array in arrays.items():
            archive.begin(name)
            np.lib.format.write_array(archive, array, allow_pickle=False)
            archive.end()
        sha256, size = archive.close()

    data = (tmp_path / "o.npz").read_bytes()
    assert (sha256, size) == (hashlib.sha256(data).hexdigest(), len(data))
    with zipfile.ZipFile(tmp_path / "o.npz") as checked:
        assert checked.testzip() is None  # every CRC matches
        assert checked.namelist() == ["y.npy", "ids_sum.npy"]
    with np.load(tmp_path / "o.npz", allow_pickle=False) as loaded:
        np.testing.assert_array_equal(loaded["y"], arrays["y"])
        np.testing.assert_array_equal(loaded["ids_sum"], arrays["ids_sum"])
    mapped = array_files.open_arrays(tmp_path / "o.npz")
    assert isinstance(mapped["y"], np.memmap)
    np.testing.assert_array_equal(mapped["y"], arrays["y"])
