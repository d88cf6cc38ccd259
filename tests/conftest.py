"""Fixtures shared by the tests of every folder: the tiny synthetic split as a COCO json, and
edited copies of it (bad datasets)."""
import json
import logging
import os
import shutil

import pytest

from autofocus_d2.data import ensure_split


@pytest.fixture(scope="session")
def tiny_coco():
    """(json file, image folder) of the built-in tiny split (6 images, 79 boxes, 6 categories)."""
    json_file = ensure_split("autofocus_synth_tiny")
    return json_file, os.path.join(os.path.dirname(json_file), "images")


@pytest.fixture
def edited_coco(tmp_path, tiny_coco):
    """``edited_coco(edit)``: a copy of the tiny split in ``tmp_path`` (json and images), the json
    changed by ``edit(data, image_dir)`` (which may also change the copied image files; it may
    return a replacement document); returns (json file, image folder)."""

    def make(edit):
        json_file, image_dir = tiny_coco
        images = tmp_path / "images"
        if not images.exists():
            shutil.copytree(image_dir, images)
        with open(json_file) as f:
            data = json.load(f)
        replaced = edit(data, images)
        out = tmp_path / "instances.json"
        out.write_text(json.dumps(data if replaced is None else replaced))
        return str(out), str(images)

    return make


@pytest.fixture
def logged():
    """``logged(logger_name)``: a list that receives the messages of that logger (and its
    children) until the test ends, whatever ``propagate`` flags Detectron2's ``setup_logger`` set
    on the way to the root logger (where pytest's caplog listens)."""
    attached = []

    def attach(name):
        messages = []
        handler = logging.Handler(logging.DEBUG)
        handler.emit = lambda record: messages.append(record.getMessage())
        logging.getLogger(name).addHandler(handler)
        attached.append((name, handler))
        return messages

    yield attach
    for name, handler in attached:
        logging.getLogger(name).removeHandler(handler)
