"""Run config: TOML + overrides, unknown keys and bad values raise ValueError naming them."""

from __future__ import annotations

import dataclasses

import pytest

from vsdmot.runtime import config as C

TOML = """
max_frames = 50
[source]
source = "clip.mp4"
[semantics]
policy = "never"
delta = 1          # an int where a float is expected is fine
[service]
health_listen = "0.0.0.0:9200"
watchdog = false
"""


def test_defaults():
    cfg = C.load_config()
    assert cfg.pipeline.backend == "auto" and cfg.semantics.policy == "auto"
    assert cfg.tracker.birth_score == 0.5 and cfg.tracker.miss_tolerance == 20 and cfg.tracker.output_score == 0.6
    assert cfg.service.health_listen == "127.0.0.1:9108" and cfg.service.watchdog is True
    assert cfg.service.stall_timeout_s > 0


def test_toml_then_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(TOML)
    cfg = C.load_config(path, {"semantics.policy": "always", "sinks.mot_out": "m.txt"})
    assert cfg.max_frames == 50 and cfg.source.source == "clip.mp4"
    assert cfg.semantics.policy == "always" and cfg.semantics.delta == 1.0  # override beats file
    assert cfg.service.health_listen == "0.0.0.0:9200" and cfg.service.watchdog is False
    assert cfg.sinks.mot_out == "m.txt"


@pytest.mark.parametrize("off", ["", "off", "none"])
def test_the_health_server_is_turned_off_with_the_flags_words_too(off):
    assert C.load_config(None, {"service.health_listen": off}).service.health_listen == ""  # was "expected HOST:PORT"


def test_the_services_power_meters_are_a_config_key_checked_by_name():
    assert C.load_config(None, {"service.power_meter": "ina3221,none"}).service.power_meter == "ina3221,none"
    with pytest.raises(ValueError, match=r"\[service\] power_meter: .* got 'tegra'"):
        C.load_config(None, {"service.power_meter": "jtop,tegra"})


def test_frozen_and_round_trip(tmp_path):
    cfg = C.load_config(None, {"tracker.kind": "bytetrack", "source.fourcc": "MJPG", "tracker.bytetrack.track_buffer": 60,
                               "tracker.slots.new_score": 0.7, "tracker.birth_score": 0.4})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_frames = 3
    path = tmp_path / "back.toml"
    path.write_text(C.to_toml(cfg))
    assert C.load_config(path) == cfg


BAD = [  # (overrides or toml text, words in the ValueError)
    ({"semantics.bogus": 1}, ["unknown key 'bogus'", "policy", "max_age"]),
    ({"nosuch.key": 1}, ["unknown key 'nosuch'", "semantics", "service"]),
    ({"semantics.policy": "sometimes"}, ["policy", "'auto'", "'sometimes'"]),
    ({"pipeline.backend": "openvino"}, ["backend", "tensorrt"]),
    ({"tracker.kind": "sort"}, ["kind", "bytetrack"]),
    ({"tracker.camera_motion": "yes"}, ["camera_motion", "'auto'"]),
    ({"semantics.max_age": "3"}, ["semantics.max_age", "expected int", "str"]),
    ({"service.watchdog": 1}, ["watchdog", "expected bool"]),
    ({"semantics.eps_on": 0.01}, ["eps_on", ">= eps_off"]),
    ({"service.health_listen": "9108"}, ["health_listen", "HOST:PORT"]),
    ({"service.stall_timeout_s": 0}, ["stall_timeout_s", "> 0"]),
    ({"source.fourcc": "MJ"}, ["fourcc", "4 characters"]),
    ({"source.rotate": 45}, ["rotate", "0, 90, 180 or 270"]),
    ({"max_frames": -1}, ["max_frames", ">= 0"]),
    ({"sinks.rotate_mb": -1.0}, ["rotate_mb", ">= 0"]),
    ({"sinks.rotate_mb": float("inf")}, ["rotate_mb", "size in MB"]),
    ({"sinks.keep_files": -2}, ["keep_files", ">= 0"]),
    ({"semantics": 3}, ["semantics", "table"]),
    ({"tracker.slots.birth": 0.3}, ["[tracker.slots] birth", "[tracker] birth_score"]),
    ({"tracker.slots.new_score": float("nan")}, ["[tracker.slots] new_score", "[0, 1]"]),
    ({"tracker.slots.max_predict_gap": -1}, ["max_predict_gap", ">= 0"]),
    ({"tracker.slots.bogus": 1}, ["config.tracker.slots", "unknown key 'bogus'", "new_score"]),
    ({"tracker.bytetrack.track_thresh": 1.5}, ["[tracker.bytetrack] track_thresh", "[0, 1]"]),
    ({"tracker.bytetrack.track_buffer": 2.5}, ["tracker.bytetrack.track_buffer", "expected int"]),
    ({"tracker.bytetrack": 3}, ["tracker.bytetrack", "table"]),
    ("[semantics\n", ["not valid TOML"]),
]


@pytest.mark.parametrize("bad,words", BAD)
def test_bad_config_raises_naming_it(bad, words, tmp_path):
    with pytest.raises(ValueError) as e:
        if isinstance(bad, str):
            (tmp_path / "bad.toml").write_text(bad)
            C.load_config(tmp_path / "bad.toml")
        else:
            C.load_config(None, bad)
    for word in words:
        assert word in str(e.value)


def test_tracker_tables_reach_the_trackers(tmp_path):
    (tmp_path / "t.toml").write_text("[tracker]\nbirth_score = 0.4\nmiss_tolerance = 30\n"
                                     "[tracker.slots]\nnew_score = 0.7\n[tracker.bytetrack]\ntrack_thresh = 0.6\n")
    t = C.load_config(tmp_path / "t.toml").tracker
    slots = t.slot_config()  # what e2e and hybrid run with: [tracker.slots] and the five [tracker] keys
    assert (slots.new_score, slots.birth, slots.miss_tolerance, slots.keep) == (0.7, 0.4, 30, 0.5)
    assert t.bytetrack.track_thresh == 0.6 and t.bytetrack.track_buffer == 30
    assert t.unread("hybrid") == ["birth_score"] and t.unread("e2e") == []
    assert t.unread("bytetrack") == ["birth_score", "miss_tolerance"]
    assert "birth" not in C.to_dict(C.RunConfig(tracker=t))["tracker"]["slots"]  # [tracker] holds it


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="no file"):
        C.load_config(tmp_path / "absent.toml")


def test_every_field_has_a_comment():
    import inspect

    source = inspect.getsource(C)
    from vsdmot.runtime import bytetrack, e2e

    source += inspect.getsource(bytetrack) + inspect.getsource(e2e)  # [tracker.bytetrack] and [tracker.slots]
    for cls in (C.SourceConfig, C.PipelineConfig, C.SemanticsConfig, C.TrackerConfig, C.SinksConfig,
                C.ServiceConfig, C.RunConfig, bytetrack.ByteTrackConfig, e2e.E2EConfig):
        for f in dataclasses.fields(cls):
            line = next(ln for ln in source.splitlines() if ln.strip().startswith(f"{f.name}:"))
            assert "  # " in line, f"{cls.__name__}.{f.name} has no comment"


def test_home_in_path_keys_is_expanded(tmp_path, monkeypatch):
    """TOML (and `--mot-out=~/x`) pass `~` through unexpanded: it made a folder named `~`."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = tmp_path / "run.toml"
    path.write_text('[source]\nsource = "~/clip.mp4"\n[pipeline]\nbundle = "~/b"\nengine_cache = "~/e"\n'
                    '[sinks]\nmot_out = "~/m.txt"\njsonl_out = "rel/j.jsonl"\n')
    cfg = C.load_config(path, {"sinks.stats_out": "~/s.json", "sinks.video_out": "~"})
    home = str(tmp_path / "home")
    assert cfg.source.source == f"{home}/clip.mp4"
    assert (cfg.pipeline.bundle, cfg.pipeline.engine_cache) == (f"{home}/b", f"{home}/e")
    assert (cfg.sinks.mot_out, cfg.sinks.stats_out, cfg.sinks.video_out) == (f"{home}/m.txt", f"{home}/s.json", home)
    assert cfg.sinks.jsonl_out == "rel/j.jsonl"  # relative: to the working directory, not the config's folder
    assert C.load_config(None, {"source.source": "rtsp://cam/~x"}).source.source == "rtsp://cam/~x"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "run.toml").write_text("max_frames = 3\n")
    assert C.load_config("~/run.toml").max_frames == 3  # --config=~/run.toml


def test_a_negative_max_frames_names_the_flag_not_a_missing_table():
    with pytest.raises(ValueError, match=r"^max_frames \(--max-frames, or a top-level config key\): expected >= 0, got -3"):
        C.RunConfig(max_frames=-3)


@pytest.mark.parametrize("toml", ["[tracker]\nmin_area = nan\n", "[semantics]\neps_off = nan\n", "[service]\nstall_timeout_s = nan\n"])
def test_nan_is_refused(tmp_path, toml):
    """TOML has `nan`, and NaN passed every `< 0` check: min_area = nan silently reported no track."""
    (tmp_path / "c.toml").write_text(toml)
    with pytest.raises(ValueError, match="expected >.* got nan"):
        C.load_config(tmp_path / "c.toml")
