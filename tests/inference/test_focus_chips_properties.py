"""Property tests (hypothesis) of FocusChip generation: merge_overlapping_boxes leaves no overlap
and gives unions of its inputs whatever their order, connected_components equals a breadth-first
flood fill, and generate_focus_chips keeps its whole contract on random focus maps.

The exact hand-made cases are in test_focus_chips.py.
"""
import math
from collections import deque

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autofocus_d2.inference import (
    generate_focus_chips,
    merge_overlapping_boxes,
)
from autofocus_d2.inference.focus_chips import connected_components


TOL = 1e-3


def _overlaps(boxes, tol):
    """(N, N) bool: pairs (i != j) of boxes whose intersection is wider and taller than tol."""
    wh = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:]) - torch.maximum(
        boxes[:, None, :2], boxes[None, :, :2]
    )
    return (wh > tol).all(dim=2).fill_diagonal_(False)


# ---------------------------------------------------------------------------------------------
# merge_overlapping_boxes
# ---------------------------------------------------------------------------------------------


_box = st.tuples(
    st.integers(0, 60), st.integers(0, 60), st.integers(1, 25), st.integers(1, 25)
).map(lambda t: [float(t[0]), float(t[1]), float(t[0] + t[2]), float(t[1] + t[3])])


@settings(max_examples=150, deadline=None)
@given(boxes=st.lists(_box, min_size=0, max_size=25), perm_seed=st.integers(0, 2**16))
def test_merge_overlapping_boxes_properties(boxes, perm_seed):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    out = merge_overlapping_boxes(boxes)
    # no positive-area overlap left
    assert not _overlaps(out, 0.0).any()
    # every input box lies in an output box; every output box is the union of some inputs
    inside = (
        (boxes[:, None, :2] >= out[None, :, :2]) & (boxes[:, None, 2:] <= out[None, :, 2:])
    ).all(dim=2)
    assert bool(inside.any(dim=1).all())
    for k in range(out.shape[0]):
        members = boxes[inside[:, k]]
        enclosing = torch.cat([members[:, :2].min(dim=0).values, members[:, 2:].max(dim=0).values])
        assert torch.equal(enclosing, out[k])
    # independent of the input order
    perm = torch.randperm(boxes.shape[0], generator=torch.Generator().manual_seed(perm_seed))
    assert torch.equal(merge_overlapping_boxes(boxes[perm]), out)


# ---------------------------------------------------------------------------------------------
# Connected components against a breadth-first flood fill
# ---------------------------------------------------------------------------------------------


def _flood_fill_partition(mask):
    h, w = len(mask), len(mask[0])
    seen = [[False] * w for _ in range(h)]
    parts = set()
    for i in range(h):
        for j in range(w):
            if not mask[i][j] or seen[i][j]:
                continue
            comp, queue = [], deque([(i, j)])
            seen[i][j] = True
            while queue:
                a, b = queue.popleft()
                comp.append((a, b))
                for da in (-1, 0, 1):
                    for db in (-1, 0, 1):
                        y, x = a + da, b + db
                        if 0 <= y < h and 0 <= x < w and mask[y][x] and not seen[y][x]:
                            seen[y][x] = True
                            queue.append((y, x))
            parts.add(frozenset(comp))
    return parts


@settings(max_examples=80, deadline=None)
@given(
    h=st.integers(1, 30),
    w=st.integers(1, 30),
    density=st.sampled_from([0.1, 0.3, 0.45, 0.6, 0.9]),
    seed=st.integers(0, 2**16),
)
def test_connected_components_match_flood_fill(h, w, density, seed):
    mask = torch.rand(h, w, generator=torch.Generator().manual_seed(seed)) < density
    labels = connected_components(mask)
    assert bool(((labels > 0) == mask).all())
    parts = {}
    for (i, j), lab in zip(torch.nonzero(mask).tolist(), labels[mask].tolist()):
        parts.setdefault(lab, set()).add((i, j))
    assert {frozenset(p) for p in parts.values()} == _flood_fill_partition(mask.tolist())
    # every label is 1 + the largest flat index of its component
    for lab, cells in parts.items():
        assert lab == 1 + max(i * w + j for i, j in cells)


# ---------------------------------------------------------------------------------------------
# Property test of the whole contract
# ---------------------------------------------------------------------------------------------


def _check_contract(prob, chips, stride, threshold, min_size, image_hw):
    height, width = image_hw
    rows, cols = math.ceil(height / stride), math.ceil(width / stride)
    focus = torch.nonzero(prob[:rows, :cols] >= threshold).float()
    regions = torch.stack(
        [
            focus[:, 1] * stride,
            focus[:, 0] * stride,
            ((focus[:, 1] + 1) * stride).clamp(max=width),
            ((focus[:, 0] + 1) * stride).clamp(max=height),
        ],
        dim=1,
    )
    assert chips.dtype == torch.float32 and chips.dim() == 2 and chips.shape[1] == 4
    if focus.shape[0] == 0:
        assert chips.shape == (0, 4)
        return
    assert chips.shape[0] >= 1
    # inside the image, well-formed
    assert bool((chips[:, :2] >= 0).all())
    assert bool((chips[:, 2] <= width).all()) and bool((chips[:, 3] <= height).all())
    # side >= min_size, or the whole image side when the image is smaller
    w, h = chips[:, 2] - chips[:, 0], chips[:, 3] - chips[:, 1]
    assert bool((w >= min(min_size, width) - TOL).all())
    assert bool((h >= min(min_size, height) - TOL).all())
    if width < min_size:
        assert bool((w == width).all())
    if height < min_size:
        assert bool((h == height).all())
    # no two chips overlap with positive area
    assert not _overlaps(chips, TOL).any()
    # region r inside chip c
    inside = (
        (regions[:, None, :2] >= chips[None, :, :2] - TOL)
        & (regions[:, None, 2:] <= chips[None, :, 2:] + TOL)
    ).all(dim=2)
    assert bool(inside.any(dim=1).all()), "a focus cell is not covered by any chip"
    assert bool(inside.any(dim=0).all()), "a chip contains no focus cell"
    # sorted by (y0, x0)
    keys = chips[:, [1, 0]].tolist()
    assert keys == sorted(keys)


@st.composite
def _focus_case(draw):
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    stride = draw(st.sampled_from([4, 8, 16]))
    height = draw(st.one_of(st.just(h * stride), st.integers(1, h * stride)))
    width = draw(st.one_of(st.just(w * stride), st.integers(1, w * stride)))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    # Quantized probabilities hit the threshold exactly; sparsity gives several components.
    prob = torch.randint(0, 11, (h, w), generator=gen).float() / 10
    density = draw(st.sampled_from([0.02, 0.1, 0.3, 1.0]))
    prob = torch.where(torch.rand(h, w, generator=gen) < density, prob, torch.zeros(()))
    return dict(
        prob=prob,
        stride=stride,
        threshold=draw(st.sampled_from([0.0, 0.3, 0.5, 0.7, 0.9, 1.0, 1.1])),
        dilation=draw(st.sampled_from([1, 3, 5])),
        min_size=draw(st.one_of(st.sampled_from([0.0, 16.0, 128.0]), st.floats(0.0, 400.0))),
        image_hw=(height, width),
    )


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_focus_case())
def test_generate_focus_chips_contract(case):
    prob = case.pop("prob")
    chips = generate_focus_chips(prob, **case)
    _check_contract(
        prob, chips, case["stride"], case["threshold"], case["min_size"], case["image_hw"]
    )
    assert torch.equal(generate_focus_chips(prob.clone(), **case), chips)
