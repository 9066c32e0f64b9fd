"""metrics.csv never drops a value: a column first seen after row one rewrites the file with the union of
columns (atomically), on a fresh run and on resume; TensorBoard gets every scalar of every row."""
import csv

from momo_ds.engine.metrics import MetricsWriter


class _RecordingTB:
    def __init__(self):
        self.scalars: list[tuple[str, float, int]] = []

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def close(self) -> None:
        pass


def read(path):
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_late_column_rewrites_header_with_union(tmp_path):
    w = MetricsWriter(tmp_path, enabled=True, tensorboard=False)
    w.write(10, {"loss": 1.5, "img/skipped": 0.0})
    w.write(20, {"loss": 1.25, "img/skipped": 2.0, "img/skipped/bad_label": 2.0})
    w.write(30, {"loss": 1.0, "img/skipped": 2.0})
    fields, rows = read(tmp_path / "metrics.csv")
    assert fields == ["step", "loss", "img/skipped", "img/skipped/bad_label"]
    assert [r["step"] for r in rows] == ["10", "20", "30"]
    assert [r["img/skipped/bad_label"] for r in rows] == ["", "2.0", ""]
    assert rows[0]["loss"] == "1.5" and rows[2]["loss"] == "1.0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"], "no temporary file left behind"


def test_resume_appends_under_existing_header_and_extends_it(tmp_path):
    first = MetricsWriter(tmp_path, enabled=True, tensorboard=False)
    first.write(10, {"loss": 2.0})
    first.write(20, {"loss": 1.0})
    again = MetricsWriter(tmp_path, enabled=True, tensorboard=False)
    again.write(30, {"loss": 0.5})
    fields, rows = read(tmp_path / "metrics.csv")
    assert fields == ["step", "loss"] and [r["step"] for r in rows] == ["10", "20", "30"]
    newer = MetricsWriter(tmp_path, enabled=True, tensorboard=False)
    newer.write(40, {"txt/skipped": 1.0, "loss": 0.25})
    fields, rows = read(tmp_path / "metrics.csv")
    assert fields == ["step", "loss", "txt/skipped"]
    assert [(r["loss"], r["txt/skipped"]) for r in rows] == [("2.0", ""), ("1.0", ""), ("0.5", ""), ("0.25", "1.0")]


def test_empty_file_gets_a_header(tmp_path):
    (tmp_path / "metrics.csv").write_text("")
    MetricsWriter(tmp_path, enabled=True, tensorboard=False).write(1, {"loss": 3.0})
    assert read(tmp_path / "metrics.csv") == (["step", "loss"], [{"step": "1", "loss": "3.0"}])


def test_tensorboard_gets_every_scalar_of_every_row(tmp_path):
    w = MetricsWriter(tmp_path, enabled=True, tensorboard=False)
    w._tb = _RecordingTB()
    w.write(10, {"loss": 1.0, "img/skipped": 0.0})
    w.write(20, {"loss": 0.5, "img/skipped": 1.0, "img/skipped/corrupt_image": 1.0})
    assert w._tb.scalars == [("loss", 1.0, 10), ("img/skipped", 0.0, 10), ("loss", 0.5, 20),
                             ("img/skipped", 1.0, 20), ("img/skipped/corrupt_image", 1.0, 20)]


def test_disabled_writer_writes_nothing(tmp_path):
    MetricsWriter(tmp_path, enabled=False).write(1, {"loss": 1.0})
    assert not (tmp_path / "metrics.csv").exists()
