"""lab.calibration: one loops_per_jiffy per host boot and guest kernel."""

from lab.calibration import lpj_file, read_lpj, record_lpj


def test_the_first_measurement_stays_and_bad_values_are_ignored(tmp_path):
    path = lpj_file(tmp_path, "6.1.0-test")
    assert path.parent == tmp_path / "calibration" and read_lpj(path) is None
    record_lpj(path, 0)
    assert read_lpj(path) is None
    record_lpj(path, 10384536)
    record_lpj(path, 999)
    assert read_lpj(path) == 10384536
    path.write_text('{"lpj": "fast"}')
    assert read_lpj(path) is None


def test_each_kernel_has_its_own_value(tmp_path):
    assert lpj_file(tmp_path, "6.1.0-a") != lpj_file(tmp_path, "6.1.0-b")
    assert lpj_file(tmp_path, "6.1.0-a") == lpj_file(tmp_path, "6.1.0-a")
