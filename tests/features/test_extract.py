"""`captioner extract`: the training config's data section and flags, the DataModule's cache layout, resuming, bad
clips, 2-process DDP."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from badinputs import NAMES
from badinputs import SPEC as BAD_SPEC

from captioner.cli.extract import main, parse
from captioner.config import FeatureSpec
from captioner.data.datamodule import CaptioningDataModule
from captioner.features.cache import REPORT_NAME, FeatureCache
from captioner.features.extract import run_extraction

REPO = Path(__file__).resolve().parents[2]
# a random-weight ResNet-18 at 112 px keeps the CPU cost of each run to a few seconds
SPEC = dict(backbone="resnet18", weights=None, num_frames=4, image_size=112)


@pytest.fixture(scope="module")
def dataset(tiny_dataset, tmp_path_factory) -> Path:
    """The tiny dataset plus one unreadable clip, `broken`, in the training split."""
    root = tmp_path_factory.mktemp("data") / "tiny"
    shutil.copytree(tiny_dataset, root)
    (root / "videos" / "broken.mp4").write_bytes(b"this is not a video")
    ann = json.loads((root / "annotations.json").read_text())
    ann["videos"].append({"id": "broken", "path": "videos/broken.mp4", "split": "train", "captions": ["nothing"]})
    (root / "annotations.json").write_text(json.dumps(ann))
    return root


def _argv(dataset: Path, features: Path, *extra: str) -> list[str]:
    return ["--data.data_dir", str(dataset), "--data.features_dir", str(features),
            "--data.features.backbone", SPEC["backbone"], "--data.features.weights", "null",
            "--data.features.num_frames", str(SPEC["num_frames"]),
            "--data.features.image_size", str(SPEC["image_size"]),
            "--accelerator", "cpu", "--batch-size", "4", "--num-workers", "0", "--no-progress", *extra]


def _datamodule(dataset: Path, features: Path) -> CaptioningDataModule:
    return CaptioningDataModule(data_dir=str(dataset), synthetic=False, features_dir=str(features),
                                features=FeatureSpec(**SPEC), extract_batch_size=8)


def _cache(dataset: Path, features: Path) -> FeatureCache:
    return FeatureCache(features / dataset.name, FeatureSpec(**SPEC))


def _files(cache: FeatureCache) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(cache.dir.glob("*.npy"))}


@pytest.fixture(scope="module")
def extracted(dataset, tmp_path_factory) -> Path:
    """Features of the dataset extracted once, on one CPU process, by the `captioner extract` command."""
    features = tmp_path_factory.mktemp("features")
    assert main(_argv(dataset, features)) == 0
    return features


def test_cache_is_the_datamodules(dataset, extracted, tmp_path):
    cache = _cache(dataset, extracted)
    assert len(_files(cache)) == 25  # every readable clip
    # the DataModule finds every readable clip, in its own layout
    dm = _datamodule(dataset, extracted)
    assert dm.cache.dir == cache.dir
    dm.setup("fit")
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 16, "val": 5, "test": 4}
    # and the features are the ones its own extraction loop computes
    own = _datamodule(dataset, tmp_path)
    own.prepare_data()
    for name in _files(cache):
        a, b = np.load(cache.dir / name), np.load(own.cache.dir / name)
        assert a.shape == (4, 512) and a.dtype == np.float16
        np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=1e-2, atol=1e-2)


@pytest.mark.slow
def test_keyframe_sampling_is_a_datamodule_option_with_its_own_cache(dataset, tmp_path):
    """`data.features.seek: keyframe` trains on the cache `captioner extract --data.features.seek keyframe` writes,
    and the spec records it."""
    from captioner.models.captioner import FeatureSpec as Spec

    assert main(_argv(dataset, tmp_path, "--data.features.seek", "keyframe")) == 0
    dm = CaptioningDataModule(data_dir=str(dataset), synthetic=False, features_dir=str(tmp_path),
                              features=FeatureSpec(**SPEC, seek="keyframe"))
    assert dm.cache.dir.name == FeatureSpec(**SPEC).key + "-keyframe"
    assert len(_files(dm.cache)) == 25 and not _cache(dataset, tmp_path).dir.exists()
    before = _files(dm.cache)
    dm.prepare_data()  # nothing left to extract
    assert _files(dm.cache) == before
    dm.setup("fit")
    assert len(dm.splits["train"]) == 16
    # what a checkpoint stores, and what captioning then samples with by default
    assert Spec(**dm.spec.to_dict()).seek == "keyframe"
    assert CaptioningDataModule(data_dir=str(dataset), synthetic=False).spec.to_dict() == FeatureSpec().to_dict()
    with pytest.raises(ValueError, match="seek"):
        CaptioningDataModule(data_dir=str(dataset), synthetic=False, features=dict(seek="nearest"))


def test_unreadable_clip_is_reported(dataset, extracted):
    cache = _cache(dataset, extracted)
    report = (cache.dir / REPORT_NAME).read_text().splitlines()
    assert len(report) == 1 and report[0].startswith("broken\t") and "not a readable video" in report[0]
    assert not cache.has("broken")
    assert not list(cache.dir.glob(".failed.rank*"))


def test_rerun_skips_done_clips_and_restores_a_deleted_one(dataset, extracted, capsys):
    cache = _cache(dataset, extracted)
    before = _files(cache)
    assert main(_argv(dataset, extracted)) == 0
    assert "25 already cached" in capsys.readouterr().out
    assert _files(cache) == before  # nothing rewritten (only the broken clip is retried)
    expected = np.load(cache.path("clip00003"))
    cache.path("clip00003").unlink()
    assert main(_argv(dataset, extracted)) == 0
    after = _files(cache)
    assert set(after) == set(before)
    assert [n for n in after if after[n] != before[n]] == ["clip00003.npy"]
    np.testing.assert_array_equal(np.load(cache.path("clip00003")), expected)


class _Crash(pl.Callback):
    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 1:
            raise RuntimeError("simulated crash")


@pytest.mark.slow
def test_a_crash_loses_only_the_batch_in_flight(dataset, tmp_path):
    from captioner.data.datasets import load_annotations

    clips = load_annotations(dataset / "annotations.json")
    items = [(c.id, c.path) for c in clips[:12] + clips[-1:]]  # 12 good clips and the broken one
    spec = FeatureSpec(**SPEC)
    cache = FeatureCache(tmp_path / dataset.name, spec)
    cache.dir.mkdir(parents=True)
    (cache.dir / ".clip00000.12345.tmp.npy").write_bytes(b"half a file from a killed run")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_extraction(spec, items, cache, accelerator="cpu", batch_size=4, num_workers=0, progress=False,
                       callbacks=[_Crash()])
    # the writer runs before the crashing callback: both finished batches are on disk, whole
    done = sorted(cache.dir.glob("*.npy"))
    assert [p.name for p in done] == [f"clip{i:05d}.npy" for i in range(8)]
    assert all(np.load(p).shape == (4, 512) for p in done)
    assert not list(cache.dir.glob(".*.tmp.npy"))  # the stale temporary file was cleared
    failures = run_extraction(spec, items, cache, accelerator="cpu", batch_size=4, num_workers=0, progress=False)
    assert failures == [("broken", failures[0][1])]
    assert len(list(cache.dir.glob("*.npy"))) == 12


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_writes_what_the_cpu_writes_and_keeps_finished_batches_on_a_crash(dataset, extracted, tmp_path):
    # on a GPU the writer saves each batch one batch late (its copy overlaps the next batch): nothing may be lost
    from captioner.data.datasets import load_annotations

    clips = load_annotations(dataset / "annotations.json")
    items = [(c.id, c.path) for c in clips]
    cache = FeatureCache(tmp_path / dataset.name, FeatureSpec(**SPEC))
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_extraction(FeatureSpec(**SPEC), items, cache, accelerator="gpu", precision="32-true", batch_size=4,
                       num_workers=0, progress=False, callbacks=[_Crash()])
    assert sorted(p.name for p in cache.dir.glob("*.npy")) == [f"clip{i:05d}.npy" for i in range(8)]
    run_extraction(FeatureSpec(**SPEC), items, cache, accelerator="gpu", precision="32-true", batch_size=4,
                   num_workers=0, progress=False)
    cpu = _cache(dataset, extracted)
    assert _files(cache).keys() == _files(cpu).keys()
    for name in _files(cpu):
        np.testing.assert_allclose(np.load(cache.dir / name), np.load(cpu.dir / name), rtol=1e-2, atol=1e-2)


@pytest.mark.slow
def test_two_ddp_processes_write_the_same_files_as_one(dataset, extracted, tmp_path):
    features = tmp_path / "ddp"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "extract_features.py"),
                           *_argv(dataset, features, "--devices", "2")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "25/26 clips cached" in proc.stdout
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr  # really two processes
    one, two = _cache(dataset, extracted), _cache(dataset, features)
    assert set(_files(two)) == set(_files(one))
    for name in _files(one):
        np.testing.assert_allclose(np.load(two.dir / name).astype(np.float32),
                                   np.load(one.dir / name).astype(np.float32), rtol=1e-2, atol=1e-2)
    # each rank listed its failures; rank 0 merged them into one report
    assert (two.dir / REPORT_NAME).read_text() == (one.dir / REPORT_NAME).read_text()
    assert not list(two.dir.glob(".failed.rank*"))


def test_data_options_come_from_training_configs():
    """`--config` takes a training config (its model and trainer sections are read past); flags win, later files
    change only what they set; the DataModule's own defaults fill the rest."""
    msvd, run = parse(["--config", str(REPO / "configs" / "msvd.yaml")])
    assert str(msvd.data_dir) == "data/msvd" and msvd.spec == FeatureSpec("resnet152", "IMAGENET1K_V1", 20)
    assert (run.batch_size, run.num_workers, run.devices, run.split) == (16, 4, 1, None)
    got, _ = parse(["--config", str(REPO / "configs" / "msvd.yaml"), "--data.features.num_frames", "8",
                    "--data.features.weights", "null"])
    assert got.spec == FeatureSpec("resnet152", None, 8, image_size=None)
    synthetic, _ = parse(["--config", str(REPO / "configs" / "synthetic.yaml")])
    assert synthetic.spec == FeatureSpec("mobilenet_v2", "IMAGENET1K_V1", 8, image_size=160)
    grid, _ = parse(["--config", str(REPO / "configs" / "synthetic.yaml"),
                     "--config", str(REPO / "configs" / "temporal" / "grid2.yaml")])
    assert grid.spec == FeatureSpec("mobilenet_v2", "IMAGENET1K_V1", 8, image_size=160, spatial_grid=2)
    default, _ = parse([])
    assert default.spec == FeatureSpec() and default.cache.dir == CaptioningDataModule().cache.dir
    _, run = parse(["--devices", "auto", "--split", "test", "--split", "val"])
    assert run.devices == "auto" and run.split == ["test", "val"]


@pytest.mark.parametrize("argv, line", [
    (["--num-frames", "16"], "--num-frames is now --data.features.num_frames"),
    (["--data.num_frames", "16"], "--data.num_frames is now --data.features.num_frames"),
    (["--fast-seek"], "--fast-seek is now --data.features.seek keyframe"),
    (["--data-dir", "x"], "--data-dir is now --data.data_dir, as in training"),
    (["--data.features.num_frames", "many"], 'Parser key "features.num_frames": Expected a <class \'int\'>'),
    (["--data.features.seek", "nearest"], "seek must be one of exact, keyframe, got 'nearest'"),
    (["--split", "tests"], "--split tests: a split is one of train, val, test"),
    (["--config", str(REPO / "configs" / "sequence" / "parity.yaml")], "does not correspond to a subclass"),
])
def test_a_bad_setting_is_one_line_and_exit_2(argv, line, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("captioner extract: ") and line in err, err


def test_cluster_trainer_config_layers_over_a_dataset_config(tmp_path):
    from pytorch_lightning.strategies import DDPStrategy

    from captioner.cli.train import build_cli

    cli = build_cli(["--config", str(REPO / "configs" / "msvd.yaml"),
                     "--config", str(REPO / "configs" / "trainer" / "cluster.yaml"),
                     f"--trainer.default_root_dir={tmp_path}"])
    assert isinstance(cli.trainer.strategy, DDPStrategy)
    assert cli.trainer.gradient_clip_val == 1.0 and "bf16" in str(cli.trainer.precision)
    assert cli.datamodule.spec.backbone == "resnet152" and cli.datamodule.hparams.data_dir == "data/msvd"
    assert cli.model.hparams.beam_size == 5 and cli.model.hparams.hidden_dim == 512


@pytest.mark.slow
def test_datamodule_extraction_reports_an_unreadable_clip_once(dataset, tmp_path):
    """`prepare_data` lists the broken clip in failed.txt (written then renamed), and a rerun leaves it out."""
    dm = _datamodule(dataset, tmp_path)
    dm.prepare_data()
    report = _cache(dataset, tmp_path).dir / REPORT_NAME
    lines = report.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("broken\t") and "not a readable video" in lines[0]
    _datamodule(dataset, tmp_path).prepare_data()  # nothing left to extract: the known bad clip is not retried
    assert report.read_text().splitlines() == lines
    assert not [p.name for p in report.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_every_cache_setting_of_a_config_reaches_extract(dataset, tmp_path):
    """`data.features.seek: keyframe` in a training config (and every other FeatureSpec field) names the cache
    `extract` writes: the one the DataModule of that config then reads, with nothing left to extract."""
    import yaml

    data = dict(data_dir=str(dataset), synthetic=False, features_dir=str(tmp_path),
                features=dict(**SPEC, spatial_grid=2, seek="keyframe"))
    config = tmp_path / "keyframe.yaml"
    config.write_text(yaml.safe_dump({"seed_everything": 0, "trainer": {"max_epochs": 1},
                                      "model": {"class_path": "captioner.systems.captioning.CaptioningSystem"},
                                      "data": {"class_path": "captioner.data.datamodule.CaptioningDataModule",
                                               "init_args": data}}))
    assert main(["--config", str(config), "--accelerator", "cpu", "--batch-size", "4", "--num-workers", "0",
                 "--no-progress"]) == 0
    dm = CaptioningDataModule(**data)
    assert dm.cache.dir.name == FeatureSpec(**SPEC).key + "-grid2-keyframe"
    assert len(_files(dm.cache)) == 25 and [p.name for p in (tmp_path / dataset.name).iterdir()] == [dm.cache.dir.name]
    before = _files(dm.cache)
    dm.prepare_data()  # nothing left to extract
    assert _files(dm.cache) == before
    # a flag still wins over the config
    assert main(["--config", str(config), "--data.features.seek", "exact", "--split", "test", "--accelerator", "cpu",
                 "--num-workers", "0", "--no-progress"]) == 0
    assert len(list((tmp_path / dataset.name / (FeatureSpec(**SPEC).key + "-grid2")).glob("*.npy"))) == 4


# The bad-input corpus (tests/badinputs.py) through both extraction engines; paths from hostile annotation
# files never lead outside the cache


def _files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def _check_extraction(bad_corpus, cache: FeatureCache, failures: list[tuple[str, str]]) -> None:
    bad = {name for name, case in bad_corpus.items() if not case.readable}
    assert {vid for vid, _ in failures} == bad
    for vid, reason in failures:
        case = bad_corpus[vid]
        assert reason.startswith(f"{case.path}: ") and case.reason in reason, reason
    cached = {p.stem for p in cache.dir.glob("*.npy")}
    assert cached == set(NAMES) - bad  # every readable clip, however odd, is cached
    for vid in cached:
        feats = cache.load(vid)
        assert feats.shape == (4, 512) and torch.isfinite(feats).all()
    assert not list(cache.dir.glob(".*.tmp*"))


@pytest.mark.slow
def test_extraction_skips_and_reports_bad_clips(bad_corpus, tmp_path):
    from captioner.features.cache import REPORT_NAME
    from captioner.features.extract import extract_in_process, run_extraction

    items = [(name, str(case.path)) for name, case in bad_corpus.items()]
    cache = FeatureCache(tmp_path / "lightning", BAD_SPEC)
    failures = run_extraction(BAD_SPEC, items, cache, accelerator="cpu", batch_size=8, num_workers=0, progress=False)
    _check_extraction(bad_corpus, cache, failures)
    report = [line.split("\t") for line in (cache.dir / REPORT_NAME).read_text(encoding="utf-8").splitlines()]
    assert sorted(map(tuple, report)) == sorted(failures)  # one line per clip: id <TAB> path: reason

    own = FeatureCache(tmp_path / "datamodule", BAD_SPEC)
    failures = extract_in_process(BAD_SPEC, items, own, batch_size=8, progress=False)
    _check_extraction(bad_corpus, own, failures)


def test_an_unforeseen_decoder_failure_is_one_clips_problem(bad_corpus, monkeypatch):
    import captioner.features.extract as features
    from captioner.models.encoder import Preprocessing

    read = features.read_frames

    def exploding(path, *args, **kwargs):
        if "gray" in str(path):
            raise RuntimeError("decoder exploded\nin a second line")
        return read(path, *args, **kwargs)

    monkeypatch.setattr(features, "read_frames", exploding)
    clips = features.CroppedClips([(n, str(bad_corpus[n].path)) for n in ("gray", "yuv444p")], 2, Preprocessing(64, 64))
    vid, frames, error = clips[0]
    assert frames is None and error == f"{bad_corpus['gray'].path}: could not be read (RuntimeError: decoder " \
                                       "exploded in a second line)"
    assert clips[1][2] is None and clips[1][1].shape == (2, 3, 64, 64)


HOSTILE_IDS = ["../../escape", "/abs/olute", "..", ".", ".hidden", ".x.tmp", "a b", "a_b", "vidéo ü", "x/../y",
               "C:\\windows\\x", "a~b", "-"]


def test_cache_paths_stay_inside_and_never_collide(tmp_path):
    cache = FeatureCache(tmp_path / "features", BAD_SPEC)
    paths = [cache.path(vid) for vid in HOSTILE_IDS]
    assert len(set(paths)) == len(paths)  # "a b" and "a_b" do not share a file
    for vid, path in zip(HOSTILE_IDS, paths):
        assert path.parent == cache.dir and not path.name.startswith(".")
        cache.save(vid, torch.full((4, 8), float(len(vid))))
    assert _files_under(tmp_path) == set(paths)
    for vid in HOSTILE_IDS:
        assert cache.load(vid)[0, 0] == len(vid)
    assert cache.path("clip00001").name == "clip00001.npy"  # plain ids keep their plain names


def test_extraction_from_hostile_annotations_writes_only_in_the_cache(bad_corpus, tmp_path, capsys):
    from captioner.cli.extract import main

    data = tmp_path / "work" / "data"
    data.mkdir(parents=True)
    good = bad_corpus["yuv444p"].path
    videos = [{"id": vid, "path": str(good), "split": "train", "captions": ["a clip"]} for vid in HOSTILE_IDS]
    videos.append({"id": "relative", "path": os.path.relpath(good, data), "split": "train", "captions": ["a"]})
    videos.append({"id": "../../../../../../tmp/pwned", "path": "../../outside.mp4", "split": "val",
                   "captions": ["a"]})  # a missing video with a climbing id: reported, nothing written for it
    (data / "annotations.json").write_text(json.dumps({"videos": videos}))
    before = _files_under(tmp_path)
    features = tmp_path / "work" / "features"
    assert main(["--data.data_dir", str(data), "--data.features_dir", str(features), "--data.features.backbone",
                 "resnet18", "--data.features.weights", "null", "--data.features.num_frames", "4",
                 "--data.features.image_size", "64", "--accelerator", "cpu", "--num-workers", "0",
                 "--no-progress"]) == 0
    assert f"{len(videos) - 1}/{len(videos)} clips cached" in capsys.readouterr().out
    cache_dir = features / "data" / BAD_SPEC.key
    new = _files_under(tmp_path) - before
    assert all(p.parent == cache_dir for p in new), sorted(map(str, new))
    assert len(new) == len(videos)  # one feature file per readable clip, and failed.txt
    assert not Path("/tmp/pwned.npy").exists()



ONE_CPU_EXTRACT = """\
import os
import sys

os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # a one-CPU machine, as torch and the cap count CPUs
from captioner.cli.extract import main

sys.exit(main())
"""


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity (Linux)")
def test_extract_on_a_small_machine_prints_no_tip_and_no_worker_warnings(tiny_dataset, tmp_path):
    """Issue 23 item 14: Lightning's "Tip" line, and torch's warning per loader when `--num-workers` (4 by default,
    8 in configs/msrvtt.yaml) is more than the CPUs there are: the workers are capped at the CPUs, quietly."""
    script = tmp_path / "one_cpu_extract.py"
    script.write_text(ONE_CPU_EXTRACT)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), "--data.data_dir", str(tiny_dataset), "--data.features_dir",
                           str(tmp_path / "features"), "--data.features.backbone", "resnet18",
                           "--data.features.weights", "null", "--data.features.num_frames", "2",
                           "--data.features.image_size", "64", "--accelerator", "cpu", "--num-workers", "4",
                           "--no-progress"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "25/25 clips cached" in proc.stdout
    assert "Tip" not in proc.stdout + proc.stderr
    assert "worker processes in total" not in proc.stderr
