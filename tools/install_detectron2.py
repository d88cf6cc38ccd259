#!/usr/bin/env python
"""Install Detectron2 into the current Python environment, by the first path that works.

1. ``kept``:     an importable ``detectron2`` is kept as it is (whatever its origin).
2. ``official``: the official source install from GitHub, which builds the compiled ops
                 (``pip install 'git+https://github.com/facebookresearch/detectron2.git'``).
                 Without network access this fails at once.
3. ``sdist``:    PyPI's ``pb1-detectron2==0.6`` sdist, which carries the official v0.6 Python
                 sources without ``layers/csrc``. It is downloaded, checked against a pinned sha256,
                 patched with the compatibility fixes upstream made after 0.6, and built into a
                 pure-Python ``detectron2`` wheel (no deformable conv, rotated boxes or C++ COCOeval).

Usage: ``python tools/install_detectron2.py [--python PY] [--skip-official] [--sdist FILE]``.
The last line printed is ``detectron2 install path: <kept|official|sdist>``.
"""
import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Callable, List, Optional, Sequence

OFFICIAL_SPEC = "git+https://github.com/facebookresearch/detectron2.git"
SDIST_REQUIREMENT = "pb1-detectron2==0.6"
SDIST_FILENAME = "pb1-detectron2-0.6.tar.gz"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
WHEEL_VERSION = "0.6+purepython"

# Runtime requirements of detectron2 0.6 (its setup.py), less the ones only its tooling needs
# (black, pydot, future); ``setuptools<81`` because ``detectron2.model_zoo`` imports pkg_resources.
RUNTIME_REQUIREMENTS = [
    "Pillow>=7.1",
    "matplotlib",
    "pycocotools>=2.0.2",
    "termcolor>=1.1",
    "yacs>=0.1.8",
    "tabulate",
    "cloudpickle",
    "tqdm>4.29.0",
    "tensorboard",
    "fvcore>=0.1.5,<0.1.6",
    "iopath>=0.1.7,<0.1.10",
    "omegaconf>=2.1",
    "hydra-core>=1.1",
    "setuptools<81",
]

# Files of the sdist that import the compiled extension at module level.
COMPILED_OP_MODULES = [
    "layers/deform_conv.py",
    "layers/rotated_boxes.py",
    "layers/roi_align_rotated.py",
    "evaluation/fast_eval_api.py",
]
# Files that use the NumPy aliases removed in NumPy 1.24 (np.int, np.bool, np.float, np.str).
NUMPY_ALIAS_MODULES = [
    "data/build.py",
    "data/datasets/pascal_voc.py",
    "evaluation/pascal_voc_evaluation.py",
    "evaluation/sem_seg_evaluation.py",
    "structures/masks.py",
    "utils/video_visualizer.py",
    "utils/visualizer.py",
]
_NUMPY_ALIAS = re.compile(r"\bnp\.(int|bool|float|str)\b(?![\w])")

MISSING_OPS_MODULE = '''"""Stand-in for ``detectron2._C`` in the pure-Python build made by autofocus-d2.

Importing works; calling any compiled op raises a RuntimeError that says what is missing.
"""


class _MissingCompiledOps:
    def __getattr__(self, name):
        raise RuntimeError(
            f"detectron2 compiled op '{name}' is not available: this detectron2 is the pure-Python "
            "build from the pb1-detectron2==0.6 sdist (made by autofocus-d2's "
            "tools/install_detectron2.py), which has no deformable conv, rotated boxes or C++ "
            "COCOeval. Install the official source to get them: "
            "pip install 'git+https://github.com/facebookresearch/detectron2.git'"
        )


_C = _MissingCompiledOps()
'''

WHEEL_SETUP_PY = '''from setuptools import find_packages, setup

setup(
    name="detectron2",
    version={version!r},
    description="Detectron2 v0.6 Python sources (from pb1-detectron2==0.6), without compiled ops",
    url="https://github.com/facebookresearch/detectron2",
    license="Apache-2.0",
    packages=find_packages(include=["detectron2", "detectron2.*"]),
    package_data={{"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]}},
    python_requires=">=3.7",
    install_requires={requirements!r},
)
'''


class InstallError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[install_detectron2] {msg}", flush=True)


def run(cmd: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    log("$ " + " ".join(cmd))
    return subprocess.run(list(cmd), **kwargs)


def detectron2_version(python: str) -> Optional[str]:
    """The version of the detectron2 that ``python`` imports, or None if it imports none."""
    proc = subprocess.run(
        [python, "-c", "import detectron2; print(detectron2.__version__)"],
        capture_output=True,
        text=True,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def try_official_install(python: str, timeout_s: float = 1800) -> bool:
    """Try the official source install; True if pip succeeded."""
    try:
        proc = run(
            [python, "-m", "pip", "install", "--no-build-isolation", OFFICIAL_SPEC],
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        log(f"official source install timed out after {timeout_s:.0f}s")
        return False
    return proc.returncode == 0


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_sdist(python: str, dest: Path) -> Path:
    """Download the pinned sdist into ``dest`` (its metadata step imports torch: install it first)."""
    proc = run(
        [python, "-m", "pip", "download", "--no-deps", "--no-build-isolation", "--no-binary",
         ":all:", SDIST_REQUIREMENT, "-d", str(dest)],
    )
    path = dest / SDIST_FILENAME
    if proc.returncode != 0 or not path.is_file():
        raise InstallError(
            f"could not download {SDIST_REQUIREMENT} from PyPI (pip exit {proc.returncode}). "
            "Is PyPI reachable, and is torch installed in this environment (the sdist's metadata "
            "step imports it)? You can also pass a local copy with --sdist FILE."
        )
    return path


def verify_sha256(path: Path, expected: str = SDIST_SHA256) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise InstallError(
            f"{path} has sha256 {actual}, expected {expected}: refusing to build from an sdist "
            "that is not the one these compatibility fixes were written for."
        )


def _replace_exactly(path: Path, old: str, new: str, count: int) -> None:
    text = path.read_text()
    found = text.count(old)
    if found != count:
        raise InstallError(f"compat fix failed in {path}: expected {count}x {old!r}, found {found}")
    path.write_text(text.replace(old, new))


def apply_compat_fixes(pkg: Path) -> List[str]:
    """Patch the detectron2 package directory ``pkg`` in place; every fix asserts it applied.

    Returns a list of one-line descriptions of the fixes made.
    """
    done = []
    # Pillow 10 removed Image.LINEAR (an alias of BILINEAR); upstream uses BILINEAR.
    _replace_exactly(
        pkg / "data/transforms/transform.py", "interp=Image.LINEAR", "interp=Image.BILINEAR", 1
    )
    done.append("data/transforms/transform.py: Image.LINEAR -> Image.BILINEAR")

    # NumPy 1.24 removed np.int/np.bool/np.float/np.str; they were the builtins.
    for rel in NUMPY_ALIAS_MODULES:
        path = pkg / rel
        text, n = _NUMPY_ALIAS.subn(lambda m: m.group(1), path.read_text())
        if n == 0:
            raise InstallError(f"compat fix failed in {path}: no removed NumPy alias found")
        path.write_text(text)
        done.append(f"{rel}: {n} removed NumPy alias(es) -> builtins")
    leftover = [
        str(p.relative_to(pkg)) for p in pkg.rglob("*.py") if _NUMPY_ALIAS.search(p.read_text())
    ]
    if leftover:
        raise InstallError(f"removed NumPy aliases remain in {leftover}: the sdist changed")

    # Without compiled ops, `from detectron2 import _C` must not break imports.
    (pkg / "_missing_compiled_ops.py").write_text(MISSING_OPS_MODULE)
    for rel in COMPILED_OP_MODULES:
        _replace_exactly(
            pkg / rel,
            "\nfrom detectron2 import _C\n",
            "\ntry:\n    from detectron2 import _C\nexcept ImportError:  # pure-Python build\n"
            "    from detectron2._missing_compiled_ops import _C\n",
            1,
        )
        done.append(f"{rel}: compiled ops imported lazily (clear error when called)")
    return done


def build_wheel(python: str, sdist: Path, workdir: Path) -> Path:
    """Extract ``sdist``, patch its ``detectron2/`` package and build a pure-Python wheel."""
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.8.17
    with tarfile.open(sdist) as tar:
        tar.extractall(workdir, **safe)
    roots = [p for p in workdir.iterdir() if (p / "detectron2" / "__init__.py").is_file()]
    if len(roots) != 1:
        raise InstallError(f"{sdist} does not hold exactly one detectron2/ package")
    src = workdir / "wheel-src"
    shutil.copytree(roots[0] / "detectron2", src / "detectron2")
    shutil.copy(roots[0] / "LICENSE", src / "LICENSE")
    if (src / "detectron2" / "layers" / "csrc").exists():
        raise InstallError("the sdist unexpectedly carries layers/csrc: use the official install")
    for line in apply_compat_fixes(src / "detectron2"):
        log("fix: " + line)
    (src / "setup.py").write_text(
        WHEEL_SETUP_PY.format(version=WHEEL_VERSION, requirements=RUNTIME_REQUIREMENTS)
    )
    out = workdir / "dist"
    proc = run(
        [python, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", str(src), "-w", str(out)]
    )
    wheels = sorted(out.glob("detectron2-*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        raise InstallError(f"building the pure-Python detectron2 wheel failed (exit {proc.returncode})")
    return wheels[0]


def install_from_sdist(python: str, sdist: Optional[Path] = None) -> None:
    with tempfile.TemporaryDirectory(prefix="d2-sdist-") as tmp:
        tmp_path = Path(tmp)
        if sdist is None:
            sdist = download_sdist(python, tmp_path / "download")
        verify_sha256(sdist)
        log(f"{sdist.name}: sha256 verified")
        wheel = build_wheel(python, sdist, tmp_path)
        proc = run([python, "-m", "pip", "install", str(wheel)])
        if proc.returncode != 0:
            raise InstallError(f"pip could not install {wheel.name} (exit {proc.returncode})")


def install(
    python: str,
    *,
    skip_official: bool = False,
    sdist: Optional[Path] = None,
    version_of: Callable[[str], Optional[str]] = detectron2_version,
    official: Callable[[str], bool] = try_official_install,
    from_sdist: Callable[[str, Optional[Path]], None] = install_from_sdist,
) -> str:
    """Run the three paths in order; return the one taken: "kept", "official" or "sdist"."""
    version = version_of(python)
    if version is not None:
        log(f"detectron2 {version} is importable: keeping it")
        return "kept"
    if skip_official:
        log("official source install skipped (--skip-official)")
    elif official(python) and version_of(python) is not None:
        return "official"
    else:
        log("official source install failed; falling back to the pb1-detectron2==0.6 sdist")
    from_sdist(python, sdist)
    version = version_of(python)
    if version is None:
        raise InstallError("detectron2 still does not import after the sdist install")
    return "sdist"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter to install into")
    parser.add_argument("--skip-official", action="store_true",
                        help="do not try the GitHub source install (path 2)")
    parser.add_argument("--sdist", type=Path, default=None,
                        help=f"a local copy of {SDIST_FILENAME} instead of downloading it")
    args = parser.parse_args(argv)
    try:
        path = install(args.python, skip_official=args.skip_official, sdist=args.sdist)
    except InstallError as e:
        log(f"ERROR: {e}")
        return 1
    print(f"detectron2 install path: {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
