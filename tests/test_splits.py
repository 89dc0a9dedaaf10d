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


@pytest.mark.parametrize("source, span, name, expected", [
    ("PETS09-S2L1", (601, 605), "PETS09-S2L1-zoom2", "PETS09-S2L1-zoom2-heldout"),  # renumbered from 1: marked
    ("PETS09-S2L1", (590, 610), "shaky", "shaky-heldout"),  # any overlap
    ("PETS09-S2L1", (601, 795), "PETS09-S2L1-601-795", "PETS09-S2L1-601-795"),  # its name says so already
    ("TUD-Campus", (1, 71), "tud-zoom", "tud-zoom-heldout"),
    ("PETS09-S2L1", (11, 20), "PETS09-S2L1-zoom2", "PETS09-S2L1-zoom2"),  # train side: as named
])
def test_a_renumbered_copy_of_held_out_frames_is_named_held_out(source, span, name, expected):
    from vsdmot.splits import copy_name

    assert copy_name(source, span, name) == expected
    assert touches_held_out(expected, (1, 5)) is touches_held_out(source, span)  # the copy's frames 1-5 as their source
