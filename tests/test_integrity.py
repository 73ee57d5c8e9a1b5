"""Integrity of the stored artifacts: a full disk is refused early or fails cleanly (no handle left
open, no staged file, no crash), checksums turn flipped bytes into errors naming the file, a reader
holds one file for a whole read, and unreadable files name their path and asset."""

import errno
import glob
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import dagster as dg
import h5py
import numpy as np
import pyarrow as pa
import pytest
import torch

from oe_assets.definitions import build_definitions
from oe_assets.lens import SecondOrderLens
from oe_assets.lens.effects_file import FactorizedEffectsWriter, open_factorized
from oe_assets.lens.factorized import FactorizedEffects, HeadFactors
from oe_assets.resources import store as store_module
from oe_assets.resources.io_managers import HDF5IOManager, HTMLIOManager, ParquetIOManager
from oe_assets.resources.store import (ArtifactStore, CorruptFileError, DiskFullError, H5Group, H5Payload, StagedH5,
                                       open_effects, table_attrs, table_with_attrs, write_h5)
from helpers import materialize, materialize_graph, small_tmpfs, tiny_bert_profile

warnings.filterwarnings("ignore", category=dg.PreviewWarning if hasattr(dg, "PreviewWarning") else Warning)


def materialize_effects(profile, **kw):
    """``second_order_effects`` of layer 0 of the tiny BERT profile, in process."""
    defs = build_definitions(profile)
    with dg.DagsterInstance.ephemeral() as instance:
        return dg.materialize([*defs.assets, *defs.asset_checks], selection=["second_order_effects"],
                              resources=defs.resources, instance=instance, partition_key="0", **kw)


def open_fds_under(folder: Path) -> list[str]:
    """The files under ``folder`` this process holds open (Linux)."""
    out = []
    for fd in glob.glob("/proc/self/fd/*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(folder)):
            out.append(target)
    return out


# ---------------------------------------------------------------- disk full
def test_too_little_free_space_is_refused_before_the_data_pass(tmp_path, monkeypatch):
    profile = tiny_bert_profile(tmp_path)
    passes = []
    original = SecondOrderLens.factorized_from_capture
    monkeypatch.setattr(SecondOrderLens, "factorized_from_capture",
                        lambda self, *a, **k: passes.append(1) or original(self, *a, **k))
    real_usage = shutil.disk_usage
    monkeypatch.setattr(store_module.shutil, "disk_usage",
                        lambda p: real_usage(p)._replace(free=4096))
    with pytest.raises(DiskFullError) as info:
        materialize_effects(profile)
    message = str(info.value)
    folder = tmp_path / "store" / "second_order_effects"
    assert "asset second_order_effects partition 0 needs about" in message
    assert "4.1 kB (4096 bytes) free" in message and str(folder) in message
    needed = int(message.split("needs about ")[1].split("(")[1].split(" bytes")[0])
    assert needed > 6 * 8 * 64 * 4  # samples x paths x neurons x float32, at least
    assert passes == [] and not list(folder.glob("*"))  # nothing computed, nothing staged


def test_expected_bytes_bound_the_written_file(tmp_path):
    P, N, d, S = 6, 128, 16, 40
    factors = HeadFactors(torch.randn(P, d, 4), torch.randn(P, 4, N))
    for n_tokens in (None, 3):
        path = tmp_path / f"e{n_tokens}.h5"
        writer = FactorizedEffectsWriter(path, S, factors, with_const=True, batch_size=8, n_tokens=n_tokens)
        for _ in range(0, S, 8):
            tokens = (torch.randn(8, P, 3), torch.randn(8, 3, N)) if n_tokens else None
            alpha = tokens[0] @ tokens[1] if n_tokens else torch.randn(8, P, N)
            writer.write(FactorizedEffects(alpha, torch.rand(8), factors, torch.randn(8, d), tokens=tokens))
        writer.close(labels=np.arange(S), extras={"first_order_sum": np.zeros((S, d))})
        expected = FactorizedEffectsWriter.expected_bytes(S, factors, True, n_tokens=n_tokens,
                                                          extra_bytes_per_sample=8 * d)
        size = path.stat().st_size
        assert size <= expected <= size + (1 << 20) + size // 10


@pytest.mark.parametrize("mode, streamed", [("stored", "/alpha"), ("topk", "/norms")])
def test_enospc_while_streaming_fails_clearly_closes_and_removes_everything(tmp_path, monkeypatch, mode, streamed):
    profile = tiny_bert_profile(tmp_path)
    profile["storage"]["effects_mode"] = mode
    folder = tmp_path / "store" / "second_order_effects"
    writes = []
    original = h5py.Dataset.__setitem__

    def full_disk(self, index, value):
        if self.name == streamed and ".partial-" in self.file.filename:
            writes.append(self.file.filename)
            if len(writes) == 2:  # the second batch finds the disk full
                raise OSError(errno.ENOSPC, "Can't synchronously write data (No space left on device)")
        return original(self, index, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", full_disk)
    with pytest.raises(DiskFullError) as info:
        materialize_effects(profile)
    message = str(info.value)
    staged = writes[0]
    assert message.startswith(f"{staged}: the disk is full while writing asset second_order_effects partition 0")
    assert "free after removing the staged files, the step's files need about" in message
    assert "the staged files were removed" in message
    assert not list(folder.glob("*"))  # no .partial-* file, no final file
    assert open_fds_under(tmp_path / "store") == []  # every handle closed
    shutil.rmtree(folder)
    monkeypatch.setattr(h5py.Dataset, "__setitem__", original)
    assert materialize_effects(profile).success  # the next materialization succeeds
    with H5Group(folder / "0.h5") as group:
        assert open_effects(group).shape == (6, 64, 32)


REAL_ENOSPC = textwrap.dedent("""
    import os, shutil, sys, warnings
    import dagster as dg
    sys.path.insert(0, sys.argv[3])
    from oe_assets.resources import store as store_module
    from test_integrity import materialize_effects
    from helpers import tiny_bert_profile
    from pathlib import Path
    profile = tiny_bert_profile(Path(sys.argv[1]))
    disk = Path(sys.argv[2])
    profile["storage"]["base_dir"] = str(disk / "store")
    # another process fills the disk after the free-space check: leave 16 kB
    real = shutil.disk_usage
    store_module.shutil.disk_usage = lambda p: real(p)._replace(free=1 << 40)
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, bytes(4096))
    except OSError:
        pass
    os.ftruncate(fd, os.fstat(fd).st_size - (16 << 10))
    os.close(fd)
    try:
        materialize_effects(profile)
        print("NO ERROR")
    except OSError as e:
        print("ERROR", type(e).__name__, e, flush=True)
    left = sorted(p.name for p in (disk / "store" / "second_order_effects").glob("*"))
    print("LEFT", left, flush=True)
    os.unlink(disk / "filler")
    print("SECOND", materialize_effects(profile).success, flush=True)
    sys.exit(3)
""")


def test_real_enospc_on_a_small_tmpfs_is_a_python_error_not_a_crash(tmp_path):
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        proc = subprocess.run([sys.executable, "-c", REAL_ENOSPC, str(tmp_path / "work"), str(disk),
                               str(Path(__file__).parent)], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    assert proc.returncode == 3, (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:])  # not a signal
    assert "ERROR DiskFullError" in proc.stdout and "the disk is full while writing" in proc.stdout, proc.stdout
    assert "LEFT []" in proc.stdout and "SECOND True" in proc.stdout, proc.stdout


def test_abort_after_a_failed_close_keeps_the_objects_instead_of_crashing(tmp_path, monkeypatch):
    factors = HeadFactors(torch.randn(2, 4, 2), torch.randn(2, 2, 8))
    writer = FactorizedEffectsWriter(tmp_path / "e.h5", 4, factors, with_const=False, batch_size=4)
    file = writer.file
    monkeypatch.setattr(h5py.File, "close", lambda self: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    writer.abort()  # no error raised, the file's objects are kept alive, not collected
    from oe_assets.lens import effects_file

    assert effects_file._UNCLOSED[-1][0] is file and writer.file is None and writer.alpha is None
    monkeypatch.undo()
    effects_file._UNCLOSED.pop()[0].close()


# ---------------------------------------------------------------- checksums
def flip_bytes(path: Path, dataset: str, chunk: int = 0, n: int = 8) -> None:
    """Invert ``n`` bytes in the middle of a stored chunk of ``dataset``."""
    with h5py.File(path, "r") as f:
        info = f[dataset].id.get_chunk_info(chunk)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        raw = fh.read(n)
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(bytes(b ^ 0xFF for b in raw))


def write_effects(path: Path, compression: dict, value=None) -> tuple[np.ndarray, HeadFactors]:
    """A small effects file; ``alpha`` holds small integers (compressible) or ``value``."""
    P, N, d, S = 4, 128, 8, 16
    factors = HeadFactors(torch.randn(P, d, 3, dtype=torch.float64), torch.randn(P, 3, N, dtype=torch.float64))
    alpha = torch.randint(0, 4, (S, P, N)).float() if value is None else torch.full((S, P, N), float(value))
    with FactorizedEffectsWriter(path, S, factors, with_const=False, batch_size=8, compression=compression) as w:
        for s in range(0, S, 8):
            w.write(FactorizedEffects(alpha[s:s + 8], torch.ones(8), factors))
        w.close(labels=np.zeros(S, dtype=np.int64))
    return alpha.numpy(), factors


def test_flipped_bytes_in_an_lzf_effects_file_are_an_error_naming_it(tmp_path):
    path = tmp_path / "0.h5"
    alpha, _ = write_effects(path, ArtifactStore(base_dir=str(tmp_path), effects_compression="lzf").compression())
    with h5py.File(path, "r") as f:
        assert all(f[name].fletcher32 for name in ("alpha", "scale", "left", "right", "labels"))
        assert f["alpha"].compression == "lzf" and f["alpha"].id.get_chunk_info(0).filter_mask == 0  # compressed
    np.testing.assert_array_equal(open_factorized(path).alpha[:, :, :], alpha)
    flip_bytes(path, "alpha", chunk=1)
    fe = open_factorized(path, what="asset second_order_effects partition 0")
    with pytest.raises(CorruptFileError, match=r"checksum mismatch in dataset 'alpha'") as info:
        fe[:]
    assert str(info.value).startswith(f"{path}: ")
    assert "the file is corrupt, re-materialize asset second_order_effects partition 0" in str(info.value)


def test_flipped_bytes_in_a_store_file_are_an_error_naming_file_and_asset(tmp_path):
    io = HDF5IOManager(store=ArtifactStore(base_dir=str(tmp_path)))
    io.handle_output(dg.build_output_context(asset_key=dg.AssetKey("thing")),
                     H5Payload({"x": np.arange(50000.0).reshape(500, 100) % 7, "small": np.arange(5.0),
                                "names": ["alpha", "beta"]}))
    path = tmp_path / "thing" / "all.h5"
    with h5py.File(path, "r") as f:
        assert all(f[name].fletcher32 for name in ("x", "small", "names"))
    flip_bytes(path, "x")
    group = io.load_input(dg.build_input_context(asset_key=dg.AssetKey("thing")))
    assert group.read("names") == ["alpha", "beta"]
    np.testing.assert_array_equal(group.read("small"), np.arange(5.0))
    with pytest.raises(CorruptFileError, match="checksum mismatch in dataset 'x'") as info:
        group.read("x")
    assert str(info.value).startswith(f"{path}: ") and "re-materialize asset thing" in str(info.value)
    with pytest.raises(CorruptFileError, match="checksum mismatch"):
        np.asarray(group["x"])


def test_files_written_without_checksums_still_read(tmp_path):
    old = tmp_path / "old.h5"
    P, N, d, S = 2, 8, 4, 3
    left, right, alpha = np.random.rand(P, d, 2), np.random.rand(P, 2, N), np.random.rand(S, P, N).astype("f4")
    with h5py.File(old, "w") as f:  # the layout as written before the checksums
        f.create_dataset("alpha", data=alpha, chunks=(S, P, N))
        f.create_dataset("scale", data=np.ones(S))
        f.create_dataset("left", data=left)
        f.create_dataset("right", data=right)
        f.create_dataset("names", data=np.array(["a", "b"], dtype=object), dtype=h5py.string_dtype("utf-8"))
        f.attrs["layout"] = "factorized"
    fe = open_factorized(old)
    np.testing.assert_allclose(fe[:], np.einsum("spn,pdk,pkn->snd", alpha, left, right), rtol=1e-6)
    assert H5Group(old).read("names") == ["a", "b"]


# ---------------------------------------------------------------- checksums of attributes, Parquet and HTML
def flip_byte_of(path: Path, needle: bytes, at: int = 0, mask: int = 0x01) -> None:
    """XOR byte ``at`` of the one occurrence of ``needle`` in the file with ``mask``."""
    data = bytearray(path.read_bytes())
    assert data.count(needle) == 1, f"{needle!r} occurs {data.count(needle)} times in {path}"
    data[data.index(needle) + at] ^= mask
    path.write_bytes(bytes(data))


#: an ablation report's rows: the middle accuracy is neither the column's min nor max (stored once, in
#: the page, and as its bytes: they do not compress)
REPORT = {"scenario": ["baseline", "first order", "second order"], "accuracy": [0.5, 118 / 145, 0.96875]}
LINEAGE = {"entry": "ablation_report[1]", "records": {"model": {"weights": "5f2a9c77e1"}}}


def parquet_io(tmp_path):
    return ParquetIOManager(store=ArtifactStore(base_dir=str(tmp_path)))


def load_report(io, partition="1"):
    context = dg.build_input_context(asset_key=dg.AssetKey("ablation_report"), partition_key=partition)
    return io.load_input(context)[partition]


@pytest.mark.parametrize("where", ["value page", "provenance"])
def test_a_flipped_byte_in_a_parquet_file_is_an_error_naming_file_and_asset(tmp_path, where):
    io = parquet_io(tmp_path)
    table = table_with_attrs(pa.table(REPORT), {"provenance": LINEAGE})
    io.handle_output(dg.build_output_context(asset_key=dg.AssetKey("ablation_report"), partition_key="1"), table)
    path = tmp_path / "ablation_report" / "1.parquet"
    loaded = load_report(io)
    assert loaded.to_pydict() == REPORT and table_attrs(loaded) == {"provenance": LINEAGE}
    if where == "value page":  # a bit of the accuracy's mantissa
        needle, at = struct.pack("<d", 118 / 145), 6
        # the same flip in a file without the checksum reads as another accuracy, silently
        legacy = tmp_path / "legacy.parquet"
        import pyarrow.parquet as pq

        pq.write_table(table, legacy)
        flip_byte_of(legacy, needle, at)
        wrong = pq.read_table(legacy).column("accuracy").to_pylist()[1]
        assert wrong != 118 / 145 and abs(wrong - 118 / 145) < 0.1
    else:  # a character of the lineage in the footer's key-value metadata
        needle, at = b"5f2a9c77e1", 0
    flip_byte_of(path, needle, at)
    with pytest.raises(CorruptFileError) as info:
        load_report(io)
    message = str(info.value)
    assert message.startswith(f"{path}: checksum mismatch (SHA-256 ")
    assert message.endswith("the Parquet file is corrupt, re-materialize asset ablation_report partition 1")


def test_a_flipped_byte_in_the_parquet_checksum_itself_is_an_error(tmp_path):
    import pyarrow.parquet as pq

    io = parquet_io(tmp_path)
    io.handle_output(dg.build_output_context(asset_key=dg.AssetKey("ablation_report"), partition_key="1"),
                     pa.table(REPORT))
    path = tmp_path / "ablation_report" / "1.parquet"
    stored = pq.read_metadata(path).metadata[b"oe_assets.sha256"]
    flip_byte_of(path, stored, at=5, mask=0x02)
    with pytest.raises(CorruptFileError, match="checksum mismatch"):
        load_report(io)


def test_parquet_and_html_without_a_checksum_still_read(tmp_path):
    import pyarrow.parquet as pq

    io = parquet_io(tmp_path)
    path = tmp_path / "ablation_report" / "1.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(table_with_attrs(pa.table(REPORT), {"layer": 1}), path)  # as written before the checksums
    loaded = load_report(io)
    assert loaded.to_pydict() == REPORT and table_attrs(loaded) == {"layer": 1}
    html = HTMLIOManager(store=ArtifactStore(base_dir=str(tmp_path)))
    page = tmp_path / "neuron_report" / "0.html"
    page.parent.mkdir(parents=True)
    page.write_text("<html><body>neuron 3</body></html>\n", encoding="utf-8")
    context = dg.build_input_context(asset_key=dg.AssetKey("neuron_report"), partition_key="0")
    assert html.load_input(context) == {"0": "<html><body>neuron 3</body></html>\n"}


def test_a_flipped_byte_in_an_html_report_is_an_error_naming_file_and_asset(tmp_path):
    html = HTMLIOManager(store=ArtifactStore(base_dir=str(tmp_path)))
    text = "<!DOCTYPE html><html><body><h1>Layer 0</h1><p>neuron 17: 0.8125 « cat »</p></body></html>"
    out = dg.build_output_context(asset_key=dg.AssetKey("neuron_report"), partition_key="0")
    html.handle_output(out, text)
    context = dg.build_input_context(asset_key=dg.AssetKey("neuron_report"), partition_key="0")
    assert html.load_input(context) == {"0": text}  # the checksum comment is not part of the text
    path = tmp_path / "neuron_report" / "0.html"
    flip_byte_of(path, b"neuron 17", at=8)  # 17 -> 16
    with pytest.raises(CorruptFileError) as info:
        html.load_input(context)
    message = str(info.value)
    assert message.startswith(f"{path}: checksum mismatch (SHA-256 ")
    assert message.endswith("the HTML file is corrupt, re-materialize asset neuron_report partition 0")


def write_store_h5(tmp_path) -> tuple[HDF5IOManager, Path]:
    io = HDF5IOManager(store=ArtifactStore(base_dir=str(tmp_path)))
    io.handle_output(dg.build_output_context(asset_key=dg.AssetKey("val_representations")),
                     H5Payload({"representations": np.arange(12.0).reshape(4, 3)},
                               {"coefficient": 100.0, "split": "val", "provenance": LINEAGE}))
    return io, tmp_path / "val_representations" / "all.h5"


def test_a_changed_hdf5_attribute_is_an_error_naming_file_and_asset(tmp_path):
    io, path = write_store_h5(tmp_path)
    context = dg.build_input_context(asset_key=dg.AssetKey("val_representations"))
    assert io.load_input(context).attrs == {"coefficient": 100.0, "split": "val", "provenance": LINEAGE}
    with h5py.File(path, "a") as f:  # a changed value, the checksum left as it was
        f.attrs["coefficient"] = 96.0
    with pytest.raises(CorruptFileError) as info:
        io.load_input(context)
    message = str(info.value)
    assert message.startswith(f"{path}: checksum mismatch in the file's attributes (SHA-256 ")
    assert message.endswith("the file is corrupt, re-materialize asset val_representations")
    with pytest.raises(CorruptFileError, match="checksum mismatch in the file's attributes"):
        H5Group(path)


def test_a_flipped_byte_in_the_provenance_attribute_is_an_error(tmp_path):
    io, path = write_store_h5(tmp_path)
    flip_byte_of(path, b"5f2a9c77e1")  # still valid JSON: without the checksum, another lineage
    with h5py.File(path, "r") as f:
        assert json.loads(f.attrs["provenance"][5:])["records"]["model"]["weights"] == "4f2a9c77e1"
    with pytest.raises(CorruptFileError, match=f"^{path}: checksum mismatch in the file's attributes"):
        io.load_input(dg.build_input_context(asset_key=dg.AssetKey("val_representations")))


def test_attributes_of_a_streamed_effects_file_are_checked_on_every_open(tmp_path):
    # the writer sets the layout attributes, the IO manager the asset's: one checksum covers both
    store = ArtifactStore(base_dir=str(tmp_path))
    io = HDF5IOManager(store=store)
    staged = store.stage("second_order_effects", "0")
    write_effects(staged, {})
    io.handle_output(dg.build_output_context(asset_key=dg.AssetKey("second_order_effects"), partition_key="0"),
                     StagedH5(staged, {"coefficient": 100.0, "layer": 0, "provenance": LINEAGE}))
    path = store.path_for("second_order_effects", "0")
    group = store.open_h5("second_order_effects", "0")
    assert group.attrs["coefficient"] == 100.0 and group.attrs["layout"] == "factorized"
    assert "attrs_sha256" not in group.attrs
    blob = pickle.dumps(group["alpha"])
    group.close()
    with h5py.File(path, "a") as f:
        f.attrs["coefficient"] = 96.0
    for load in (lambda: store.open_effects("second_order_effects", "0"),
                 lambda: open_factorized(path, what="asset second_order_effects partition 0"),
                 lambda: pickle.loads(blob)):  # a reader reopening the file in another process
        with pytest.raises(CorruptFileError, match=f"^{path}: checksum mismatch in the file's attributes") as info:
            load()
        assert str(info.value).endswith("re-materialize asset second_order_effects partition 0")


def test_hdf5_attributes_without_a_checksum_still_read(tmp_path):
    old = tmp_path / "old.h5"
    with h5py.File(old, "w") as f:  # attributes as written before their checksum
        f.create_dataset("x", data=np.arange(3.0))
        f.attrs["coefficient"] = 100.0
        f.attrs["provenance"] = "json:" + json.dumps(LINEAGE)
    assert H5Group(old).attrs == {"coefficient": 100.0, "provenance": LINEAGE}


def corrupt_file_error(run) -> CorruptFileError:
    """The :class:`CorruptFileError` a failing materialization raised."""
    with pytest.raises(Exception) as info:
        run()
    error = info.value
    while error is not None and not isinstance(error, CorruptFileError):
        error = getattr(error, "user_exception", None) or error.__cause__
    assert error is not None, f"expected a CorruptFileError, got {info.value!r}"
    return error


def test_the_graph_refuses_a_flipped_ablation_report_byte_and_a_changed_coefficient(tmp_path):
    import pyarrow.parquet as pq

    defs, instance, store = materialize_graph(tiny_bert_profile(tmp_path))
    report = store / "ablation_report" / "1.parquet"
    chunk = pq.ParquetFile(report).metadata.row_group(0).column(pq.read_schema(report).names.index("accuracy"))
    end = (chunk.dictionary_page_offset or chunk.data_page_offset) + chunk.total_compressed_size
    data = bytearray(report.read_bytes())
    data[end - 3] ^= 0x01  # a byte of the accuracy column's last page
    report.write_bytes(bytes(data))
    error = corrupt_file_error(lambda: materialize(defs, ["layer_summary"], instance))
    assert str(error).startswith(f"{report}: checksum mismatch")
    assert str(error).endswith("re-materialize asset ablation_report partition 1")
    reps = store / "val_representations" / "all.h5"
    with h5py.File(reps, "a") as f:
        assert f.attrs["coefficient"] == 100.0
        f.attrs["coefficient"] = 96.0
    error = corrupt_file_error(lambda: materialize(defs, ["ablation_report"], instance, partition_key="0"))
    assert str(error).startswith(f"{reps}: checksum mismatch in the file's attributes")
    assert str(error).endswith("re-materialize asset val_representations")


# ---------------------------------------------------------------- one handle per read
def test_a_reader_reads_one_file_while_another_run_replaces_it(tmp_path):
    store = ArtifactStore(base_dir=str(tmp_path))
    path = store.path_for("reps")
    write_h5(path, H5Payload({"x": np.full((10000, 8), 1.0)}))  # 3 chunks of 4096 rows
    group = store.open_h5("reps")
    block = group["x"]
    first = block[:4096]
    with store.atomic(path) as tmp:  # another run re-materializes the asset meanwhile
        write_h5(tmp, H5Payload({"x": np.full((10000, 8), 2.0)}))
    rest = [block[s:s + 4096] for s in range(4096, 10000, 4096)]
    assert np.all(np.concatenate([first, *rest]) == 1.0)  # all from the old file, none from the new
    assert np.all(group.read("x") == 1.0)
    assert np.all(store.open_h5("reps").read("x") == 2.0)  # a new load sees the new file
    group.close()


def test_effects_read_one_file_while_it_is_replaced(tmp_path):
    store = ArtifactStore(base_dir=str(tmp_path))
    path = store.path_for("second_order_effects", "0")
    path.parent.mkdir(parents=True)
    write_effects(path, {}, value=1.0)
    fe = store.open_effects("second_order_effects", "0")
    with store.atomic(path) as tmp:
        write_effects(tmp, {}, value=2.0)
    np.testing.assert_array_equal(fe.alpha[:, :, :], 1.0)
    np.testing.assert_array_equal(open_factorized(path).alpha[:, :, :], 2.0)


def test_a_pickled_reader_reopens_the_same_file_and_refuses_a_replaced_one(tmp_path):
    path = tmp_path / "a.h5"
    write_h5(path, H5Payload({"x": np.arange(3000.0)}))
    array = H5Group(path)["x"]
    copy = pickle.loads(pickle.dumps(array))
    np.testing.assert_array_equal(copy[:], np.arange(3000.0))
    blob = pickle.dumps(array)
    with ArtifactStore(base_dir=str(tmp_path)).atomic(path) as tmp:
        write_h5(tmp, H5Payload({"x": np.zeros(3000)}))
    with pytest.raises(CorruptFileError, match=f"{path} was replaced since it was opened"):
        pickle.loads(blob)
    np.testing.assert_array_equal(array[:], np.arange(3000.0))  # the original still reads its file


# ---------------------------------------------------------------- unreadable files
def test_a_truncated_h5_names_its_path_and_asset(tmp_path):
    io = HDF5IOManager(store=ArtifactStore(base_dir=str(tmp_path)))
    ctx = dg.build_output_context(asset_key=dg.AssetKey("second_order_effects"), partition_key="1")
    io.handle_output(ctx, H5Payload({"x": np.random.rand(300, 40)}))
    path = tmp_path / "second_order_effects" / "1.h5"
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(CorruptFileError) as info:
        io.load_input(dg.build_input_context(asset_key=dg.AssetKey("second_order_effects"), partition_key="1"))
    message = str(info.value)
    assert message.startswith(f"{path}: cannot read the file (HDF5: Unable to synchronously open file (truncated")
    assert message.endswith("it is truncated or corrupt, re-materialize asset second_order_effects partition 1")


def test_a_corrupt_parquet_names_its_path_and_asset(tmp_path):
    io = ParquetIOManager(store=ArtifactStore(base_dir=str(tmp_path)))
    io.handle_output(dg.build_output_context(asset_key=dg.AssetKey("layer_summary")),
                     pa.table({"layer": list(range(100)), "accuracy": [0.5] * 100}))
    path = tmp_path / "layer_summary" / "all.parquet"
    os.truncate(path, path.stat().st_size - 20)
    with pytest.raises(CorruptFileError) as info:
        io.load_input(dg.build_input_context(asset_key=dg.AssetKey("layer_summary")))
    message = str(info.value)
    assert message.startswith(f"{path}: cannot read the Parquet file (")
    assert message.endswith("it is truncated or corrupt, re-materialize asset layer_summary")


def test_strings_round_trip_in_chunks_bounded_by_bytes(tmp_path, monkeypatch):
    # one long text among short ones: chunks stay small, every string reads back exactly
    import oe_assets.storage.hdf5 as store_module

    monkeypatch.setattr(store_module, "STRING_CHUNK_BYTES", 1024)
    texts = ["short", "héllo wörld", "", "日本語"] * 50 + ["x" * 5000] + ["tail"]
    path = tmp_path / "texts.h5"
    store_module.write_h5(path, store_module.H5Payload({"inputs": texts}))
    assert store_module.H5Group(path).read("inputs") == texts
    with h5py.File(path, "r") as f:
        ds = f["inputs"]
        assert ds.fletcher32 and ds.chunks[0] * ds.dtype.itemsize <= max(1024, ds.dtype.itemsize)
