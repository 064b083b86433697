"""The metrics writer: JSONL rows, the cut-back on resume, and the progress line's fields."""
import io

from zppo_jax.train.metrics import MetricsWriter, read_metrics


def test_rows_resume_cut_and_progress_line(tmp_path):
  stream = io.StringIO()
  writer = MetricsWriter(tmp_path, total_steps=4, tensorboard=False, stream=stream)
  for step in (1, 2, 3):
    writer.write(step, {"reward/plain": 0.25, "buffer/size": 7, "reform/bcq": 2,
                        "reform/ncq": 1, "update/loss": 0.5, "time_step": 1.0})
  writer.close()
  line = stream.getvalue().splitlines()[-1]
  assert "step 3/4 reward=0.25 buffer=7 bcq=2 ncq=1 loss=0.5" in line and "ETA" in line
  MetricsWriter(tmp_path, total_steps=4, start_step=2, tensorboard=False, stream=stream).close()
  assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
