import pytest

from vsdmot.splits import HELD_OUT_FRAMES, PETS_TRAIN_LAST, touches_held_out


@pytest.mark.parametrize("name, span, held_out", [
    ("PETS09-S2L1", (1, 600), False),
    ("PETS09-S2L1", (401, 601), True),  # one held-out frame is enough
    ("PETS09-S2L1", (700, 900), True),
    ("PETS09-S2L1", None, True),  # the whole sequence includes 601-795
    ("TUD-Campus", (1, 10), True),
    ("TUD-Campus", None, True),
    ("PETS09-S2L1-601-795", None, True),
    ("MOT17-04-FRCNN", None, False),
])
def test_touches_held_out(name, span, held_out):
    assert touches_held_out(name, span) is held_out


def test_train_side_ends_where_held_out_begins():
    assert PETS_TRAIN_LAST == 600 and HELD_OUT_FRAMES["PETS09-S2L1"][0] == PETS_TRAIN_LAST + 1
