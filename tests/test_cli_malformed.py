"""Malformed input on every command: exit status 2, exactly one line on stderr, no traceback,
and nothing written.

Two sources of cases: ``TABLE`` (hand-written, one or more per command, each with words its
message must contain) and Hypothesis, which feeds every numeric option strings that are not
numbers, non-finite numbers, and numbers outside the option's range. ``CASES`` counts them
(the table plus ``EXAMPLES`` per numeric option): see ``test_the_harness_is_as_large_as_stated``.
Everything runs in-process through ``diffunfold.cli.main``, in a scratch folder whose files
are fingerprinted before and after each call; a few run as real processes too.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffunfold.cli import main
from diffunfold.data.images import save_image
from diffunfold.data.phantom import write_phantom_dataset

REPO = Path(__file__).resolve().parents[1]
IMAGE_PKG = str(REPO / "samples" / "models" / "image-small")
MRI_PKG = str(REPO / "samples" / "models" / "mri-small")
EXAMPLES = 12  # Hypothesis examples per numeric option


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A scratch folder with a 64x64 photo, a 2-slice phantom file and a plain file."""
    root = tmp_path_factory.mktemp("malformed")
    save_image(root / "face64.png", np.random.default_rng(0).random((3, 64, 64)))
    write_phantom_dataset(root / "ph", num_files=1, slices_per_file=2, shape=(32, 32), ncoils=2, progress=False)
    (root / "afile").write_text("not a folder")
    (root / "old.json").write_text("{}")
    return root


def fingerprint(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def refused(argv: list[str], root: Path, capsys, monkeypatch) -> str:
    """Run ``argv`` in ``root``; check the contract; return the stderr line."""
    monkeypatch.chdir(root)
    before = fingerprint(root)
    code = main(argv)
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2, (argv, code, out, err)
    assert len(lines) == 1, (argv, err)
    assert "Traceback" not in out + err, argv
    assert fingerprint(root) == before, f"{argv} wrote or changed files"
    return lines[0]


R = ["restore", IMAGE_PKG, "face64.png", "--out", "o", "--task"]  # ... then the task words
M = ["mri", MRI_PKG, "ph/phantom_0000.h5", "--out", "o"]
MASK = ["mask", "gaussian1d", "--shape", "64", "64"]

# (argv, words the one line must contain)
TABLE: list[tuple[list[str], tuple[str, ...]]] = [
    # the top level
    (["no-such-command"], ("invalid choice",)),
    (["--no-such-option"], ("unrecognized",)),
    # mask
    (["mask", "gaussian1d", "--shape", "0", "64"], ("--shape", "'0'", "[2, 16384]")),
    (["mask", "gaussian1d", "--shape", "64", "x"], ("--shape", "'x'")),
    (["mask", "gaussian1d", "--shape", "64"], ("--shape", "expected 2")),
    (MASK + ["--acceleration", "nan"], ("--acceleration", "'nan'", "[1, 1024]")),
    (MASK + ["--acceleration", "0.5"], ("--acceleration", "'0.5'")),
    (MASK + ["--center-fraction", "0"], ("--center-fraction", "(0, 1)")),
    (MASK + ["--center-fraction", "0.95", "--acceleration", "4"], ("centre",)),
    (MASK + ["--seed", "-1"], ("--seed", "'-1'", "[0, 4294967295]")),
    (["mask", "nonsense"], ("invalid choice",)),
    (MASK + ["--out", "face64.png"], ("face64.png already exists", "--overwrite")),
    # phantom
    (["phantom", "afile"], ("afile", "is a file")),
    (["phantom", "ph"], ("phantom_0000.h5 already exists", "--overwrite")),
    (["phantom", "new", "--files", "0"], ("--files", "'0'")),
    (["phantom", "new", "--slices", "-2"], ("--slices", "'-2'")),
    (["phantom", "new", "--size", "17"], ("even",)),
    (["phantom", "new", "--size", "big"], ("--size", "'big'")),
    (["phantom", "new", "--coils", "0"], ("--coils",)),
    (["phantom", "new", "--noise", "-1"], ("--noise",)),
    # restore: task parameters
    (R + ["gaussian_blur", "sigma=abc"], ("sigma=abc", "a number in (0, 100]")),
    (R + ["gaussian_blur", "sigma=nan"], ("sigma=nan",)),
    (R + ["gaussian_blur", "sigma=-2"], ("sigma=-2",)),
    (R + ["anisotropic_blur", "sigma=[1, 2, 3]"], ("sigma=[1, 2, 3]", "list of two")),
    (R + ["motion_blur", "length=abc"], ("length=abc", "[1, 1000]")),
    (R + ["motion_blur", "length=60"], ("motion length",)),
    (R + ["inpainting", "missing=x"], ("missing=x", "[0, 1)")),
    (R + ["inpainting", "missing=1"], ("missing=1",)),
    (R + ["inpainting", "seed=-1"], ("seed=-1",)),
    (R + ["sr", "factor=128"], ("SR factor 128 is too large", "64x64", "at most 64")),
    (R + ["sr", "factor=1"], ("factor=1", "[2, 1024]")),
    (R + ["sr", "factor=2.5"], ("factor=2.5", "an integer")),
    (R + ["sr", "kernel=lanczos"], ("kernel=lanczos", "box, bicubic")),
    (R + ["box_inpainting", "size=1.5"], ("size=1.5",)),
    (R + ["denoise"], ("unknown task 'denoise'",)),
    (R + ["sr", "scale=4"], ("unknown parameter",)),
    (["restore", IMAGE_PKG, "--task", "sr", "factor=4", "face64.png"], ("INPUTs before --task",)),
    (["restore", IMAGE_PKG, "--task", "sr", "face64.png"], ("INPUTs before --task",)),
    # restore: options and files
    (R + ["sr", "--seed", "-1"], ("--seed", "'-1'")),
    (R + ["sr", "--threads", "-1"], ("--threads", "0: all cores")),
    (R + ["sr", "--steps", "0"], ("--steps", "[1, 1000]")),
    (R + ["sr", "--samples", "0"], ("--samples",)),
    (R + ["sr", "--churn", "-1"], ("--churn", "'-1'")),
    (R + ["sr", "--churn-range", "1", "2"], ("--churn-range", "needs --churn")),
    (R + ["sr", "--churn", "1", "--churn-range", "5", "1"], ("--churn-range", "above")),
    (M + ["--churn", "nan"], ("--churn", "'nan'")),
    (R + ["sr", "--ensemble", "rotations"], ("--ensemble", "invalid choice")),
    (R + ["sr", "--contrast", "gamma"], ("--contrast", "invalid choice")),
    (M + ["--contrast", "stretch"], ("unrecognized arguments", "--contrast")),
    (["export", "runs/x", "--out", "p", "--contrast", "auto"], ("--contrast", "invalid choice")),
    (["export", "runs/x", "--out", "p", "--churn", "inf"], ("--churn", "'inf'")),
    (R + ["sr", "--noise", "nan"], ("--noise", "'nan'")),
    (R + ["sr", "--size", "4"], ("--size", "[8, 16384]")),
    (R + ["sr", "--mode", "guess"], ("--mode", "invalid choice")),
    (R + ["sr", "--overwrite", "--resume"], ("not allowed with",)),
    (R + ["box_inpainting", "--mode", "measured"], ("box inpainting", "mask=FILE.png")),
    (R + ["inpainting", "--mode", "measured"], ("needs the mask",)),
    (R + ["inpainting", "mask=nowhere.png"], ("nowhere.png", "does not exist")),
    (R + ["sr", "--mode", "measured", "--size", "32"], ("crop it beforehand",)),
    (["restore", IMAGE_PKG, "missing.png", "--task", "sr"], ("missing.png", "does not exist")),
    (["restore", IMAGE_PKG, "afile", "--task", "sr", "--out", "o"], ("cannot read image file",)),
    (["restore", IMAGE_PKG, "face64.png", "--task", "sr", "--out", "afile"], ("afile", "not a folder")),
    (["restore", IMAGE_PKG, "face64.png", "--task", "sr", "--out", "."], ("folder of the input",)),
    (["restore", IMAGE_PKG, "face64.png", "--task", "sr", "--json", "face64.png"], ("is an input file",)),
    (["restore", MRI_PKG, "face64.png", "--task", "sr"], ("MRI model package",)),
    (["restore", "nowhere", "face64.png", "--task", "sr"], ("nowhere",)),
    (["restore", IMAGE_PKG], ("required",)),
    # mri
    (M + ["--slices", "3-1"], ("range '3-1' is reversed", "1-3")),
    (M + ["--slices", "x"], ("--slices", "0,3-5")),
    (M + ["--slices", "5"], ("out of range", "2 slices")),
    (M + ["--acceleration", "nan"], ("--acceleration", "'nan'")),
    (M + ["--acceleration", "0"], ("--acceleration",)),
    (M + ["--center-fraction", "2"], ("--center-fraction",)),
    (M + ["--coils", "0"], ("--coils",)),
    (M + ["--noise-rel", "-0.1"], ("--noise-rel", "max|k|")),
    (M + ["--seed", "-1"], ("--seed", "'-1'")),
    (M + ["--threads", "x"], ("--threads", "'x'")),
    (M + ["--size", "2"], ("--size",)),
    (M + ["--mask", "radial"], ("--mask", "invalid choice")),
    (["mri", MRI_PKG, "nowhere.h5"], ("nowhere.h5",)),
    (["mri", MRI_PKG, "ph"], ("is a folder",)),
    (["mri", IMAGE_PKG, "ph/phantom_0000.h5"], ("image model package",)),
    (["mri", IMAGE_PKG, "ph/phantom_0000.h5", "--ray"], ("image model package", "diffunfold restore")),
    # demo
    (["demo", "--out", "afile"], ("afile", "is a file")),
    (["demo", "--out", "ph"], ("already holds files", "--overwrite")),
    (["demo", "--images", "0"], ("--images",)),
    (["demo", "--samples", "0"], ("--samples",)),
    (["demo", "--size", "8"], ("--size", "[16, 1024]")),
    (["demo", "--noise", "-1"], ("--noise",)),
    (["demo", "--mri-noise-rel", "inf"], ("--mri-noise-rel", "'inf'")),
    (["demo", "--seed", "-1"], ("--seed",)),
    (["demo", "--threads", "-3"], ("--threads",)),
    (["demo", "--steps", "0"], ("--steps",)),
    (["demo", "--coils", "0"], ("--coils",)),
    (["demo", "--out", "new", "--task", "everything"], ("unknown demo task",)),
    # selfcheck
    (["selfcheck", "--size", "0"], ("--size", "[16, 1024]")),
    (["selfcheck", "--size", "x"], ("--size", "'x'")),
    (["selfcheck", "--backends", "jax"], ("unknown backend",)),
    (["selfcheck", "--json", "old.json"], ("old.json already exists", "--overwrite")),
    # evaluate, train, export, build-engines
    (["evaluate", "nowhere", "--steps", "0"], ("--steps",)),
    (["evaluate", "nowhere", "--seed", "-1"], ("--seed",)),
    (["evaluate", "nowhere", "--noise", "nan"], ("--noise",)),
    (["evaluate", "nowhere", "--images", "0"], ("--images",)),
    (["evaluate", "nowhere", "--task", "sr", "factor=abc"], ("factor=abc",)),
    (["train", "--config", "tiny", "--steps", "0"], ("--steps",)),
    (["train", "--config", "no-such-preset"], ("no-such-preset",)),
    (["train", "--config", "tiny", "--out", "afile"], ("afile", "is a file")),
    (["train", "--config", "tiny", "--out", "ph"], ("already holds files", "--resume")),
    (["export", "nowhere", "--out", "afile"], ("afile", "is a file")),
    (["export", "nowhere", "--out", "ph"], ("already holds files", "--overwrite")),
    (["export", "nowhere", "--out", "new", "--opset", "5"], ("--opset",)),
    (["export", "nowhere", "--out", "new", "--tolerance", "nan"], ("--tolerance",)),
    (["build-engines"], ("--target",)),
    # the MRD commands
    (["serve", MRI_PKG, "--port", "abc"], ("--port", "'abc'")),
    (["send", "nowhere.h5"], ("nowhere.h5",)),
    (["mrd-phantom", "afile"], ("afile", "already exists")),
    (["mrd-phantom", "new.h5", "--slices", "0"], ("slices",)),
    (["mrd-phantom", "new.h5", "--size", "5"], ("--size", "'5'")),
    (["serve", MRI_PKG, "--port", "-1"], ("--port", "'-1'")),
    (["build-engines", MRI_PKG, "--target", "h100", "--gpu", "-1"], ("--gpu", "'-1'")),
    # the data command
    (["data", "photos", "afile"], ("afile", "is a file")),
    (["data", "pictures", "new"], ("'pictures'",)),
    (["data", "photos", "new", "--max-side", "abc"], ("--max-side", "'abc'")),
    (["data", "mri-volumes", "new", "--max-side", "10"], ("--max-side",)),
    # prepare-scans
    (["prepare-scans", "ph", "new", "--overwrite", "--resume"], ("not allowed with",)),
    (["prepare-scans", "afile", "new"], ("afile", "not a folder")),
    (["prepare-scans", "ph", "new", "--virtual-coils", "65"], ("--virtual-coils",)),
]


@pytest.mark.parametrize("argv,words", TABLE, ids=[" ".join(a[:1] + a[-3:]) for a, _ in TABLE])
def test_malformed_value_is_one_line_exit_2_nothing_written(argv, words, scratch, capsys, monkeypatch):
    line = refused(argv, scratch, capsys, monkeypatch)
    for w in words:
        assert w in line, (argv, line)


# -- Hypothesis: every numeric option, fed values outside it ------------------------------------


def _is_int(text: str) -> bool:
    try:
        int(text, 10)
        return True
    except ValueError:
        return False


def _is_finite_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


# (argv before the value, option, integer?, low, high): the range each option documents
NUMERIC = [
    (MASK, "--acceleration", False, 1, 1024),
    (MASK, "--seed", True, 0, 2**32 - 1),
    (MASK, "--center-fraction", False, 0, 1),
    (["phantom", "new"], "--files", True, 1, 10_000),
    (["phantom", "new"], "--size", True, 16, 2048),
    (R + ["sr"], "--seed", True, 0, 2**32 - 1),
    (R + ["sr"], "--noise", False, 0, 1),
    (R + ["sr"], "--steps", True, 1, 1000),
    (R + ["sr"], "--threads", True, 0, 1024),
    (M, "--acceleration", False, 1, 1024),
    (M, "--coils", True, 1, 128),
    (["demo"], "--samples", True, 1, 256),
    (["demo"], "--mri-noise-rel", False, 0, 1),
    (["selfcheck"], "--size", True, 16, 1024),
]


def not_in_range(integer: bool, lo: float, hi: float) -> st.SearchStrategy[str]:
    """Strings that are not a number of the option's kind, or are one outside [lo, hi]
    (open ends included: a value equal to an open end is out too, so ends are not drawn)."""
    accepts = _is_int if integer else _is_finite_number
    words = st.text(max_size=12).filter(lambda t: not accepts(t))
    outside = st.one_of(st.integers(max_value=math.floor(lo) - 1), st.integers(min_value=math.floor(hi) + 1))
    special = st.sampled_from(["nan", "inf", "-inf", "1e999", "", " ", "0x10", "1,5"])
    kinds = [words, outside.map(str), special]
    if integer:
        kinds.append(st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()).map(repr))
    else:
        kinds.append(st.floats(max_value=lo, exclude_max=True, allow_nan=False, allow_infinity=False).map(repr))
    return st.one_of(kinds)


@pytest.mark.parametrize("base,option,integer,lo,hi", NUMERIC, ids=[f"{b[0]} {o}" for b, o, *_ in NUMERIC])
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_numeric_options_refuse_what_is_not_in_range(base, option, integer, lo, hi, data, scratch, capsys, monkeypatch):
    value = data.draw(not_in_range(integer, lo, hi))
    line = refused(base + [f"{option}={value}"], scratch, capsys, monkeypatch)
    assert option in line and repr(value) in line, line


CASES = len(TABLE) + EXAMPLES * len(NUMERIC)


def test_the_harness_is_as_large_as_stated():
    """127 table cases + 12 x 14 generated ones = 295 malformed command lines."""
    assert (len(TABLE), len(NUMERIC), CASES) == (127, 14, 295)
    commands = {argv[0] for argv, _ in TABLE}
    assert {
        "mask",
        "phantom",
        "restore",
        "mri",
        "demo",
        "selfcheck",
        "evaluate",
        "train",
        "export",
        "build-engines",
        "serve",
        "send",
        "mrd-phantom",
        "data",
        "prepare-scans",
    } <= commands


@pytest.mark.parametrize(
    "argv",
    [
        ["restore", IMAGE_PKG, "face64.png", "--task", "gaussian_blur", "sigma=abc"],
        ["mri", MRI_PKG, "ph/phantom_0000.h5", "--seed", "-1"],
        ["mask", "gaussian1d", "--shape", "0", "64"],
    ],
)
def test_a_real_process_prints_one_line_and_exits_2(argv, scratch):
    before = fingerprint(scratch)
    done = subprocess.run(
        [sys.executable, "-m", "diffunfold", *argv], cwd=scratch, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr and fingerprint(scratch) == before


# -- --noise means one thing: the measurement's noise std in the data's units ------------------


def test_mri_old_noise_spelling_is_refused_and_names_noise_rel(scratch, capsys, monkeypatch):
    """mri's --noise was a fraction of max|k|; it is now --noise-rel, and the old spelling is
    refused (never read as a std) with the new flag in the message."""
    line = refused(M + ["--noise", "0.01"], scratch, capsys, monkeypatch)
    assert "--noise" in line and "--noise-rel" in line and "max|k|" in line, line


def test_flags_state_the_noise_unit_in_help():
    from diffunfold.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.choices and "mri" in a.choices).choices
    helps = {
        cmd: {o: a.help for a in sub[cmd]._actions for o in a.option_strings}
        for cmd in ("restore", "mri", "demo", "phantom", "evaluate", "mrd-phantom")
    }
    for cmd in ("restore", "demo", "phantom", "evaluate", "mrd-phantom"):
        text = helps[cmd]["--noise"]
        assert "std" in text and ("units" in text or "[0, 1]" in text), (cmd, text)
    assert "max|k|" in helps["mri"]["--noise-rel"] and "max|k|" in helps["demo"]["--mri-noise-rel"]
    assert helps["mri"]["--noise"] == "==SUPPRESS==" and helps["demo"]["--mri-noise"] == "==SUPPRESS=="


def test_demo_old_mri_noise_spelling_keeps_its_meaning():
    from diffunfold.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["demo", "--mri-noise", "0.01"]).mri_noise == 0.01
    assert parser.parse_args(["demo", "--mri-noise-rel", "0.01"]).mri_noise == 0.01
    assert parser.parse_args(["demo"]).mri_noise == 0.0
