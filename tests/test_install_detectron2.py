"""tools/install_detectron2.py: the path choice (mocked) and the compatibility fixes."""
import hashlib

import pytest

from tools import install_detectron2 as inst


class Calls:
    """Records which install paths ran; `versions` is what successive imports report."""

    def __init__(self, versions, official_ok=False):
        self.versions = list(versions)
        self.official_ok = official_ok
        self.log = []

    def version_of(self, python):
        self.log.append("probe")
        return self.versions.pop(0)

    def official(self, python):
        self.log.append("official")
        return self.official_ok

    def from_sdist(self, python, sdist):
        self.log.append("sdist")

    def run(self, **kw):
        return inst.install(
            "py", version_of=self.version_of, official=self.official, from_sdist=self.from_sdist, **kw
        )


def test_keeps_an_importable_detectron2():
    calls = Calls(["0.6"])
    assert calls.run() == "kept"
    assert calls.log == ["probe"]


def test_official_install_when_it_works():
    calls = Calls([None, "0.7"], official_ok=True)
    assert calls.run() == "official"
    assert calls.log == ["probe", "official", "probe"]


def test_falls_back_to_sdist_when_official_fails():
    calls = Calls([None, "0.6"], official_ok=False)
    assert calls.run() == "sdist"
    assert calls.log == ["probe", "official", "sdist", "probe"]


def test_skip_official_goes_straight_to_sdist():
    calls = Calls([None, "0.6"], official_ok=True)
    assert calls.run(skip_official=True) == "sdist"
    assert "official" not in calls.log


def test_sdist_install_that_does_not_import_is_an_error():
    calls = Calls([None, None], official_ok=False)
    with pytest.raises(inst.InstallError, match="still does not import"):
        calls.run()


def _fake_package(root):
    """A detectron2 tree holding exactly the lines the fixes target."""
    files = {
        "data/transforms/transform.py": "def f(interp=Image.LINEAR, fill=0):\n    pass\n",
        **{rel: "x = np.zeros(3, dtype=np.float)\ny = np.int(3)\nz = np.int64(3)\n"
           for rel in inst.NUMPY_ALIAS_MODULES},
        **{rel: "import torch\nfrom detectron2 import _C\n\ndef op():\n    return _C.op()\n"
           for rel in inst.COMPILED_OP_MODULES},
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_compat_fixes_apply_and_report(tmp_path):
    pkg = _fake_package(tmp_path / "detectron2")
    done = inst.apply_compat_fixes(pkg)
    assert len(done) == 1 + len(inst.NUMPY_ALIAS_MODULES) + len(inst.COMPILED_OP_MODULES)
    assert "Image.BILINEAR" in (pkg / "data/transforms/transform.py").read_text()
    text = (pkg / inst.NUMPY_ALIAS_MODULES[0]).read_text()
    assert "dtype=float" in text and "y = int(3)" in text and "np.int64(3)" in text
    op_module = (pkg / inst.COMPILED_OP_MODULES[0]).read_text()
    assert "except ImportError" in op_module and (pkg / "_missing_compiled_ops.py").is_file()


def test_missing_compiled_op_raises_a_clear_error_only_when_called(tmp_path):
    pkg = _fake_package(tmp_path / "detectron2")
    inst.apply_compat_fixes(pkg)
    namespace = {}
    exec((pkg / "_missing_compiled_ops.py").read_text(), namespace)
    with pytest.raises(RuntimeError, match="nms_rotated.*pure-Python build.*official source"):
        namespace["_C"].nms_rotated


def test_a_changed_sdist_fails_loudly(tmp_path):
    pkg = _fake_package(tmp_path / "detectron2")
    (pkg / "data/transforms/transform.py").write_text("def f(interp=Image.BILINEAR):\n    pass\n")
    with pytest.raises(inst.InstallError, match="Image.LINEAR"):
        inst.apply_compat_fixes(pkg)
    pkg = _fake_package(tmp_path / "again" / "detectron2")
    (pkg / inst.COMPILED_OP_MODULES[1]).write_text("import torch\n")
    with pytest.raises(inst.InstallError, match="from detectron2 import _C"):
        inst.apply_compat_fixes(pkg)


def test_sha256_is_checked(tmp_path):
    f = tmp_path / "pb1-detectron2-0.6.tar.gz"
    f.write_bytes(b"not the sdist")
    with pytest.raises(inst.InstallError, match="sha256"):
        inst.verify_sha256(f)
    inst.verify_sha256(f, hashlib.sha256(b"not the sdist").hexdigest())


def test_this_environment_runs_a_pure_python_or_official_detectron2():
    import detectron2
    from detectron2.layers import deform_conv  # noqa: F401  (imports without compiled ops)
    from autofocus_d2.evaluation import has_compiled_ops

    assert detectron2.__version__.startswith("0.")
    if not has_compiled_ops():
        if "site-packages" in detectron2.__file__:
            # An installed build without compiled ops is our sdist build: the module imports, and
            # a compiled op says what is missing.
            from detectron2.evaluation import fast_eval_api

            with pytest.raises(RuntimeError, match="compiled op"):
                fast_eval_api._C.COCOevalAccumulate
        else:
            # An unbuilt source tree (e.g. upstream main on PYTHONPATH): importing the C++ COCOeval
            # fails, and the plugin's evaluator does not ask for it.
            with pytest.raises(ImportError, match="_C"):
                from detectron2.evaluation import fast_eval_api  # noqa: F401
