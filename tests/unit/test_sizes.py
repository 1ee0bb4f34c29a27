from cdisk.core.sizes import size_text


def test_sizes_read_as_an_operator_reads_them() -> None:
    assert [size_text(n) for n in (None, 0, 1023, 1024, 8 << 20, 6 << 30, 3 << 40, 5000 << 40)] == [
        "-", "0 B", "1023 B", "1.0 KiB", "8.0 MiB", "6.0 GiB", "3.0 TiB", "5000.0 TiB"]
