"""lab.guest.calibration: loops_per_jiffy per host boot and guest kernel, the median of the first readings."""

from lab.guest.calibration import READINGS, lpj_file, read_lpj, record_lpj


def test_the_median_of_the_first_readings_is_given_and_bad_values_are_ignored(tmp_path):
    path = lpj_file(tmp_path, "6.1.0-test")
    assert path.parent == tmp_path / "calibration" and read_lpj(path) is None
    record_lpj(path, 0)
    record_lpj(path, 10384536)
    assert read_lpj(path) is None, "one reading is not trusted alone"
    record_lpj(path, 2000)  # a guest on a saturated host that miscalibrated
    record_lpj(path, 10376720)
    assert READINGS == 3 and read_lpj(path) == 10376720
    record_lpj(path, 999)
    assert read_lpj(path) == 10376720, "readings after the first ones are not kept"
    path.write_text('{"readings": ["fast", 1, 2, 3]}')
    assert read_lpj(path) == 2
    path.write_text('{"lpj": 10384536}')  # the older one-value format
    assert read_lpj(path) is None
    path.write_text("not json")
    assert read_lpj(path) is None


def test_each_kernel_has_its_own_value(tmp_path):
    assert lpj_file(tmp_path, "6.1.0-a") != lpj_file(tmp_path, "6.1.0-b")
    assert lpj_file(tmp_path, "6.1.0-a") == lpj_file(tmp_path, "6.1.0-a")
